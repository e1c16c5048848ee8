//! `import_uploads`: the CSV file of a bulk-import job, kept out of `jobs.payload` because it
//! carries passwords in clear and job rows outlive their jobs by days (issue 17, item 4).
//! Its job deletes it when it ends; [`delete_of_ended_jobs`] sweeps the ones whose job was
//! cancelled or died first.

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

/// Deletes the file of a job; true when there was one.
pub async fn delete(conn: &mut AsyncPgConnection, job_id: Uuid) -> QueryResult<bool> {
    diesel::delete(import_uploads::table.find(job_id))
        .execute(conn)
        .await
        .map(|n| n > 0)
}

/// Deletes the files of jobs that ended without deleting them (cancelled, dead, or ended by
/// a crash after their last step); at most `batch` rows.
pub async fn delete_of_ended_jobs(conn: &mut AsyncPgConnection, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM import_uploads WHERE job_id IN (SELECT u.job_id FROM import_uploads u \
         JOIN jobs j ON j.id = u.job_id WHERE j.state IN ('completed', 'cancelled', 'dead') \
         LIMIT $1)",
    )
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
