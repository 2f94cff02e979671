-- Enrolment over mutual TLS: one-time bootstrap tokens, and the certificate issued to
-- each host (a stream over TLS must present exactly that certificate).

CREATE TABLE enrolment_tokens (
    -- SHA-256 of the token, hex: the token itself is shown once and never stored.
    token_sha256 TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at_ms BIGINT
);

ALTER TABLE hosts ADD COLUMN certificate_sha256 TEXT;
