-- Purges of the edges' caches: `sequence` is 1, 2, 3, … without gaps across the installation
-- (the next is one more than the greatest kept; the newest is never dropped). Only the newest
-- `meridian_model::PURGE_HISTORY` are kept. Rows outlive their app: they only age out.
-- `target` is the purge's target as JSON (`{"url": …}`, `{"tag": …}` or `{"all": true}`).
CREATE TABLE purges (
    sequence INTEGER PRIMARY KEY,
    org TEXT NOT NULL,
    app TEXT NOT NULL,
    target TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
