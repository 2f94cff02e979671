-- SIEM outputs: for each configured output, the first audit record its receiver has not
-- acknowledged, and which replica streams it (a lease, renewed while it streams).

CREATE TABLE siem_cursors (
    output TEXT PRIMARY KEY,
    -- The next record to send, and the hash of the one before it (the chain is checked
    -- across batches).
    next_seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    -- The replica streaming this output, until its lease runs out.
    holder TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);
