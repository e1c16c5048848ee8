-- Issue 12: every index on the job tables is paid by every job (insert, claim, move to
-- history). Jobs without an owner or a campus (cron, maintenance, pushes, bulk work) are
-- never listed by owner or campus, so those indexes become partial; the hot table needs no
-- index on created_at (it is small by design, and lists of it are admin pages).
DROP INDEX jobs_owner_idx;
DROP INDEX jobs_campus_idx;
DROP INDEX jobs_created_idx;
CREATE INDEX jobs_owner_idx ON jobs (owner_id, created_at DESC) WHERE owner_id IS NOT NULL;
CREATE INDEX jobs_campus_idx ON jobs (campus_id, created_at DESC) WHERE campus_id IS NOT NULL;

DROP INDEX jobs_history_owner_idx;
DROP INDEX jobs_history_campus_idx;
DROP INDEX jobs_history_campus_id_idx;
CREATE INDEX jobs_history_owner_idx ON jobs_history (owner_id, created_at DESC)
    WHERE owner_id IS NOT NULL;
CREATE INDEX jobs_history_campus_idx ON jobs_history (campus_id, created_at DESC)
    WHERE campus_id IS NOT NULL;
CREATE INDEX jobs_history_campus_id_idx ON jobs_history (campus_id, id) WHERE campus_id IS NOT NULL;
