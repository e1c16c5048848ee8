DROP TRIGGER jobs_drop_import_uploads ON jobs;
DROP FUNCTION jobs_drop_import_uploads();
DELETE FROM import_uploads u WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id);
ALTER TABLE import_uploads ADD CONSTRAINT import_uploads_job_id_fkey
    FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;

CREATE INDEX jobs_history_campus_idx ON jobs_history (campus_id, created_at DESC)
    WHERE campus_id IS NOT NULL;
DROP INDEX jobs_history_owner_id_idx;
CREATE INDEX jobs_history_owner_idx ON jobs_history (owner_id, created_at DESC)
    WHERE owner_id IS NOT NULL;
DROP INDEX jobs_history_state_id_idx;
CREATE INDEX jobs_history_state_id_idx ON jobs_history (state, id);
DROP INDEX jobs_history_finished_brin;
CREATE INDEX jobs_history_finished_idx ON jobs_history (finished_at);
CREATE INDEX jobs_history_created_idx ON jobs_history (created_at DESC);

ALTER TABLE jobs RESET (fillfactor);
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
DROP INDEX jobs_claim_idx;
CREATE INDEX jobs_claim_idx ON jobs (priority, run_at, id) WHERE state = 'queued';
