-- Purges of the edges' caches: `sequence` is 1, 2, 3, … without gaps across the installation
-- (the next is one more than the greatest kept; the newest is never dropped; writers take
-- `revision_counter`'s row lock first, so two purges never get the same number). Only the
-- newest `meridian_model::PURGE_HISTORY` are kept. Rows outlive their app: they only age out.
-- `target` is the purge's target as JSON (`{"url": …}`, `{"tag": …}` or `{"all": true}`).
CREATE TABLE purges (
    sequence BIGINT PRIMARY KEY,
    org TEXT COLLATE "C" NOT NULL,
    app TEXT COLLATE "C" NOT NULL,
    target TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
