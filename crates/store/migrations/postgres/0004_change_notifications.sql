-- A change's notification carries the change itself, as JSON (revision, kind, key, op,
-- version, committed_at_us), so that a store learns of the writes of other stores without
-- reading the feed: notifications arrive in commit order, which is revision order, and the
-- store keeps them in its window of recent changes. Stores of earlier versions read only a
-- bare revision; they ignore these and catch up every second.
CREATE OR REPLACE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meridian_changes', json_build_object(
        'revision', NEW.revision, 'kind', NEW.kind, 'key', NEW.key, 'op', NEW.op,
        'version', NEW.version, 'committed_at_us', NEW.committed_at_us)::text);
    RETURN NULL;
END
$$;
