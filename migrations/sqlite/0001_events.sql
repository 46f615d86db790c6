-- The event log. The first seven columns are the ones sqlite-es names; recorded_at
-- is ours (commit time). SQLite has one writer at a time, so rowid follows commit
-- order. The composite primary key must stay: sqlite-es maps only a primary-key
-- violation to an optimistic-lock conflict.
CREATE TABLE events
(
    aggregate_type text                          NOT NULL,
    aggregate_id   text                          NOT NULL,
    sequence       integer CHECK (sequence >= 0) NOT NULL,
    event_type     text                          NOT NULL,
    event_version  text                          NOT NULL,
    payload        text                          NOT NULL,
    metadata       text                          NOT NULL,
    recorded_at    text                          NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;
