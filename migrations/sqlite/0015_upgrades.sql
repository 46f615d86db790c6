-- Data upgrades start-up runs once per store (for example recording the owner of
-- every email address verified before owners were aggregates, src/app/email_owners.rs):
-- the bookkeeping of migrations that need the server's keys, beside sqlx's own.
CREATE TABLE upgrades
(
    name         text   PRIMARY KEY,
    changed      bigint NOT NULL,
    completed_at text   NOT NULL
);
