-- People and automation: API tokens tied to a person, browser sessions after an OpenID
-- Connect sign-in, and sign-ins under way (so any replica can finish one).

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    -- SHA-256 of the token, hex: the token itself is shown once and never stored.
    token_sha256 TEXT NOT NULL UNIQUE,
    person TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'approver', 'admin')),
    name TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    last_used_ms BIGINT,
    revoked_at_ms BIGINT,
    revoked_by TEXT
);

CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'approver', 'admin')),
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

CREATE TABLE logins (
    state TEXT PRIMARY KEY,
    -- The PendingLogin (nonce, PKCE verifier) as JSON.
    pending TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
