-- Hosts anchor their audit trails: every minute each host signs how many records its trail
-- has and the hash of the last. One anchor per count; the console's copy is the truth.
CREATE TABLE host_anchors (
    host TEXT NOT NULL REFERENCES hosts (name),
    records BIGINT NOT NULL,
    head TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    -- hex of the host key's Ed25519 signature (proto::anchor_message)
    signature TEXT NOT NULL,
    PRIMARY KEY (host, records)
);

-- What an anchor showed that a trail cut or rewritten after an earlier anchor would show.
CREATE TABLE host_findings (
    host TEXT NOT NULL REFERENCES hosts (name),
    at_ms BIGINT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX host_findings_by_host ON host_findings (host, at_ms);
