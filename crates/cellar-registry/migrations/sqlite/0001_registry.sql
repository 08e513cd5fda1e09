-- Applied feature repos, one row per `apply` that changed something.
-- Timestamps are milliseconds since the Unix epoch, UTC, so both backends store the same values.
CREATE TABLE repo_versions (
    -- Assigned as the previous version + 1 inside the apply transaction; the primary key makes
    -- a concurrent writer that picked the same number fail instead of interleaving.
    version       INTEGER PRIMARY KEY,
    applied_at_ms INTEGER NOT NULL,
    -- The whole repo as JSON (without origins). Compared byte for byte on apply.
    repo          TEXT NOT NULL
);

-- Per-spec history: a row each time a spec is added, changed or removed.
CREATE TABLE spec_versions (
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    -- 1, 2, ... per (kind, name).
    version       INTEGER NOT NULL,
    -- The repo version whose apply wrote this row.
    repo_version  INTEGER NOT NULL REFERENCES repo_versions (version),
    applied_at_ms INTEGER NOT NULL,
    removed       BOOLEAN NOT NULL,
    -- The spec as JSON; NULL when removed.
    spec          TEXT,
    PRIMARY KEY (kind, name, version),
    CHECK ((spec IS NULL) = removed)
);

-- Ingestion progress. Owned by ingestion, never written by apply.
CREATE TABLE watermarks (
    ingestion     TEXT PRIMARY KEY,
    -- Exactly one of the two is set: an event time in ms, or an opaque position.
    value_ms      INTEGER,
    value_text    TEXT,
    updated_at_ms INTEGER NOT NULL,
    CHECK ((value_ms IS NULL) <> (value_text IS NULL))
);
