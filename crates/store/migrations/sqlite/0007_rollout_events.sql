-- What happened to each rollout (changes of phase, step or split), oldest first, as JSON: the
-- events behind `meridian rollout history --events` and the API's rollout records.
ALTER TABLE rollouts ADD COLUMN events TEXT NOT NULL DEFAULT '[]';
