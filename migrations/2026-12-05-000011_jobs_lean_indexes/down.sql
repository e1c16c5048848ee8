DROP INDEX jobs_history_campus_id_idx;
DROP INDEX jobs_history_campus_idx;
DROP INDEX jobs_history_owner_idx;
CREATE INDEX jobs_history_campus_id_idx ON jobs_history (campus_id, id);
CREATE INDEX jobs_history_campus_idx ON jobs_history (campus_id, created_at DESC);
CREATE INDEX jobs_history_owner_idx ON jobs_history (owner_id, created_at DESC);

DROP INDEX jobs_campus_idx;
DROP INDEX jobs_owner_idx;
CREATE INDEX jobs_created_idx ON jobs (created_at DESC);
CREATE INDEX jobs_campus_idx ON jobs (campus_id, created_at DESC);
CREATE INDEX jobs_owner_idx ON jobs (owner_id, created_at DESC);
