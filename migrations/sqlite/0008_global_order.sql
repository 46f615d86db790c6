-- A global order of the log (see src/log.rs). SQLite has one writer at a time, so
-- an AUTOINCREMENT key assigned inside the writing transaction follows commit
-- order; AUTOINCREMENT never reuses a value (rowid can be reused, and VACUUM may
-- renumber rowids of a table without an INTEGER PRIMARY KEY, so the events' own
-- rowid is not used).
CREATE TABLE event_positions
(
    global_position integer PRIMARY KEY AUTOINCREMENT,
    aggregate_type  text    NOT NULL,
    aggregate_id    text    NOT NULL,
    sequence        integer NOT NULL,
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;

INSERT INTO event_positions (aggregate_type, aggregate_id, sequence)
SELECT aggregate_type, aggregate_id, sequence FROM events ORDER BY rowid;

CREATE TRIGGER events_global_position
    AFTER INSERT ON events
BEGIN
    INSERT INTO event_positions (aggregate_type, aggregate_id, sequence)
    VALUES (NEW.aggregate_type, NEW.aggregate_id, NEW.sequence);
END;

-- Consumers of the log (the read models, the audit relay) and how far each got.
CREATE TABLE checkpoints
(
    name     text    PRIMARY KEY,
    position integer NOT NULL
) STRICT;

-- The read models' checkpoint promises that every event at or below it is folded.
-- Forgetting an aggregate's version (deleting its row or lowering it) breaks that
-- promise, so the checkpoint is rewound in the same transaction to just before the
-- first event that is no longer covered.
CREATE TRIGGER projection_versions_forgotten
    AFTER DELETE ON projection_versions
BEGIN
    UPDATE checkpoints
    SET position = MIN(position, COALESCE(
            (SELECT min(p.global_position) - 1
             FROM event_positions p
             WHERE p.aggregate_type = OLD.aggregate_type
               AND p.aggregate_id = OLD.aggregate_id),
            position))
    WHERE name = 'read_models';
END;
CREATE TRIGGER projection_versions_lowered
    AFTER UPDATE OF version ON projection_versions
    WHEN NEW.version < OLD.version
BEGIN
    UPDATE checkpoints
    SET position = MIN(position, COALESCE(
            (SELECT min(p.global_position) - 1
             FROM event_positions p
             WHERE p.aggregate_type = OLD.aggregate_type
               AND p.aggregate_id = OLD.aggregate_id
               AND p.sequence > NEW.version),
            position))
    WHERE name = 'read_models';
END;
