-- API tokens expire: a token outliving its person's role at the identity provider is
-- bounded. Tokens made before this have none (NULL).
ALTER TABLE api_tokens ADD COLUMN expires_at_ms BIGINT;
