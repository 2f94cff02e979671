-- One-time links offered to a chat account linked to no one, for the person who opens one,
-- signs in and confirms to link it to themselves: only the secret's hash is kept.
CREATE TABLE chat_link_offers (
    secret_sha256 TEXT PRIMARY KEY,
    -- `slack:TEAM/USER`
    account TEXT NOT NULL,
    -- The account's name as the chat service gave it with the click, shown on confirmation.
    name TEXT NOT NULL,
    -- The email the chat service vouches for as the account's: only the person named so
    -- may confirm the offer.
    email TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    used_by TEXT,
    used_at_ms BIGINT
);
CREATE INDEX chat_link_offers_account ON chat_link_offers (account);
