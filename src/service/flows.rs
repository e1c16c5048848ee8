//! Flows as the API sees them: definitions (create, read, list, new version, delete,
//! versions), runs (start, get with every step, list, cancel, retry) and schedules.
//!
//! Authorization (issue 13 item 7): campus admins manage and run their campus's flows,
//! platform admins all; other roles see only runs that concern them (those they started).
//! A flow or run of another tenant answers 404.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::flow_engine::{self, RunWork};
use super::{Page, PageRequest, Result};
use crate::app::Ctx;
use crate::domain::event::{Event, FlowRunStatusChanged};
use crate::domain::flow::{Definition, FieldErrors, RunStatus, step_state as st};
use crate::domain::{Actor, DomainError, Role, access};
use crate::store::flows::{
    self as store, FlowRow, RunRow, RunScope, ScheduleRow, StepRow, VersionRow,
};

/// A flow definition as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowView {
    /// Id.
    pub id: Uuid,
    /// Campus.
    pub campus_id: Uuid,
    /// Name (unique per campus).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Version new runs use.
    pub version: i32,
    /// That version's definition.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One version.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionView {
    /// Version number.
    pub version: i32,
    /// Definition.
    #[schema(value_type = Object)]
    pub definition: Value,
    /// Author.
    pub created_by: Option<Uuid>,
    /// Saved.
    pub created_at: DateTime<Utc>,
}

/// A fan-out instance of a step.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// Element index.
    pub index: i32,
    /// queued, running, succeeded, failed, cancelled.
    pub status: String,
    /// Attempts of its job.
    pub attempts: i32,
    /// Output (any JSON value the node returns).
    pub output: Option<Value>,
    /// Error.
    pub error: Option<String>,
    /// Its job.
    pub job_id: Option<Uuid>,
    /// Enqueued.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A step of a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// Step id in the definition.
    pub id: String,
    /// Node (job kind).
    pub node: String,
    /// Its dependencies.
    pub depends_on: Vec<String>,
    /// waiting, queued, running, succeeded, failed, skipped, cancelled.
    pub status: String,
    /// Attempts of its (last) job.
    pub attempts: i32,
    /// Resolved input (once enqueued).
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Output (any JSON value); for a fan-out step the list of its instances' outputs.
    pub output: Option<Value>,
    /// Error.
    pub error: Option<String>,
    /// Its job (not for a fan-out step: see `instances`).
    pub job_id: Option<Uuid>,
    /// Enqueued.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Fan-out: instances in all.
    pub items_total: Option<i32>,
    /// Fan-out: instances not finished.
    pub items_remaining: Option<i32>,
    /// Fan-out: the instances.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceView>>,
}

/// A run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// Id.
    pub id: Uuid,
    /// Flow.
    pub flow_id: Uuid,
    /// Flow name at start.
    pub flow_name: String,
    /// The version it runs.
    pub version: i32,
    /// Campus.
    pub campus_id: Uuid,
    /// running, succeeded, failed, cancelled.
    pub status: String,
    /// api or schedule.
    pub trigger: String,
    /// Input.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Steps not finished.
    pub steps_remaining: i32,
    /// Steps failed.
    pub steps_failed: i32,
    /// Started.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Every step (only in `GET /flow-runs/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
}

fn run_view(r: &RunRow, steps: Option<Vec<StepView>>) -> RunView {
    RunView {
        id: r.id,
        flow_id: r.flow_id,
        flow_name: r.flow_name.clone(),
        version: r.version,
        campus_id: r.campus_id,
        status: r.status.clone(),
        trigger: r.trigger.clone(),
        input: r.input.clone(),
        steps_remaining: r.steps_remaining,
        steps_failed: r.steps_failed,
        created_at: r.created_at,
        finished_at: r.finished_at,
        steps,
    }
}

fn flow_view(f: &FlowRow, definition: Value) -> FlowView {
    FlowView {
        id: f.id,
        campus_id: f.campus_id,
        name: f.name.clone(),
        description: f.description.clone(),
        version: f.version,
        definition,
        created_at: f.created_at,
        updated_at: f.updated_at,
    }
}

/// A new flow or a new version of one.
#[derive(Debug, Clone)]
pub struct FlowInput {
    /// Campus (platform admins must say; campus admins default to theirs).
    pub campus_id: Option<Uuid>,
    /// Name.
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Definition JSON.
    pub definition: Value,
}

