-- Snapshots (see src/store/snapshot.rs): the state of an aggregate whose stream grows
-- on the hot path (a session at each refresh, an account's second factor at each code),
-- every 100 events, so a load from the store reads at most 100 events past it. Not
-- the truth: the events are; a snapshot can be deleted at any time.
CREATE TABLE snapshots
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    state          text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
