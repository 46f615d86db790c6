-- Read models: derived from the log, rebuildable, never the only copy of anything.
-- projection_versions records, per aggregate, the last sequence folded in.
CREATE TABLE projection_versions
(
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE TABLE users_view
(
    profile_id      text    PRIMARY KEY,
    username        text    NOT NULL,
    email           text,
    email_verified  boolean NOT NULL DEFAULT false,
    failed_sign_ins bigint  NOT NULL DEFAULT 0,
    created_at      text    NOT NULL
);
CREATE TABLE sessions_view
(
    session_id text    PRIMARY KEY,
    profile_id text    NOT NULL,
    active     boolean NOT NULL,
    opened_at  text    NOT NULL
);
CREATE INDEX sessions_view_profile ON sessions_view (profile_id, active);
CREATE TABLE invite_tokens_view
(
    token_id text    PRIMARY KEY,
    bucket   text    NOT NULL,
    redeemed boolean NOT NULL
);
CREATE INDEX invite_tokens_view_bucket ON invite_tokens_view (bucket, redeemed);
