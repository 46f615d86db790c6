-- Crypto-shredding (see src/shred.rs): one key per account (subject = profile id),
-- kept outside the event log. Personal fields of the account's events are encrypted
-- under it; removing the account sets key to NULL, which erases them for good.
CREATE TABLE subject_keys
(
    subject      text  PRIMARY KEY,
    key          bytea NULL,
    destroyed_at text  NULL
);
