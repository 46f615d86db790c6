-- Tamper evidence (see src/chain.rs). Each event links to its aggregate's previous
-- event: hash = SHA-256 over a canonical encoding of (aggregate_type, aggregate_id,
-- sequence, event_type, event_version, payload, metadata, prev_hash), hex. authd's
-- repository writes both in the transaction that appends the event. Events written
-- before this migration have neither (verify counts them as unchained).
ALTER TABLE events ADD COLUMN prev_hash text;
ALTER TABLE events ADD COLUMN hash text;

-- A seal: an HMAC (key derived from the OPAQUE server setup) over a digest of every
-- aggregate's chain head at `sealed_at`, so deleting the tail of a stream, or
-- rewriting a stream and its hashes, no longer matches the latest seal.
CREATE TABLE chain_seals
(
    id        bigserial PRIMARY KEY,
    sealed_at text   NOT NULL,
    streams   bigint NOT NULL,
    events    bigint NOT NULL,
    digest    text   NOT NULL,
    key_id    text   NOT NULL,
    mac       text   NOT NULL
);
-- The heads the latest seal covers (its digest is over exactly these rows).
CREATE TABLE chain_heads
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    hash           text   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
