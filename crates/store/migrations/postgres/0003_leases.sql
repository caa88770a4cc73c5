-- Leases: who does the work that must happen once (certificate orders, renewals, rotations)
-- while several control planes share the store. `token` (the fencing token) grows by one at
-- every change of holder and never goes back; `expires_at_ms` is the database's clock
-- (milliseconds since the Unix epoch). Not desired state: no change is fed, no backup has it.
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- The fencing token of the lease term a change was written for (NULL: not singleton work), so
-- that an audit sees, in commit order, that no two holders' terms interleaved.
ALTER TABLE changes ADD COLUMN fence_token BIGINT;
