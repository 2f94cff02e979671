-- Messages announcing holds are kept per chat service: Slack's and Teams' are updated by
-- their own announcements only.
ALTER TABLE chat_messages ADD COLUMN chat TEXT NOT NULL DEFAULT 'slack';
