-- Batch jobs (backfills and scheduled runs) and their shards. Owned by ingestion, never
-- written by apply. Timestamps are milliseconds since the Unix epoch, UTC, as in 0001.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    ingestion       TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('backfill', 'scheduled')),
    state           TEXT NOT NULL CHECK (state IN
                        ('submitted', 'runnable', 'running', 'succeeded', 'failed', 'cancelled')),
    -- The period of event time covered, [from, to); NULL is unbounded on that side.
    period_from_ms  INTEGER,
    period_to_ms    INTEGER,
    -- Where the shards run: 'local' or 'kafka'.
    runner          TEXT NOT NULL,
    max_attempts    INTEGER NOT NULL CHECK (max_attempts >= 0),
    submitted_at_ms INTEGER NOT NULL,
    started_at_ms   INTEGER,
    finished_at_ms  INTEGER,
    -- The last change of the job or of any of its shards.
    updated_at_ms   INTEGER NOT NULL,
    -- NULL until the job is planned. Row counts read and written are summed from job_shards.
    rows_planned    INTEGER,
    error           TEXT,
    alerted_at_ms   INTEGER
);

-- Listing an ingestion's jobs newest first, and finding its last job for a period.
CREATE INDEX jobs_by_ingestion ON jobs (ingestion, id);
-- Listing jobs by state (the unfinished ones, mostly).
CREATE INDEX jobs_by_state ON jobs (state, id);

-- One row per planned shard of a job; each claim of it is an attempt.
CREATE TABLE job_shards (
    job_id          INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    shard_index     INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN
                        ('runnable', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL,
    -- The shard description as the planner serialised it; opaque to the registry.
    description     TEXT NOT NULL,
    rows_planned    INTEGER NOT NULL,
    -- Counters of the current (or last) attempt.
    rows_read       INTEGER NOT NULL,
    rows_written    INTEGER NOT NULL,
    rows_rejected   INTEGER NOT NULL,
    worker          TEXT,
    error           TEXT,
    started_at_ms   INTEGER,
    finished_at_ms  INTEGER,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (job_id, shard_index)
);
