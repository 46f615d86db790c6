-- The event log. The first seven columns are the ones postgres-es names in every
-- INSERT/SELECT; the rest are ours and filled by defaults: a position (not commit
-- order!), the commit time, and the writing transaction's id for gap-safe tailing.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    position       bigserial                    NOT NULL,
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    transaction_id xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX events_position ON events (position);
