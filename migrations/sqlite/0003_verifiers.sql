-- Verifiers of the verification service (email, google_auth, phone): a read model
-- for GET, folded from the `verifier` aggregate's events. No codes or secrets here.
-- status: pending, validated or deleted; expires_at: unix seconds.
CREATE TABLE verifiers_view
(
    verification_id text    PRIMARY KEY,
    method          text    NOT NULL,
    consumer        text    NOT NULL,
    payload         text    NOT NULL,
    expires_at      integer NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    status          text    NOT NULL
);
