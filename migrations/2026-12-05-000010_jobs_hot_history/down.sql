WITH moved AS (DELETE FROM jobs_history RETURNING *)
INSERT INTO jobs (id, kind, queue, priority, state, payload, unique_key, run_at, attempt,
    max_attempts, timeout_secs, worker_id, lease_expires_at, progress, progress_message,
    cancel_requested, last_error, result, result_content_type, result_body, owner_id, campus_id,
    created_at, started_at, finished_at, updated_at, flow_step_id)
SELECT id, kind, queue, priority, state, payload, unique_key, run_at, attempt, max_attempts,
    timeout_secs, worker_id, lease_expires_at, progress, progress_message, cancel_requested,
    last_error, result, result_content_type, result_body, owner_id, campus_id, created_at,
    started_at, finished_at, updated_at, flow_step_id
FROM moved;
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_dead_idx ON jobs (finished_at) WHERE state = 'dead';
DROP TABLE job_counts_minute;
DROP TABLE job_queues;
DROP TABLE job_keys;
DROP TABLE jobs_history;
DROP INDEX IF EXISTS jobs_created_idx;
DROP INDEX IF EXISTS jobs_flow_step_idx;
ALTER TABLE jobs DROP COLUMN flow_step_id;
