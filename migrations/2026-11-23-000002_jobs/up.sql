-- The durable job queue and the registry of live workers.
--
-- Hot set: only `queued` rows are in the claim index and only `running` rows in the lease
-- index, so millions of finished jobs (kept until pruned) never slow a claim, even when the
-- planner's statistics lag behind the table.

CREATE TABLE jobs (
    id                  uuid PRIMARY KEY,
    kind                text NOT NULL,
    queue               text NOT NULL DEFAULT 'default',
    -- 0 high, 1 normal, 2 low: claims order by priority, then by when the job became due.
    priority            smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    state               text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'completed', 'cancelled', 'dead')),
    payload             jsonb NOT NULL DEFAULT '{}',
    -- Enqueueing a duplicate key is a no-op that returns the existing job (cron ticks,
    -- one push per event).
    unique_key          text,
    run_at              timestamptz NOT NULL DEFAULT now(),
    attempt             integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    timeout_secs        integer NOT NULL DEFAULT 300 CHECK (timeout_secs >= 1),
    worker_id           uuid,
    lease_expires_at    timestamptz,
    progress            smallint NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message    text,
    cancel_requested    boolean NOT NULL DEFAULT false,
    last_error          text,
    result              jsonb,
    result_content_type text,
    result_body         bytea,
    -- Who may see the job through the API.
    owner_id            uuid,
    campus_id           uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX jobs_claim_idx ON jobs (priority, run_at, id) WHERE state = 'queued';
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX jobs_owner_idx ON jobs (owner_id, created_at DESC);
CREATE INDEX jobs_campus_idx ON jobs (campus_id, created_at DESC);
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- Dead jobs are few and wanted by admins and the dead-jobs alert.
CREATE INDEX jobs_dead_idx ON jobs (finished_at) WHERE state = 'dead';

CREATE TABLE workers (
    id           uuid PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL,
    running      integer NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