fn invalid(errors: FieldErrors) -> DomainError {
    DomainError::Invalid {
        field_errors: errors,
    }
}

fn not_found() -> DomainError {
    DomainError::NotFound { what: "flow" }
}

/// The campus's time zone, or UTC when the campus is unknown.
async fn campus_zone(conn: &mut AsyncPgConnection, campus: Uuid) -> Result<chrono_tz::Tz> {
    let zone = crate::store::campuses::find(conn, campus)
        .await?
        .map(|c| c.time_zone)
        .unwrap_or_default();
    Ok(zone.parse().unwrap_or(chrono_tz::UTC))
}

/// Parses and validates a definition, with schedules (cron and zone).
pub fn validate_definition(v: &Value) -> std::result::Result<Definition, FieldErrors> {
    let def = Definition::parse(v, "definition")?;
    let mut errors = match def.validate("definition", &crate::service::nodes::input_schema) {
        Ok(()) => Vec::new(),
        Err(e) => e,
    };
    for (i, s) in def.schedules.iter().enumerate() {
        if let Err(e) = croner::Cron::new(&s.cron).with_seconds_optional().parse() {
            errors.push((format!("definition.schedules[{i}].cron"), e.to_string()));
        }
        if let Some(tz) = &s.time_zone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            errors.push((
                format!("definition.schedules[{i}].timeZone"),
                format!("unknown time zone `{tz}` (IANA names, e.g. America/Mexico_City)"),
            ));
        }
        if !s.input.is_object() {
            errors.push((
                format!("definition.schedules[{i}].input"),
                "must be an object".into(),
            ));
        }
    }
    if errors.is_empty() {
        Ok(def)
    } else {
        Err(errors)
    }
}

/// The next tick of a cron expression in a zone strictly after `after`.
pub fn next_tick(cron: &str, zone: chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = croner::Cron::new(cron)
        .with_seconds_optional()
        .parse()
        .ok()?;
    cron.find_next_occurrence(&after.with_timezone(&zone), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn validate_name(name: &str) -> std::result::Result<(), FieldErrors> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(vec![(
            "name".into(),
            "1 to 100 characters of a-z, 0-9, '.', '_' and '-'".into(),
        )])
    }
}

/// May the actor manage flows of `campus`? Out of tenant → NotFound; same campus, wrong role
/// → Forbidden.
fn can_manage(actor: &Actor, campus: Uuid) -> std::result::Result<(), DomainError> {
    if !access::can_read_campus(actor, campus.into()) {
        return Err(not_found());
    }
    match actor.role {
        Role::PlatformAdmin | Role::CampusAdmin => Ok(()),
        _ => Err(DomainError::forbidden(
            "only campus admins manage and run their campus's flows",
        )),
    }
}

async fn schedules_for(
    conn: &mut AsyncPgConnection,
    flow: &FlowRow,
    def: &Definition,
) -> Result<Vec<ScheduleRow>> {
    let zone = campus_zone(conn, flow.campus_id).await?;
    let now = Utc::now();
    Ok(def
        .schedules
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let tz = s
                .time_zone
                .as_deref()
                .and_then(|z| z.parse().ok())
                .unwrap_or(zone);
            Some(ScheduleRow {
                flow_id: flow.id,
                idx: i32::try_from(i).ok()?,
                version: flow.version,
                cron: s.cron.clone(),
                time_zone: tz.name().to_owned(),
                input: s.input.clone(),
                next_run_at: next_tick(&s.cron, tz, now)?,
            })
        })
        .collect())
}

/// Saves a flow in the caller's transaction (used by the API and the seed).
pub async fn save_new_flow(
    conn: &mut AsyncPgConnection,
    campus_id: Uuid,
    name: &str,
    description: &str,
    def: &Definition,
    created_by: Option<Uuid>,
) -> Result<FlowRow> {
    let now = Utc::now();
    let flow = FlowRow {
        id: Uuid::now_v7(),
        campus_id,
        name: name.to_owned(),
        description: description.to_owned(),
        version: 1,
        created_by,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    let definition = serde_json::to_value(def).map_err(anyhow::Error::from)?;
    store::insert_flow(
        conn,
        &flow,
        &VersionRow {
            flow_id: flow.id,
            version: 1,
            definition,
            created_by,
            created_at: now,
        },
    )
    .await
    .map_err(|e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => DomainError::conflict(format!("a flow named `{name}` exists in this campus")).into(),
        e => super::Error::from(e),
    })?;
    let schedules = schedules_for(conn, &flow, def).await?;
    store::replace_schedules(conn, flow.id, &schedules).await?;
    Ok(flow)
}

