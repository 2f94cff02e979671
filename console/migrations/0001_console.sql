-- The console's tables, in the SQL that SQLite and PostgreSQL both accept: TEXT and
-- BIGINT only (bytes are stored as hex), `$n` parameters, no dialect-only features.

-- A host is known by its name and the Ed25519 key it proved at its first Hello.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    key_fingerprint TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);

-- A held action as its host reported it. `raised` is the HoldRaised message, hex of its
-- protobuf encoding (the full context); the other columns are what queries filter on.
CREATE TABLE holds (
    host TEXT NOT NULL REFERENCES hosts (name),
    id TEXT NOT NULL,
    nonce BIGINT NOT NULL,
    kind TEXT NOT NULL,
    agent TEXT NOT NULL,
    requester TEXT NOT NULL,
    policy_rule TEXT NOT NULL,
    requested_at_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    quorum BIGINT NOT NULL,
    approvals BIGINT NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'closed')),
    closed_reason TEXT,
    received_at_ms BIGINT NOT NULL,
    raised TEXT NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX holds_by_status ON holds (status, requested_at_ms);

-- The one decision a hold gets: the primary key refuses a second one.
CREATE TABLE decisions (
    host TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'deny')),
    decided_by TEXT NOT NULL,
    decided_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    -- hex of the SignedDecision sent to the host
    signed TEXT NOT NULL,
    PRIMARY KEY (host, hold_id),
    FOREIGN KEY (host, hold_id) REFERENCES holds (host, id)
);

-- One row per person approving a hold that needs a quorum of distinct people.
CREATE TABLE approvals (
    host TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    approver TEXT NOT NULL,
    approved_at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (host, hold_id, approver),
    FOREIGN KEY (host, hold_id) REFERENCES holds (host, id)
);

-- The audit trail: each record carries the SHA-256 of the one before.
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    prev TEXT NOT NULL,
    event TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- The chain's head, one row: every append updates it first, which serialises appends
-- across replicas (a row lock on PostgreSQL, the write lock on SQLite).
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    next_seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, next_seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
