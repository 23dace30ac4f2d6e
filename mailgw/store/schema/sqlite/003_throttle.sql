-- mailgw schema 3: the failure throttle's notice board (docs/operations.md).
-- Each node records its lock-outs here as they happen, for `mailgw throttle
-- list`; `mailgw throttle clear` removes them and appends a clear, which
-- every running node reads (ids greater than the last it saw) and applies to
-- its throttles in memory. The throttles in memory still decide, per node.

CREATE TABLE lockouts (
    address_key TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('key', 'anonymous')),
    locked_until REAL NOT NULL,
    failures INTEGER NOT NULL,
    PRIMARY KEY (address_key, node, kind)
);
-- what is still in force, and what has expired and may go
CREATE INDEX lockouts_until ON lockouts (locked_until);

-- AUTOINCREMENT: an id is never reused, even after the newest clears are
-- pruned, so that a node that saw id N never misses a later clear
CREATE TABLE throttle_clears (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address_key TEXT NOT NULL,
    cleared_at REAL NOT NULL
);
CREATE INDEX throttle_clears_at ON throttle_clears (cleared_at);
