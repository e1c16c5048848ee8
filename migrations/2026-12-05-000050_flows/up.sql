-- Flows (issue 13): versioned DAG definitions, their runs and steps, and cron schedules.
--
-- A run points at the (flow, version) it started with; versions are never changed, so an
-- edit of the flow never changes a running run. One `flow_steps` row per step of a run
-- (item_index NULL), plus one per element of a fan-out step (item_index 0..n-1). The run
-- row is the lock that serialises a run's advancement.

CREATE TABLE flows (
    id          uuid PRIMARY KEY,
    campus_id   uuid NOT NULL REFERENCES campuses (id),
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    -- The version new runs use.
    version     integer NOT NULL,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE UNIQUE INDEX flows_campus_name_idx ON flows (campus_id, name) WHERE deleted_at IS NULL;

CREATE TABLE flow_versions (
    flow_id    uuid NOT NULL REFERENCES flows (id),
    version    integer NOT NULL,
    definition jsonb NOT NULL,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE flow_runs (
    id              uuid PRIMARY KEY,
    flow_id         uuid NOT NULL,
    version         integer NOT NULL,
    flow_name       text NOT NULL,
    campus_id       uuid NOT NULL,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    input           jsonb NOT NULL DEFAULT '{}',
    -- Who started it (API) — also who it concerns; NULL for scheduled runs.
    user_id         uuid,
    trigger         text NOT NULL DEFAULT 'api' CHECK (trigger IN ('api', 'schedule')),
    -- `schedule:<flow>:<index>:<tick>`: one run per tick however many workers fire it.
    unique_key      text,
    -- Steps not finished yet; the run ends when it reaches 0.
    steps_remaining integer NOT NULL,
    -- Steps that failed with policy fail/continue: the run ends `failed`.
    steps_failed    integer NOT NULL DEFAULT 0,
    -- Version of the run's events (`flow_run.*`, `flow_step.*`), for clients to order them.
    event_seq       integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    FOREIGN KEY (flow_id, version) REFERENCES flow_versions (flow_id, version)
);

CREATE UNIQUE INDEX flow_runs_unique_key_idx ON flow_runs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX flow_runs_flow_idx ON flow_runs (flow_id, created_at DESC);
CREATE INDEX flow_runs_campus_idx ON flow_runs (campus_id, created_at DESC);
CREATE INDEX flow_runs_user_idx ON flow_runs (user_id, created_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX flow_runs_running_idx ON flow_runs (created_at) WHERE status = 'running';

CREATE TABLE flow_steps (
    id              uuid PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES flow_runs (id) ON DELETE CASCADE,
    step_key        text NOT NULL,
    -- NULL: the step itself; 0..n-1: an instance of a fan-out step.
    item_index      integer,
    state           text NOT NULL DEFAULT 'waiting'
                    CHECK (state IN ('waiting', 'queued', 'succeeded', 'failed', 'skipped', 'cancelled')),
    -- Dependencies not finished yet.
    deps_remaining  integer NOT NULL DEFAULT 0,
    -- Fan-out steps: instances in all, not finished, failed.
    items_total     integer,
    items_remaining integer,
    items_failed    integer NOT NULL DEFAULT 0,
    -- The job running this step (instance) now; a retry replaces it.
    job_id          uuid,
    attempt         integer NOT NULL DEFAULT 0,
    input           jsonb,
    output          jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);

CREATE UNIQUE INDEX flow_steps_run_key_idx ON flow_steps (run_id, step_key, coalesce(item_index, -1));

CREATE TABLE flow_schedules (
    flow_id     uuid NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    version     integer NOT NULL,
    cron        text NOT NULL,
    time_zone   text NOT NULL,
    input       jsonb NOT NULL DEFAULT '{}',
    next_run_at timestamptz NOT NULL,
    PRIMARY KEY (flow_id, idx)
);

CREATE INDEX flow_schedules_due_idx ON flow_schedules (next_run_at);
