-- What each chat message of a hold is: the channel's announcement, a copy sent directly to
-- an approver the hold's policy names (`notify`), or the requester's outcome; and the
-- account a direct one was sent to. Each is posted once, whatever else a hold has.
ALTER TABLE chat_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'channel';
ALTER TABLE chat_messages ADD COLUMN account TEXT NOT NULL DEFAULT '';
-- Until now only the requester was written to directly: in Slack, in a direct conversation
-- (its id starts with D); in Teams, in the bot's personal conversation (a channel's id
-- starts with 19:).
UPDATE chat_messages SET kind = 'outcome'
    WHERE (chat = 'slack' AND channel LIKE 'D%') OR (chat = 'teams' AND channel NOT LIKE '19:%');