/// `POST /flows`.
pub async fn create_flow(ctx: &Ctx, actor: &Actor, input: FlowInput) -> Result<FlowView> {
    let campus_id = match (actor.role, input.campus_id, actor.campus_id) {
        (Role::PlatformAdmin, Some(c), _) => c,
        (Role::PlatformAdmin, None, _) => {
            return Err(invalid(vec![("campusId".into(), "is required".into())]).into());
        }
        (_, Some(c), _) => c,
        (_, None, Some(own)) => own.into_inner(),
        (_, None, None) => return Err(not_found().into()),
    };
    can_manage(actor, campus_id)?;
    let name = input.name.unwrap_or_default();
    let mut errors = validate_name(&name).err().unwrap_or_default();
    let def = match validate_definition(&input.definition) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let Some(def) = def.filter(|_| errors.is_empty()) else {
        return Err(invalid(errors).into());
    };
    let description = input.description.unwrap_or_default();
    let mut conn = ctx.db.conn().await?;
    let user = actor.user_id.into_inner();
    let flow = conn
        .transaction(async |conn| -> Result<FlowRow> {
            if crate::store::campuses::find(conn, campus_id)
                .await?
                .is_none()
            {
                return Err(DomainError::NotFound { what: "campus" }.into());
            }
            save_new_flow(conn, campus_id, &name, &description, &def, Some(user)).await
        })
        .await?;
    Ok(flow_view(
        &flow,
        serde_json::to_value(&def).map_err(anyhow::Error::from)?,
    ))
}

async fn visible_flow(conn: &mut AsyncPgConnection, actor: &Actor, id: Uuid) -> Result<FlowRow> {
    let flow = store::find_flow(conn, id).await?.ok_or_else(not_found)?;
    can_manage(actor, flow.campus_id)?;
    Ok(flow)
}

