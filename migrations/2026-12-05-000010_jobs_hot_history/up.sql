-- Issue 12: the job table holds only the hot set (queued and running jobs). A job that ends
-- (completed, cancelled, dead) moves to `jobs_history` in the statement that ends it, so the
-- claim and lease indexes never carry the dead entries of millions of finished jobs, even
-- with autovacuum off or behind. Uniqueness of `unique_key` spans both tables through
-- `job_keys`; paused queues and per-minute counters get their own small tables.

-- A flow step run by this job (flows, issue 13): its terminal transition calls the flow hook
-- in the same transaction.
ALTER TABLE jobs ADD COLUMN flow_step_id uuid;

CREATE TABLE jobs_history (
    id                  uuid PRIMARY KEY,
    kind                text NOT NULL,
    queue               text NOT NULL,
    priority            smallint NOT NULL,
    state               text NOT NULL CHECK (state IN ('completed', 'cancelled', 'dead')),
    payload             jsonb NOT NULL,
    unique_key          text,
    run_at              timestamptz NOT NULL,
    attempt             integer NOT NULL,
    max_attempts        integer NOT NULL,
    timeout_secs        integer NOT NULL,
    worker_id           uuid,
    lease_expires_at    timestamptz,
    progress            smallint NOT NULL,
    progress_message    text,
    cancel_requested    boolean NOT NULL,
    last_error          text,
    result              jsonb,
    result_content_type text,
    result_body         bytea,
    owner_id            uuid,
    campus_id           uuid,
    created_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    flow_step_id        uuid
);
CREATE INDEX jobs_history_owner_idx ON jobs_history (owner_id, created_at DESC);
CREATE INDEX jobs_history_campus_idx ON jobs_history (campus_id, created_at DESC);
CREATE INDEX jobs_history_created_idx ON jobs_history (created_at DESC);
-- Keyset pages of the console (UUIDv7 ids are time-ordered).
CREATE INDEX jobs_history_state_id_idx ON jobs_history (state, id);
CREATE INDEX jobs_history_campus_id_idx ON jobs_history (campus_id, id);
CREATE INDEX jobs_history_finished_idx ON jobs_history (finished_at);
CREATE INDEX jobs_history_dead_idx ON jobs_history (kind, finished_at) WHERE state = 'dead';
CREATE INDEX jobs_history_flow_step_idx ON jobs_history (flow_step_id) WHERE flow_step_id IS NOT NULL;
CREATE INDEX jobs_flow_step_idx ON jobs (flow_step_id) WHERE flow_step_id IS NOT NULL;
CREATE INDEX jobs_created_idx ON jobs (created_at DESC);

-- Unique keys of jobs in either table; deleted with the job when history is pruned.
CREATE TABLE job_keys (
    unique_key text PRIMARY KEY,
    job_id     uuid NOT NULL
);

-- Queues an operator paused (claims skip them). A queue without a row is running.
CREATE TABLE job_queues (
    queue      text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    paused_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Jobs ended per minute, kind and queue, maintained by the workers' completers (one row per
-- shard, so workers never wait on each other's row lock; readers sum the shards).
CREATE TABLE job_counts_minute (
    minute    timestamptz NOT NULL,
    kind      text NOT NULL,
    queue     text NOT NULL,
    shard     smallint NOT NULL,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    dead      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, kind, queue, shard)
);

INSERT INTO job_keys (unique_key, job_id)
    SELECT unique_key, id FROM jobs WHERE unique_key IS NOT NULL;

WITH moved AS (
    DELETE FROM jobs WHERE state IN ('completed', 'cancelled', 'dead') RETURNING *
)
INSERT INTO jobs_history (id, kind, queue, priority, state, payload, unique_key, run_at, attempt,
    max_attempts, timeout_secs, worker_id, lease_expires_at, progress, progress_message,
    cancel_requested, last_error, result, result_content_type, result_body, owner_id, campus_id,
    created_at, started_at, finished_at, updated_at, flow_step_id)
SELECT id, kind, queue, priority, state, payload, unique_key, run_at, attempt, max_attempts,
    timeout_secs, worker_id, lease_expires_at, progress, progress_message, cancel_requested,
    last_error, result, result_content_type, result_body, owner_id, campus_id, created_at,
    started_at, coalesce(finished_at, updated_at), updated_at, flow_step_id
FROM moved;

DROP INDEX jobs_unique_key_idx;
DROP INDEX jobs_finished_idx;
DROP INDEX jobs_dead_idx;
