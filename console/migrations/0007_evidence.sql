-- How each person who decided proved who they are, for evidence packs: the identity
-- provider's issuer and subject behind a session, the one-time sign-in link, or the API
-- token. JSON of `people::Credential`; NULL where it was not recorded (before this).
ALTER TABLE sessions ADD COLUMN credential TEXT;
ALTER TABLE approvals ADD COLUMN credential TEXT;
ALTER TABLE decisions ADD COLUMN credential TEXT;
