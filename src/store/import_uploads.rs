//! `import_uploads`: the CSV file of a bulk-import job, kept out of `jobs.payload` because it
//! carries passwords in clear and job rows outlive their jobs by days (issue 17, item 4).
//! The row references the job in the hot `jobs` table, which a job leaves when it ends
//! (completed, cancelled or dead: it moves to `jobs_history`), so `ON DELETE CASCADE` deletes
//! the file in the statement that ends the job. A job waiting for a retry keeps it.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::import_uploads;

/// Stores the file of a job (in the transaction that enqueues it).
pub async fn insert(conn: &mut AsyncPgConnection, job_id: Uuid, csv: &str) -> QueryResult<()> {
    diesel::insert_into(import_uploads::table)
        .values((
            import_uploads::job_id.eq(job_id),
            import_uploads::csv.eq(csv),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// The file of a job, if it is still stored.
pub async fn find_csv(conn: &mut AsyncPgConnection, job_id: Uuid) -> QueryResult<Option<String>> {
    import_uploads::table
        .find(job_id)
        .select(import_uploads::csv)
        .first(conn)
        .await
        .optional()
}
