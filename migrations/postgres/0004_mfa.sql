-- Read model: which accounts have MFA on (folded from the `mfa` aggregate).
CREATE TABLE mfa_view
(
    profile_id text    PRIMARY KEY,
    enabled    boolean NOT NULL
);
