-- Messages announcing holds are kept per chat service: Slack's and Teams' are updated by
-- their own announcements only, and one chat's conversation id never hides another's.
CREATE TABLE chat_messages_by_chat (
    chat TEXT NOT NULL,
    host TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (chat, host, hold_id, channel)
);
INSERT INTO chat_messages_by_chat (chat, host, hold_id, channel, ts)
    SELECT 'slack', host, hold_id, channel, ts FROM chat_messages;
DROP TABLE chat_messages;
ALTER TABLE chat_messages_by_chat RENAME TO chat_messages;
-- How each chat account was linked: a link an admin made is not replaced by the one a
-- person's sign-in makes.
ALTER TABLE chat_links ADD COLUMN how TEXT NOT NULL DEFAULT 'admin';