/// `GET /flows/{id}`.
pub async fn get_flow(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<FlowView> {
    let mut conn = ctx.db.conn().await?;
    let flow = visible_flow(&mut conn, actor, id).await?;
    let v = store::find_version(&mut conn, id, flow.version)
        .await?
        .ok_or_else(not_found)?;
    Ok(flow_view(&flow, v.definition))
}

/// `GET /flows`: the caller's campus's flows (all for platform admins).
pub async fn list_flows(ctx: &Ctx, actor: &Actor, page: PageRequest) -> Result<Page<FlowView>> {
    let campus = match actor.role {
        Role::PlatformAdmin => None,
        Role::CampusAdmin => Some(actor.campus_id.ok_or_else(not_found)?.into_inner()),
        _ => {
            return Err(DomainError::forbidden("only campus admins list flows").into());
        }
    };
    let mut conn = ctx.db.conn().await?;
    let (rows, total) = store::list_flows(&mut conn, campus, page.limit, page.offset).await?;
    let keys: Vec<(Uuid, i32)> = rows.iter().map(|f| (f.id, f.version)).collect();
    let defs: HashMap<(Uuid, i32), Value> = store::definitions(&mut conn, &keys)
        .await?
        .into_iter()
        .map(|v| ((v.flow_id, v.version), v.definition))
        .collect();
    let data = rows
        .iter()
        .map(|f| {
            flow_view(
                f,
                defs.get(&(f.id, f.version)).cloned().unwrap_or(Value::Null),
            )
        })
        .collect();
    Ok(Page::new(data, total, page))
}

/// `PUT /flows/{id}`: a new version (runs in progress keep theirs).
pub async fn update_flow(ctx: &Ctx, actor: &Actor, id: Uuid, input: FlowInput) -> Result<FlowView> {
    let mut errors = FieldErrors::new();
    if let Some(n) = &input.name
        && let Err(e) = validate_name(n)
    {
        errors.extend(e);
    }
    let def = match validate_definition(&input.definition) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let mut conn = ctx.db.conn().await?;
    let user = actor.user_id.into_inner();
    let flow = conn
        .transaction(async |conn| -> Result<FlowRow> {
            let flow = store::lock_flow(conn, id).await?.ok_or_else(not_found)?;
            can_manage(actor, flow.campus_id)?;
            let Some(def) = def.as_ref().filter(|_| errors.is_empty()) else {
                return Err(invalid(errors.clone()).into());
            };
            let version = flow.version + 1;
            store::insert_version(
                conn,
                &VersionRow {
                    flow_id: id,
                    version,
                    definition: serde_json::to_value(def).map_err(anyhow::Error::from)?,
                    created_by: Some(user),
                    created_at: Utc::now(),
                },
            )
            .await?;
            let name = input.name.clone().unwrap_or(flow.name);
            let description = input.description.clone().unwrap_or(flow.description);
            let flow = store::update_flow(conn, id, &name, &description, version).await?;
            let schedules = schedules_for(conn, &flow, def).await?;
            store::replace_schedules(conn, id, &schedules).await?;
            Ok(flow)
        })
        .await?;
    let def = def
        .map(serde_json::to_value)
        .transpose()
        .map_err(anyhow::Error::from)?;
    Ok(flow_view(&flow, def.unwrap_or(Value::Null)))
}

/// `DELETE /flows/{id}`: no new runs; runs in progress finish on their version.
pub async fn delete_flow(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<()> {
    let mut conn = ctx.db.conn().await?;
    conn.transaction(async |conn| -> Result<()> {
        let flow = store::lock_flow(conn, id).await?.ok_or_else(not_found)?;
        can_manage(actor, flow.campus_id)?;
        store::delete_flow(conn, id).await?;
        Ok(())
    })
    .await
}

/// `GET /flows/{id}/versions`.
pub async fn list_versions(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<Vec<VersionView>> {
    let mut conn = ctx.db.conn().await?;
    visible_flow(&mut conn, actor, id).await?;
    Ok(store::list_versions(&mut conn, id)
        .await?
        .into_iter()
        .map(|v| VersionView {
            version: v.version,
            definition: v.definition,
            created_by: v.created_by,
            created_at: v.created_at,
        })
        .collect())
}

/// Starts a run of `flow`'s current version in the caller's transaction; None when
/// `unique_key` already started one (a schedule tick fired twice). Also used by schedules.
pub async fn start_run_in(
    conn: &mut AsyncPgConnection,
    definitions: &flow_engine::DefinitionCache,
    flow: &FlowRow,
    input: Value,
    user_id: Option<Uuid>,
    trigger: &str,
    unique_key: Option<String>,
) -> Result<Option<RunRow>> {
    let defs = definitions
        .definitions(conn, &[(flow.id, flow.version)])
        .await?;
    let def: Arc<Definition> = defs
        .get(&(flow.id, flow.version))
        .cloned()
        .ok_or_else(not_found)?;
    let Some(run) = store::insert_run(
        conn,
        &store::NewRunRow {
            id: Uuid::now_v7(),
            flow_id: flow.id,
            version: flow.version,
            flow_name: flow.name.clone(),
            campus_id: flow.campus_id,
            input,
            user_id,
            trigger: trigger.to_owned(),
            unique_key,
            steps_remaining: i32::try_from(def.steps.len()).unwrap_or(i32::MAX),
        },
    )
    .await?
    else {
        return Ok(None);
    };
    let now = Utc::now();
    let rows: Vec<StepRow> = def
        .steps
        .iter()
        .map(|s| StepRow {
            id: Uuid::now_v7(),
            run_id: run.id,
            step_key: s.id.clone(),
            item_index: None,
            state: st::WAITING.to_owned(),
            deps_remaining: i32::try_from(s.depends_on.len()).unwrap_or(i32::MAX),
            items_total: None,
            items_remaining: None,
            items_failed: 0,
            job_id: None,
            attempt: 0,
            input: None,
            output: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
        })
        .collect();
    store::insert_steps(conn, &rows).await?;
    let mut w = RunWork::new(run.clone(), def.clone(), rows);
    for s in &def.steps {
        if s.depends_on.is_empty() {
            w.mark_ready(&s.id);
        }
    }
    w.mark_status_changed();
    let mut work = [w];
    flow_engine::settle(conn, &mut work).await?;
    metrics::counter!("flow_runs_started_total", "flow" => flow.name.clone()).increment(1);
    Ok(Some(run))
}

fn check_input(input: &Value) -> std::result::Result<(), DomainError> {
    if input.is_object() {
        Ok(())
    } else {
        Err(invalid(vec![("input".into(), "must be an object".into())]))
    }
}

/// `POST /flows/{id}/runs`.
pub async fn start_run(ctx: &Ctx, actor: &Actor, flow_id: Uuid, input: Value) -> Result<RunView> {
    check_input(&input)?;
    let mut conn = ctx.db.conn().await?;
    let user = actor.user_id.into_inner();
    let run = conn
        .transaction(async |conn| -> Result<RunRow> {
            let flow = visible_flow(conn, actor, flow_id).await?;
            start_run_in(
                conn,
                &ctx.flow_definitions,
                &flow,
                input.clone(),
                Some(user),
                "api",
                None,
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("a run without unique key was not inserted").into())
        })
        .await?;
    ctx.relay_waker.wake();
    flow_engine::notify_workers(ctx).await;
    Ok(run_view(&run, None))
}

fn can_read_run(actor: &Actor, run: &RunRow) -> bool {
    run.user_id == Some(actor.user_id.into_inner())
        || match actor.role {
            Role::PlatformAdmin => true,
            Role::CampusAdmin => actor.campus_id.map(|c| c.into_inner()) == Some(run.campus_id),
            _ => false,
        }
}

fn run_not_found() -> DomainError {
    DomainError::NotFound { what: "flow run" }
}

/// `GET /flow-runs/{id}`: the run and every step.
pub async fn get_run(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<RunView> {
    let mut conn = ctx.db.conn().await?;
    let run = store::find_run(&mut conn, id)
        .await?
        .filter(|r| can_read_run(actor, r))
        .ok_or_else(run_not_found)?;
    let defs = ctx
        .flow_definitions
        .definitions(&mut conn, &[(run.flow_id, run.version)])
        .await?;
    let def = defs.get(&(run.flow_id, run.version)).cloned();
    let rows = store::load_all_steps(&mut conn, id).await?;
    let open: Vec<Uuid> = rows
        .iter()
        .filter(|r| r.state == st::QUEUED)
        .filter_map(|r| r.job_id)
        .collect();
    let live: HashMap<Uuid, (String, i32)> = store::live_jobs(&mut conn, &open)
        .await?
        .into_iter()
        .map(|j| (j.id, (j.state, j.attempt)))
        .collect();
    let status_of = |r: &StepRow| -> (String, i32) {
        match r.job_id.and_then(|j| live.get(&j)) {
            Some((state, attempt)) if r.state == st::QUEUED => (
                if state == "running" {
                    "running"
                } else {
                    "queued"
                }
                .to_owned(),
                *attempt,
            ),
            _ => (r.state.clone(), r.attempt),
        }
    };
    let mut instances: HashMap<&str, Vec<InstanceView>> = HashMap::new();
    for r in rows.iter().filter(|r| r.item_index.is_some()) {
        let (status, attempts) = status_of(r);
        instances
            .entry(&r.step_key)
            .or_default()
            .push(InstanceView {
                index: r.item_index.unwrap_or(0),
                status,
                attempts,
                output: r.output.clone(),
                error: r.error.clone(),
                job_id: r.job_id,
                started_at: r.started_at,
                finished_at: r.finished_at,
            });
    }
    let order: HashMap<&str, usize> = def
        .as_ref()
        .map(|d| {
            d.steps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i))
                .collect()
        })
        .unwrap_or_default();
    let mut logical: Vec<&StepRow> = rows.iter().filter(|r| r.item_index.is_none()).collect();
    logical.sort_by_key(|r| {
        order
            .get(r.step_key.as_str())
            .copied()
            .unwrap_or(usize::MAX)
    });
    let steps = logical
        .into_iter()
        .map(|r| {
            let sd = def.as_ref().and_then(|d| d.step(&r.step_key));
            let fan = instances.remove(r.step_key.as_str());
            let (mut status, attempts) = status_of(r);
            if let Some(list) = &fan
                && r.state == st::QUEUED
                && list.iter().any(|i| i.status == "running")
            {
                status = "running".to_owned();
            }
            let output = match &fan {
                Some(list) if st::is_terminal(&r.state) => Some(Value::Array(
                    list.iter()
                        .map(|i| i.output.clone().unwrap_or(Value::Null))
                        .collect(),
                )),
                _ => r.output.clone(),
            };
            StepView {
                id: r.step_key.clone(),
                node: sd.map(|s| s.node.clone()).unwrap_or_default(),
                depends_on: sd.map(|s| s.depends_on.clone()).unwrap_or_default(),
                status,
                attempts,
                input: if fan.is_some() { None } else { r.input.clone() },
                output,
                error: r.error.clone(),
                job_id: if fan.is_some() { None } else { r.job_id },
                started_at: r.started_at,
                finished_at: r.finished_at,
                items_total: r.items_total,
                items_remaining: r.items_remaining,
                instances: fan,
            }
        })
        .collect();
    Ok(run_view(&run, Some(steps)))
}

/// Filters of `GET /flow-runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Flow id.
    pub flow: Option<Uuid>,
    /// Status.
    pub status: Option<String>,
}

/// `GET /flow-runs?flow=&status=`: admins see their campus's (all), others theirs.
pub async fn list_runs(
    ctx: &Ctx,
    actor: &Actor,
    filter: RunFilter,
    page: PageRequest,
) -> Result<Page<RunView>> {
    if let Some(s) = &filter.status
        && RunStatus::parse(s).is_none()
    {
        return Err(invalid(vec![(
            "status".into(),
            "one of running, succeeded, failed, cancelled".into(),
        )])
        .into());
    }
    let scope = match (actor.role, actor.campus_id) {
        (Role::PlatformAdmin, _) => RunScope::All,
        (Role::CampusAdmin, Some(c)) => RunScope::Campus(c.into_inner()),
        _ => RunScope::User(actor.user_id.into_inner()),
    };
    let mut conn = ctx.db.conn().await?;
    let (rows, total) = store::list_runs(
        &mut conn,
        scope,
        filter.flow,
        filter.status.as_deref(),
        page.limit,
        page.offset,
    )
    .await?;
    Ok(Page::new(
        rows.iter().map(|r| run_view(r, None)).collect(),
        total,
        page,
    ))
}

async fn managed_run(conn: &mut AsyncPgConnection, actor: &Actor, id: Uuid) -> Result<RunRow> {
    let run = store::lock_run(conn, id)
        .await?
        .filter(|r| can_read_run(actor, r))
        .ok_or_else(run_not_found)?;
    can_manage(actor, run.campus_id).map_err(|_| {
        DomainError::forbidden("only campus admins cancel or retry their campus's runs")
    })?;
    Ok(run)
}

/// `DELETE /flow-runs/{id}`: the run ends `cancelled` now; waiting steps are cancelled,
/// queued jobs cancelled, running jobs asked to stop (their late ends change nothing).
pub async fn cancel_run(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<RunView> {
    let mut conn = ctx.db.conn().await?;
    let run = conn
        .transaction(async |conn| -> Result<RunRow> {
            let mut run = managed_run(conn, actor, id).await?;
            if run.status != RunStatus::Running.as_str() {
                return Err(DomainError::conflict(format!(
                    "the run already ended ({})",
                    run.status
                ))
                .into());
            }
            let jobs = store::cancel_open_steps(conn, id).await?;
            for job in jobs {
                crate::store::jobs::cancel(conn, job).await?;
            }
            run.status = RunStatus::Cancelled.as_str().to_owned();
            run.event_seq += 1;
            crate::store::outbox::insert_event(
                conn,
                &flow_engine::run_event_row(
                    &run,
                    Event::FlowRunStatusChanged(FlowRunStatusChanged {
                        run_id: run.id,
                        flow_id: run.flow_id,
                        flow: run.flow_name.clone(),
                        version: run.version,
                        status: run.status.clone(),
                        steps_remaining: None,
                        steps_failed: None,
                    }),
                )?,
            )
            .await?;
            store::update_runs(
                conn,
                &[store::RunUpdate {
                    id,
                    status: run.status.clone(),
                    steps_remaining: run.steps_remaining,
                    steps_failed: run.steps_failed,
                    event_seq: run.event_seq,
                    finished: true,
                }],
            )
            .await?;
            Ok(run)
        })
        .await?;
    metrics::counter!("flow_runs_finished_total", "flow" => run.flow_name.clone(), "status" => "cancelled")
        .increment(1);
    ctx.relay_waker.wake();
    get_run(ctx, actor, run.id).await
}

/// `POST /flow-runs/{id}/retry`: a failed run runs its failed steps again, and the steps
/// depending on them that did not succeed; steps that succeeded keep their output. Of a
/// failed fan-out step only the failed instances run again.
pub async fn retry_run(ctx: &Ctx, actor: &Actor, id: Uuid) -> Result<RunView> {
    let mut conn = ctx.db.conn().await?;
    conn.transaction(async |conn| -> Result<()> {
        let run = managed_run(conn, actor, id).await?;
        if run.status != RunStatus::Failed.as_str() {
            return Err(DomainError::conflict(format!(
                "only a failed run can be retried (this one is {})",
                run.status
            ))
            .into());
        }
        let mut work = flow_engine::load_work(conn, &ctx.flow_definitions, vec![run]).await?;
        let Some(w) = work.first_mut() else {
            return Err(run_not_found().into());
        };
        let def = w.def.clone();
        let failed: Vec<String> = w
            .steps
            .values()
            .filter(|s| s.state == st::FAILED)
            .map(|s| s.step_key.clone())
            .collect();
        let mut reset: BTreeSet<String> = failed.iter().cloned().collect();
        for f in &failed {
            for d in def.descendants(f) {
                if w.steps.get(&d).is_some_and(|s| s.state != st::SUCCEEDED) {
                    reset.insert(d);
                }
            }
        }
        for key in &reset {
            let deps = def
                .step(key)
                .map(|s| s.depends_on.iter().filter(|d| reset.contains(*d)).count())
                .unwrap_or(0);
            let was_failed_group = w
                .steps
                .get(key)
                .is_some_and(|s| s.state == st::FAILED && s.items_total.is_some());
            if deps == 0 && was_failed_group {
                // Only the instances that did not succeed run again.
                let again =
                    store::instances_in(conn, id, key, &[st::FAILED, st::CANCELLED]).await?;
                if let Some(row) = w.steps.get_mut(key) {
                    row.state = st::WAITING.to_owned();
                    row.items_remaining = Some(i32::try_from(again.len()).unwrap_or(i32::MAX));
                    row.items_failed = 0;
                    row.error = None;
                    row.deps_remaining = 0;
                }
                w.touch(key);
                if let Some(row) = w.steps.get_mut(key) {
                    row.state = st::QUEUED.to_owned();
                }
                w.rerun(again);
                continue;
            }
            if w.steps.get(key).is_some_and(|s| s.items_total.is_some()) {
                store::delete_instances(conn, id, key).await?;
            }
            if let Some(row) = w.steps.get_mut(key) {
                row.state = st::WAITING.to_owned();
                row.deps_remaining = i32::try_from(deps).unwrap_or(i32::MAX);
                row.error = None;
                row.items_total = None;
                row.items_remaining = None;
                row.items_failed = 0;
                row.job_id = None;
            }
            w.touch(key);
            if deps == 0 {
                w.mark_ready(key);
            }
        }
        w.run.status = RunStatus::Running.as_str().to_owned();
        w.run.steps_remaining = i32::try_from(reset.len()).unwrap_or(i32::MAX);
        w.run.steps_failed = 0;
        w.mark_status_changed();
        flow_engine::settle(conn, &mut work).await?;
        Ok(())
    })
    .await?;
    ctx.relay_waker.wake();
    flow_engine::notify_workers(ctx).await;
    get_run(ctx, actor, id).await
}

/// Refreshes the `flow_steps{state}` gauge (steps of running runs by state).
pub async fn refresh_gauges(ctx: &Ctx) {
    let Ok(mut conn) = ctx.db.conn().await else {
        return;
    };
    if let Ok(counts) = store::count_open_steps(&mut conn).await {
        for state in [
            st::WAITING,
            st::QUEUED,
            st::SUCCEEDED,
            st::FAILED,
            st::SKIPPED,
            st::CANCELLED,
        ] {
            let n = counts
                .iter()
                .find(|c| c.state == state)
                .map_or(0, |c| c.count);
            #[expect(clippy::as_conversions, reason = "a gauge is an f64; counts fit")]
            metrics::gauge!("flow_steps", "state" => state).set(n as f64);
        }
    }
}
