-- Chat accounts linked to people: a click in chat is a decision by the person the clicking
-- account is linked to, with the role given at linking (never above approver).
CREATE TABLE chat_links (
    -- `slack:TEAM/USER`
    account TEXT PRIMARY KEY,
    person TEXT NOT NULL,
    role TEXT NOT NULL,
    linked_by TEXT NOT NULL,
    linked_at_ms BIGINT NOT NULL
);
-- Each chat message that announced a hold: updated as the hold is decided or closed.
CREATE TABLE chat_messages (
    host TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (host, hold_id, channel)
);
