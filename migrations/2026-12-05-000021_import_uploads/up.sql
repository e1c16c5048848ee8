-- Bulk-import CSV files, kept out of jobs.payload (issue 17, item 4): the file holds
-- passwords in clear, and job rows are kept for days after the job ends. The job's handler
-- deletes its upload when the job ends; maintenance deletes any left by a job that was
-- cancelled or died, and the foreign key takes it with a pruned job.
CREATE TABLE import_uploads (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    csv text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
