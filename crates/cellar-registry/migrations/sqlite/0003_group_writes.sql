-- How fresh each feature group is, merged over every process that writes it: the newest event
-- time written, the last write, and that write's delay from event time. Owned by the write
-- paths, never written by apply.
CREATE TABLE group_writes (
    group_name      TEXT PRIMARY KEY,
    newest_event_ms INTEGER NOT NULL,
    last_write_ms   INTEGER NOT NULL,
    last_delay_ms   INTEGER NOT NULL
);
