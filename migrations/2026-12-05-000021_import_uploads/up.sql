-- Bulk-import CSV files, kept out of jobs.payload (issue 17, item 4): the file holds
-- passwords in clear, and finished jobs are kept for days. `jobs` holds only queued and
-- running jobs (a job that ends moves to jobs_history in the statement that ends it), so
-- the foreign key deletes the file the moment its job ends, however it ends.
CREATE TABLE import_uploads (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    csv text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
