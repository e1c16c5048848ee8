//! The terminal-transition hook of the job engine: flows (issue 13) register one
//! [`JobTerminalHook`], and the engine calls it INSIDE the transaction of every terminal
//! transition — completed, dead (including dead after a lease rescue), cancelled (API, CLI,
//! admin, or a running job that stopped on request) — of jobs that carry a `flow_step_id`.
//! Jobs without one never pay for it: no transaction is opened for them and the hook is not
//! called. A hook error rolls the transition back; the worker retries the batch a few
//! times, then lets the lease expire and the job be rescued.
//!
//! L2: depends on `domain`, `store`.

use std::sync::{Arc, RwLock};

use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::Error;
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

/// Called by the engine in the transaction of terminal transitions of flow-step jobs.
pub trait JobTerminalHook: Send + Sync + 'static {
    /// `jobs` (never empty) ended in the transaction `conn` is in; write what follows from
    /// that (advance the flow) through `conn`. Do not commit, do not open a pool connection
    /// for writes that must be atomic with the job's end.
    fn on_terminal<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        jobs: &'a [TerminalJob],
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// The registered hook (at most one), shared through `app::Ctx::job_hooks`. Cloning shares it.
#[derive(Clone, Default)]
pub struct JobHooks(Arc<RwLock<Option<Arc<dyn JobTerminalHook>>>>);

impl JobHooks {
    /// Registers `hook` (replacing any earlier one). Call it at startup, before workers run.
    pub fn set(&self, hook: Arc<dyn JobTerminalHook>) {
        if let Ok(mut h) = self.0.write() {
            *h = Some(hook);
        }
    }

    /// The registered hook.
    pub fn get(&self) -> Option<Arc<dyn JobTerminalHook>> {
        self.0.read().ok().and_then(|h| h.clone())
    }

    /// Calls the hook with the flow-step jobs among `ended` (nothing when there are none or
    /// no hook is registered). `conn` must be in the transaction that ended them.
    pub async fn call(
        &self,
        conn: &mut AsyncPgConnection,
        ended: &[Terminal],
    ) -> Result<(), Error> {
        let steps: Vec<TerminalJob> = ended
            .iter()
            .filter_map(|t| {
                let flow_step_id = t.flow_step_id?;
                let state = t.state.parse::<JobState>().ok()?;
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
        let Some(hook) = self.get() else {
            tracing::warn!(
                count = steps.len(),
                "flow-step jobs ended with no flow hook registered"
            );
            return Ok(());
        };
        hook.on_terminal(conn, &steps).await
    }
}
