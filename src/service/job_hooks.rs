//! The terminal-transition hook of the job engine: `ctx.job_hooks.call(conn, ended)` hands
//! flow-step jobs to the flow engine (issue 13). The engine calls it INSIDE the transaction of every terminal
//! transition — completed, dead (including dead after a lease rescue), cancelled (API, CLI,
//! admin, or a running job that stopped on request) — of jobs that carry a `flow_step_id`.
//! Jobs without one never pay for it: no transaction is opened for them and the hook is not
//! called. A hook error rolls the transition back; the worker retries the batch a few
//! times, then lets the lease expire and the job be rescued.
//!
//! [`JobHooks`] is declared in `app` (the job engine reaches it through `Ctx`), its `call` is
//! implemented here: `service` may depend on `app`, `app` never on `service`.
//!
//! L2: depends on `domain`, `store`, `app`, `service::flow_engine`.

use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use super::Error;
pub use crate::app::JobHooks;
use crate::domain::job::JobState;
use crate::store::jobs::Terminal;

/// A flow-step job that reached a terminal state.
#[derive(Debug, Clone)]
pub struct TerminalJob {
    /// Job id.
    pub id: Uuid,
    /// Job kind.
    pub kind: String,
    /// The flow step the job ran.
    pub flow_step_id: Uuid,
    /// `Completed`, `Dead` or `Cancelled`.
    pub state: JobState,
    /// The handler's JSON summary (completed jobs).
    pub result: Option<serde_json::Value>,
    /// The last failure (dead jobs; a retried job's earlier error otherwise).
    pub last_error: Option<String>,
    /// The attempt it ended in.
    pub attempt: i32,
}

impl JobHooks {
    /// Hands the flow-step jobs among `ended` to the flow engine (nothing when there are
    /// none). `conn` must be in the transaction that ended them.
    pub async fn call(
        &self,
        conn: &mut AsyncPgConnection,
        ended: &[Terminal],
    ) -> Result<(), Error> {
        let steps: Vec<TerminalJob> = ended
            .iter()
            .filter_map(|t| {
                let flow_step_id = t.flow_step_id?;
                let state = t.state;
                Some(TerminalJob {
                    id: t.id,
                    kind: t.kind.clone(),
                    flow_step_id,
                    state,
                    result: t.result.clone(),
                    last_error: t.last_error.clone(),
                    attempt: t.attempt,
                })
            })
            .collect();
        if steps.is_empty() {
            return Ok(());
        }
        super::flow_engine::on_terminal(conn, &steps, &self.relay_waker, &self.flow_definitions)
            .await
    }
}
