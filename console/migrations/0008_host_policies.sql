-- The policies each host had in force: one row per version, from the report that first had
-- it to the report that no longer did (NULL: still in force), as the console heard them.
CREATE TABLE host_policies (
    host TEXT NOT NULL REFERENCES hosts (name),
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    text TEXT NOT NULL,
    from_ms BIGINT NOT NULL,
    until_ms BIGINT
);
CREATE INDEX host_policies_by_host ON host_policies (host, from_ms);
