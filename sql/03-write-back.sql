-- What the write-back machinery keeps in Postgres, beside the Chinook tables.

-- The version of the last write-back applied to each row. A flush writes a row only
-- when its version is newer, so redelivered or reordered batches cannot go back in time.
ALTER TABLE album ADD COLUMN wb_version bigint NOT NULL DEFAULT 0;
ALTER TABLE artist ADD COLUMN wb_version bigint NOT NULL DEFAULT 0;

-- Operations that must run once even when their task is delivered twice (duplication).
CREATE TABLE wb_operation (
    operation_id text PRIMARY KEY,
    kind text NOT NULL,
    result jsonb NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
