-- A global, gap-safe order of the log (see src/log.rs).
--
-- `events.position` comes from a sequence, so it is NOT commit order: a writer can
-- take position 11 and commit before another that took position 10. A sequencer
-- therefore stamps every event with a `global_position` here, in the order
-- (transaction_id, position), and only for events whose writing transaction is below
-- the horizon `pg_snapshot_xmin(pg_current_snapshot())` — finished, so nothing can
-- ever be inserted before them again. Sequencers take a transaction-level advisory
-- lock, so positions are handed out, and become visible, strictly in increasing
-- order: a consumer that tails `global_position` never skips one.
CREATE TABLE event_positions
(
    global_position bigint PRIMARY KEY,
    transaction_id  xid8   NOT NULL,
    position        bigint NOT NULL,
    aggregate_type  text   NOT NULL,
    aggregate_id    text   NOT NULL,
    sequence        bigint NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
-- The sequencer's cursor walks events in this order.
CREATE INDEX events_commit_order ON events (transaction_id, position);

-- Consumers of the log (the read models, the audit relay) and how far each got.
CREATE TABLE checkpoints
(
    name     text   PRIMARY KEY,
    position bigint NOT NULL
);

-- The read models' checkpoint promises that every event at or below it is folded.
-- Forgetting an aggregate's version (deleting its row, lowering it, emptying the
-- table) breaks that promise, so the checkpoint is rewound in the same transaction
-- to just before the first event that is no longer covered.
CREATE FUNCTION rewind_read_models_checkpoint() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    kept bigint := 0;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        kept := NEW.version;
    END IF;
    UPDATE checkpoints
    SET position = LEAST(position, COALESCE(
            (SELECT min(p.global_position) - 1
             FROM event_positions p
             WHERE p.aggregate_type = OLD.aggregate_type
               AND p.aggregate_id = OLD.aggregate_id
               AND p.sequence > kept),
            position))
    WHERE name = 'read_models';
    RETURN NULL;
END
$$;
CREATE TRIGGER projection_versions_forgotten
    AFTER DELETE ON projection_versions
    FOR EACH ROW EXECUTE FUNCTION rewind_read_models_checkpoint();
CREATE TRIGGER projection_versions_lowered
    AFTER UPDATE OF version ON projection_versions
    FOR EACH ROW WHEN (NEW.version < OLD.version) EXECUTE FUNCTION rewind_read_models_checkpoint();

CREATE FUNCTION reset_read_models_checkpoint() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    UPDATE checkpoints SET position = 0 WHERE name = 'read_models';
    RETURN NULL;
END
$$;
CREATE TRIGGER projection_versions_truncated
    AFTER TRUNCATE ON projection_versions
    FOR EACH STATEMENT EXECUTE FUNCTION reset_read_models_checkpoint();
