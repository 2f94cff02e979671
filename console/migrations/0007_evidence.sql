-- How each person who decided proved who they are, for evidence packs: the identity
-- provider's issuer and subject behind a session, the one-time sign-in link, or the API
-- token. JSON of `people::Credential`; NULL where it was not recorded (before this).
ALTER TABLE sessions ADD COLUMN credential TEXT;
ALTER TABLE approvals ADD COLUMN credential TEXT;
ALTER TABLE decisions ADD COLUMN credential TEXT;

-- A pack selects holds by the time they were requested and audit records by their time.
CREATE INDEX holds_by_requested ON holds (requested_at_ms);
CREATE INDEX audit_by_time ON audit (at_ms);
