//! Flows: a named, versioned DAG of steps, each a registered job kind (a *node*). This module
//! is the pure part: the definition's shape, its validation (acyclic, references resolvable,
//! inputs valid against the node's JSON Schema, errors with JSON paths), input references
//! and their resolution, and the graph questions the engine asks (dependents, descendants).
//!
//! References: anywhere in a step's `input`, an object `{"$ref": "<path>"}` is replaced when
//! the step is enqueued by the value at `<path>`:
//! - `input[.a.b]` — the run's input;
//! - `steps.<id>.output[.a.0.b]` — a parent's output (for a fan-out parent: the list of its
//!   instances' outputs, in item order — that is the fan-in);
//! - `steps.<id>.error` / `steps.<id>.status` — what a parent ended with (useful after a
//!   `continue` failure);
//! - `item[.a]` — the element of a fan-out step's list (only in a step with `forEach`);
//! - `run.id`, `run.campusId`.
//!
//! A referenced step must be an ancestor (reachable through `dependsOn`), so its result
//! exists when the reference is resolved. A path that does not exist in the value resolves
//! to `null`.
//!
//! Pure: serde/serde_json and std only (serde_json is a data crate like serde: no I/O).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::job::Priority;

/// At most this many steps in a definition.
pub const MAX_STEPS: usize = 100;
/// A fan-out step runs at most this many instances (a longer list fails the step).
pub const MAX_FAN_OUT: usize = 1000;
/// Attempts a step may be given at most.
pub const MAX_ATTEMPTS: i32 = 25;
/// Longest per-attempt time limit of a step.
pub const MAX_TIMEOUT_SECS: i32 = 86_400;

/// What happens to the run when a step fails (after its last attempt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// The run fails: every step depending on this one (transitively) is skipped; branches
    /// that do not depend on it finish; then the run ends `failed`.
    #[default]
    Fail,
    /// Dependents run and see the failure (`steps.<id>.status`/`.error`); the run still
    /// ends `failed`.
    Continue,
    /// As if it had succeeded with a `null` output: dependents run, the run can succeed.
    Ignore,
}

/// One step of a definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepDef {
    /// Unique within the definition: `[a-z0-9_]{1,64}`, used in references.
    pub id: String,
    /// The node: a registered job kind (`GET /flows/nodes`).
    pub node: String,
    /// The node's input: constant JSON with `{"$ref": …}` references.
    #[serde(default)]
    pub input: Value,
    /// Steps that must end before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Fan-out: a reference path to a list (`steps.<id>.output.items`, `input.ids`); the
    /// step runs once per element, which `item` refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Queue of its jobs (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Priority of its jobs (default `normal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Attempts before the step fails (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<i32>,
    /// Per-attempt time limit in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<i32>,
    /// What a failure does to the run (default `fail`).
    #[serde(default)]
    pub on_failure: FailurePolicy,
}

impl StepDef {
    /// Queue of the step's jobs.
    pub fn queue(&self) -> &str {
        self.queue.as_deref().unwrap_or("default")
    }
    /// Attempts allowed.
    pub fn max_attempts(&self) -> i32 {
        self.max_attempts.unwrap_or(3)
    }
    /// Per-attempt limit.
    pub fn timeout_secs(&self) -> i32 {
        self.timeout_secs.unwrap_or(300)
    }
}

/// A cron schedule of a flow: `cron` (5 fields, or 6 with seconds) read in `timeZone`
/// (default: the campus's), starting a run with `input` at each tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleDef {
    /// Cron expression.
    pub cron: String,
    /// IANA time zone; default the campus's `time_zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The run's input.
    #[serde(default = "empty_object")]
    pub input: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A flow definition (one version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Definition {
    /// The DAG.
    pub steps: Vec<StepDef>,
    /// Cron schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleDef>,
}

/// Invalid fields: (JSON path, message).
pub type FieldErrors = Vec<(String, String)>;

/// A parsed reference path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefPath {
    /// `input…`
    Input(Vec<String>),
    /// `steps.<id>.output…`
    Output(String, Vec<String>),
    /// `steps.<id>.error`
    Error(String),
    /// `steps.<id>.status`
    Status(String),
    /// `item…`
    Item(Vec<String>),
    /// `run.id`
    RunId,
    /// `run.campusId`
    RunCampus,
}

impl RefPath {
    /// Parses `input.a`, `steps.x.output.y`, `item`, `run.id`, …
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("`{s}`: empty path segment"));
        }
        let rest = |from: usize| parts[from..].iter().map(|p| (*p).to_owned()).collect();
        match parts.as_slice() {
            ["input", ..] => Ok(Self::Input(rest(1))),
            ["item", ..] => Ok(Self::Item(rest(1))),
            ["run", "id"] => Ok(Self::RunId),
            ["run", "campusId"] => Ok(Self::RunCampus),
            ["steps", id, "output", ..] => Ok(Self::Output((*id).to_owned(), rest(3))),
            ["steps", id, "error"] => Ok(Self::Error((*id).to_owned())),
            ["steps", id, "status"] => Ok(Self::Status((*id).to_owned())),
            _ => Err(format!(
                "`{s}`: a reference is input[.path], steps.<id>.output[.path], steps.<id>.error, \
                 steps.<id>.status, item[.path], run.id or run.campusId"
            )),
        }
    }

    /// The step it reads, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::Output(s, _) | Self::Error(s) | Self::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// The `$ref` path of a reference object (`{"$ref": "…"}`, nothing else in it).
pub fn as_ref(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("$ref"),
        _ => None,
    }
}

/// Every reference in a template, with its JSON path under `base`.
pub fn references(template: &Value, base: &str, out: &mut Vec<(String, Value)>) {
    if let Some(r) = as_ref(template) {
        out.push((base.to_owned(), r.clone()));
        return;
    }
    match template {
        Value::Object(m) => {
            for (k, v) in m {
                references(v, &format!("{base}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                references(v, &format!("{base}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn valid_step_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Definition {
    /// Parses a definition, with the JSON path of the first shape error.
    pub fn parse(v: &Value, base: &str) -> Result<Self, FieldErrors> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                base.to_owned()
            } else {
                format!("{base}.{path}")
            };
            vec![(path, e.inner().to_string())]
        })
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Direct dependents of each step.
    pub fn dependents(&self) -> HashMap<&str, Vec<&str>> {
        let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
        for s in &self.steps {
            out.entry(s.id.as_str()).or_default();
            for d in &s.depends_on {
                out.entry(d.as_str()).or_default().push(s.id.as_str());
            }
        }
        out
    }

    /// Every step reachable from `id` through dependents (not `id` itself).
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        let deps = self.dependents();
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&str> = deps.get(id).cloned().unwrap_or_default().into();
        while let Some(s) = queue.pop_front() {
            if seen.insert(s.to_owned())
                && let Some(next) = deps.get(s)
            {
                queue.extend(next.iter().copied());
            }
        }
        seen
    }

    /// Every step `id` depends on, transitively.
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([id]);
        while let Some(s) = queue.pop_front() {
            if let Some(step) = self.step(s) {
                for d in &step.depends_on {
                    if seen.insert(d.clone()) {
                        queue.push_back(d);
                    }
                }
            }
        }
        seen
    }

    /// Validates the graph and every step against the node catalog: `input_schema(node)` is
    /// the JSON Schema of the node's input, None for an unknown node. Paths start at `base`.
    pub fn validate(
        &self,
        base: &str,
        input_schema: &dyn Fn(&str) -> Option<Value>,
    ) -> Result<(), FieldErrors> {
        let mut errors = FieldErrors::new();
        let at = |i: usize, field: &str| format!("{base}.steps[{i}].{field}");
        if self.steps.is_empty() {
            errors.push((
                format!("{base}.steps"),
                "a flow needs at least one step".into(),
            ));
        }
        if self.steps.len() > MAX_STEPS {
            errors.push((
                format!("{base}.steps"),
                format!("at most {MAX_STEPS} steps"),
            ));
        }
        let mut ids = HashSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            if !valid_step_id(&s.id) {
                errors.push((at(i, "id"), "1 to 64 characters of a-z, 0-9 and _".into()));
            } else if !ids.insert(s.id.as_str()) {
                errors.push((at(i, "id"), format!("duplicate step id `{}`", s.id)));
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            let mut seen = HashSet::new();
            for (j, d) in s.depends_on.iter().enumerate() {
                let path = at(i, &format!("dependsOn[{j}]"));
                if d == &s.id {
                    errors.push((path, "a step cannot depend on itself".into()));
                } else if !ids.contains(d.as_str()) {
                    errors.push((path, format!("no step `{d}` in this flow")));
                } else if !seen.insert(d) {
                    errors.push((path, format!("`{d}` is listed twice")));
                }
            }
            if let Some(q) = &s.queue
                && (q.is_empty() || q.len() > 64)
            {
                errors.push((at(i, "queue"), "1 to 64 characters".into()));
            }
            if let Some(a) = s.max_attempts
                && !(1..=MAX_ATTEMPTS).contains(&a)
            {
                errors.push((at(i, "maxAttempts"), format!("1 to {MAX_ATTEMPTS}")));
            }
            if let Some(t) = s.timeout_secs
                && !(1..=MAX_TIMEOUT_SECS).contains(&t)
            {
                errors.push((at(i, "timeoutSecs"), format!("1 to {MAX_TIMEOUT_SECS}")));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(cycle) = self.find_cycle() {
            let i = self
                .steps
                .iter()
                .position(|s| Some(&s.id) == cycle.first())
                .unwrap_or(0);
            errors.push((at(i, "dependsOn"), format!("cycle: {}", cycle.join(" → "))));
            return Err(errors);
        }
        for (i, s) in self.steps.iter().enumerate() {
            let ancestors = self.ancestors(&s.id);
            let check = |path: String, r: &Value, errors: &mut FieldErrors| {
                let Some(text) = r.as_str() else {
                    errors.push((path, "`$ref` must be a string".into()));
                    return;
                };
                match RefPath::parse(text) {
                    Err(e) => errors.push((path, e)),
                    Ok(RefPath::Item(_)) if s.for_each.is_none() => errors.push((
                        path,
                        "`item` is only defined in a step with `forEach`".into(),
                    )),
                    Ok(p) => {
                        if let Some(step) = p.step()
                            && !ancestors.contains(step)
                        {
                            let why = if ids.contains(step) {
                                format!(
                                    "step `{step}` is not among this step's dependencies (dependsOn, transitively)"
                                )
                            } else {
                                format!("no step `{step}` in this flow")
                            };
                            errors.push((path, why));
                        }
                    }
                }
            };
            let mut refs = Vec::new();
            references(&s.input, &at(i, "input"), &mut refs);
            for (path, r) in &refs {
                check(format!("{path}.$ref"), r, &mut errors);
            }
            if let Some(fe) = &s.for_each {
                match RefPath::parse(fe) {
                    Ok(RefPath::Item(_)) => errors.push((
                        at(i, "forEach"),
                        "`forEach` reads a parent's output or the run input".into(),
                    )),
                    Ok(RefPath::Input(_) | RefPath::Output(..)) => {
                        check(at(i, "forEach"), &Value::String(fe.clone()), &mut errors);
                    }
                    Ok(_) => errors.push((at(i, "forEach"), "`forEach` must name a list".into())),
                    Err(e) => errors.push((at(i, "forEach"), e)),
                }
            }
            match input_schema(&s.node) {
                None => errors.push((
                    at(i, "node"),
                    format!("unknown node `{}` (see GET /flows/nodes)", s.node),
                )),
                Some(schema) => {
                    let input = if s.input.is_null() {
                        empty_object()
                    } else {
                        s.input.clone()
                    };
                    schema::validate(&schema, &input, &at(i, "input"), &mut errors);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// A cycle as a list of step ids (first repeated at the end), if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        // Colours: 0 new, 1 on the stack, 2 done. Iterative DFS over `dependsOn`.
        let mut colour: HashMap<&str, u8> = HashMap::new();
        for start in &self.steps {
            if colour.get(start.id.as_str()).copied().unwrap_or(0) != 0 {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start.id.as_str(), 0)];
            colour.insert(start.id.as_str(), 1);
            while let Some((node, next)) = stack.last_mut() {
                let deps = self
                    .step(node)
                    .map(|s| s.depends_on.as_slice())
                    .unwrap_or(&[]);
                if let Some(d) = deps.get(*next) {
                    *next += 1;
                    match colour.get(d.as_str()).copied().unwrap_or(0) {
                        0 => {
                            colour.insert(d.as_str(), 1);
                            stack.push((d.as_str(), 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(n, _)| *n == d.as_str())?;
                            let mut cycle: Vec<String> =
                                stack[from..].iter().map(|(n, _)| (*n).to_owned()).collect();
                            cycle.push(d.clone());
                            return Some(cycle);
                        }
                        _ => {}
                    }
                } else {
                    colour.insert(node, 2);
                    stack.pop();
                }
            }
        }
        None
    }
}

/// What a parent ended with, as references see it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// `succeeded`, `failed`, …
    pub status: String,
    /// Output (for a fan-out step: the list of instance outputs).
    pub output: Value,
    /// Error message of a failure.
    pub error: Option<String>,
}

/// What references resolve against.
pub struct RefContext<'a> {
    /// The run's id.
    pub run_id: String,
    /// The run's campus.
    pub campus_id: String,
    /// The run's input.
    pub input: &'a Value,
    /// Results of the steps referenced.
    pub steps: &'a BTreeMap<String, StepResult>,
    /// The fan-out element.
    pub item: Option<&'a Value>,
}

fn at_path(mut v: &Value, path: &[String]) -> Value {
    for p in path {
        let next = match v {
            Value::Object(m) => m.get(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return Value::Null,
        }
    }
    v.clone()
}

/// The value a reference path points at.
pub fn lookup(path: &RefPath, cx: &RefContext<'_>) -> Value {
    let step = |id: &str| cx.steps.get(id);
    match path {
        RefPath::Input(p) => at_path(cx.input, p),
        RefPath::Item(p) => cx.item.map_or(Value::Null, |i| at_path(i, p)),
        RefPath::RunId => Value::String(cx.run_id.clone()),
        RefPath::RunCampus => Value::String(cx.campus_id.clone()),
        RefPath::Output(s, p) => step(s).map_or(Value::Null, |r| at_path(&r.output, p)),
        RefPath::Error(s) => step(s)
            .and_then(|r| r.error.clone())
            .map_or(Value::Null, Value::String),
        RefPath::Status(s) => step(s).map_or(Value::Null, |r| Value::String(r.status.clone())),
    }
}

/// Replaces every reference in `template` with its value.
pub fn resolve(template: &Value, cx: &RefContext<'_>) -> Value {
    if let Some(r) = as_ref(template) {
        return r
            .as_str()
            .and_then(|s| RefPath::parse(s).ok())
            .map_or(Value::Null, |p| lookup(&p, cx));
    }
    match template {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), resolve(v, cx))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| resolve(v, cx)).collect()),
        Value::Null => empty_object(),
        other => other.clone(),
    }
}

/// The steps whose results a step's references read (input and `forEach`).
pub fn referenced_steps(step: &StepDef) -> BTreeSet<String> {
    let mut refs = Vec::new();
    references(&step.input, "", &mut refs);
    let mut out: BTreeSet<String> = refs
        .iter()
        .filter_map(|(_, r)| r.as_str().and_then(|s| RefPath::parse(s).ok()))
        .filter_map(|p| p.step().map(str::to_owned))
        .collect();
    if let Some(p) = step
        .for_each
        .as_deref()
        .and_then(|s| RefPath::parse(s).ok())
        && let Some(s) = p.step()
    {
        out.insert(s.to_owned());
    }
    out
}

/// A run's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Steps are waiting or running.
    Running,
    /// Every step succeeded (or failed with `ignore`).
    Succeeded,
    /// A step failed with `fail` or `continue`; everything has settled.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

impl RunStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// Stored step states. `running` is not stored: it is the step's job being claimed, read
/// from the job when shown.
pub mod step_state {
    /// Dependencies not finished yet.
    pub const WAITING: &str = "waiting";
    /// Its job (or its instances' jobs) is enqueued or running.
    pub const QUEUED: &str = "queued";
    /// Done.
    pub const SUCCEEDED: &str = "succeeded";
    /// Out of attempts or failed permanently.
    pub const FAILED: &str = "failed";
    /// Never ran: an ancestor failed with policy `fail`.
    pub const SKIPPED: &str = "skipped";
    /// The run was cancelled.
    pub const CANCELLED: &str = "cancelled";

    /// True for a state the step does not leave by itself.
    pub fn is_terminal(s: &str) -> bool {
        matches!(s, SUCCEEDED | FAILED | SKIPPED | CANCELLED)
    }
}

/// A small JSON Schema validator: the subset `schemars` emits for serde types (`type`,
/// `enum`, `const`, `properties`, `required`, `additionalProperties`, `items`, `anyOf`,
/// `oneOf`, `allOf`, local `$ref` to `$defs`/`definitions`, numeric and length bounds).
/// A reference object (`{"$ref": …}` in a flow input) is accepted wherever it appears: its
/// value is only known when the step runs, where the node's own deserialisation checks it.
pub mod schema {
    use serde_json::Value;

    use super::FieldErrors;

    /// Validates `value` against `schema`, appending (path, message) errors.
    pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut FieldErrors) {
        check(schema, schema, value, path, errors, 0);
    }

    fn type_name(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    fn type_ok(want: &str, v: &Value) -> bool {
        let got = type_name(v);
        got == want
            || (want == "number" && got == "integer")
            || (want == "integer" && v.as_f64().is_some_and(|f| f.fract() == 0.0))
    }

    fn resolve_ref<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
        let pointer = r.strip_prefix('#')?;
        root.pointer(pointer)
    }

    fn is_valid(root: &Value, schema: &Value, value: &Value, depth: u32) -> bool {
        let mut e = FieldErrors::new();
        check(root, schema, value, "", &mut e, depth);
        e.is_empty()
    }

    fn check(
        root: &Value,
        schema: &Value,
        value: &Value,
        path: &str,
        errors: &mut FieldErrors,
        depth: u32,
    ) {
        if depth > 64 || super::as_ref(value).is_some() {
            return;
        }
        let s = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push((path.to_owned(), "no value is allowed here".into()));
                return;
            }
            Value::Object(m) => m,
            _ => return,
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str)
            && let Some(target) = resolve_ref(root, r)
        {
            check(root, target, value, path, errors, depth + 1);
        }
        if let Some(t) = s.get("type") {
            let ok = match t {
                Value::String(t) => type_ok(t, value),
                Value::Array(ts) => ts
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|t| type_ok(t, value)),
                _ => true,
            };
            if !ok {
                let want = match t {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                errors.push((
                    path.to_owned(),
                    format!("expected {want}, got {}", type_name(value)),
                ));
                return;
            }
        }
        if let Some(Value::Array(allowed)) = s.get("enum")
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push((
                path.to_owned(),
                format!("must be one of {}", list.join(", ")),
            ));
        }
        if let Some(c) = s.get("const")
            && c != value
        {
            errors.push((path.to_owned(), format!("must be {c}")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = s.get(key)
                && !options.iter().any(|o| is_valid(root, o, value, depth + 1))
            {
                // Report the errors of the closest option (fewest errors) for a useful path.
                let best = options
                    .iter()
                    .map(|o| {
                        let mut e = FieldErrors::new();
                        check(root, o, value, path, &mut e, depth + 1);
                        e
                    })
                    .min_by_key(Vec::len)
                    .unwrap_or_default();
                if best.is_empty() {
                    errors.push((path.to_owned(), "matches none of the allowed shapes".into()));
                } else {
                    errors.extend(best);
                }
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for sub in all {
                check(root, sub, value, path, errors, depth + 1);
            }
        }
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && value.as_f64().is_some_and(|v| v < min)
        {
            errors.push((path.to_owned(), format!("must be ≥ {min}")));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && value.as_f64().is_some_and(|v| v > max)
        {
            errors.push((path.to_owned(), format!("must be ≤ {max}")));
        }
        if let Value::String(text) = value {
            let n = text.chars().count();
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| u64::try_from(n).unwrap_or(u64::MAX) < m)
            {
                errors.push((path.to_owned(), "too short".into()));
            }
            if s.get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| u64::try_from(n).unwrap_or(u64::MAX) > m)
            {
                errors.push((path.to_owned(), "too long".into()));
            }
        }
        if let Value::Array(items) = value {
            if let Some(item_schema) = s.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(
                        root,
                        item_schema,
                        v,
                        &format!("{path}[{i}]"),
                        errors,
                        depth + 1,
                    );
                }
            }
            let n = u64::try_from(items.len()).unwrap_or(u64::MAX);
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
            {
                errors.push((path.to_owned(), "too few items".into()));
            }
            if s.get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n > m)
            {
                errors.push((path.to_owned(), "too many items".into()));
            }
        }
        if let Value::Object(fields) = value {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(required)) = s.get("required") {
                for r in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(r) {
                        errors.push((format!("{path}.{r}"), "is required".into()));
                    }
                }
            }
            for (k, v) in fields {
                let sub = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => check(root, ps, v, &sub, errors, depth + 1),
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push((sub, "unknown field".into()));
                        }
                        Some(extra @ Value::Object(_)) => {
                            check(root, extra, v, &sub, errors, depth + 1);
                        }
                        _ => {}
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schemas(node: &str) -> Option<Value> {
        match node {
            "noop" => Some(json!({"type": "object", "properties": {
                "sleepMs": {"type": "integer", "minimum": 0},
                "tag": {"type": ["string", "null"]}
            }, "additionalProperties": false})),
            "report" => Some(json!({"type": "object", "required": ["vendorId"],
                "properties": {"vendorId": {"type": "string"}, "format": {"$ref": "#/$defs/Format"}},
                "$defs": {"Format": {"type": "string", "enum": ["csv", "json"]}}})),
            _ => None,
        }
    }

    fn def(v: Value) -> Definition {
        Definition::parse(&v, "definition").unwrap()
    }

    fn errors(v: Value) -> Vec<String> {
        match def(v).validate("definition", &schemas) {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|(p, m)| format!("{p}: {m}")).collect(),
        }
    }

    #[test]
    fn a_diamond_is_valid_and_its_graph_answers() {
        let d = def(json!({"steps": [
            {"id": "a", "node": "noop"},
            {"id": "b", "node": "noop", "dependsOn": ["a"], "input": {"tag": {"$ref": "steps.a.output.x"}}},
            {"id": "c", "node": "noop", "dependsOn": ["a"]},
            {"id": "d", "node": "noop", "dependsOn": ["b", "c"], "input": {"tag": {"$ref": "steps.a.error"}}}
        ]}));
        assert_eq!(d.validate("definition", &schemas), Ok(()));
        assert_eq!(
            d.descendants("a").into_iter().collect::<Vec<_>>(),
            ["b", "c", "d"]
        );
        assert_eq!(
            d.ancestors("d").into_iter().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            referenced_steps(d.step("d").unwrap())
                .into_iter()
                .collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn bad_definitions_name_their_paths() {
        let e = errors(json!({"steps": [
            {"id": "a", "node": "noop", "dependsOn": ["c"]},
            {"id": "b", "node": "noop", "dependsOn": ["a"]},
            {"id": "c", "node": "noop", "dependsOn": ["b"]}
        ]}));
        assert_eq!(e, ["definition.steps[0].dependsOn: cycle: a → c → b → a"]);

        let e = errors(json!({"steps": [
            {"id": "a", "node": "nope"},
            {"id": "b", "node": "noop", "dependsOn": ["zz"]},
            {"id": "A", "node": "noop"},
            {"id": "a", "node": "noop"}
        ]}));
        assert!(
            e.contains(&"definition.steps[1].dependsOn[0]: no step `zz` in this flow".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(&"definition.steps[2].id: 1 to 64 characters of a-z, 0-9 and _".to_owned()),
            "{e:?}"
        );
        assert!(
            e.contains(&"definition.steps[3].id: duplicate step id `a`".to_owned()),
            "{e:?}"
        );

        let e = errors(json!({"steps": [
            {"id": "a", "node": "nope"},
            {"id": "b", "node": "noop", "input": {"sleepMs": "x", "extra": 1, "tag": {"$ref": "steps.a.output"}}},
            {"id": "c", "node": "report", "dependsOn": ["b"], "input": {"format": "xml", "x": {"$ref": "item"}}}
        ]}));
        assert_eq!(
            e,
            [
                "definition.steps[0].node: unknown node `nope` (see GET /flows/nodes)",
                "definition.steps[1].input.tag.$ref: step `a` is not among this step's dependencies (dependsOn, transitively)",
                "definition.steps[1].input.extra: unknown field",
                "definition.steps[1].input.sleepMs: expected integer, got string",
                "definition.steps[2].input.x.$ref: `item` is only defined in a step with `forEach`",
                "definition.steps[2].input.vendorId: is required",
                "definition.steps[2].input.format: must be one of \"csv\", \"json\"",
            ]
        );
        let shape = Definition::parse(&json!({"steps": [{"id": "a", "node": 3}]}), "definition")
            .unwrap_err();
        assert_eq!(shape[0].0, "definition.steps[0].node");
    }

    #[test]
    fn references_resolve_against_run_parents_and_item() {
        let mut steps = BTreeMap::new();
        steps.insert(
            "a".to_owned(),
            StepResult {
                status: "succeeded".into(),
                output: json!({"items": [{"v": 1}, {"v": 2}]}),
                error: None,
            },
        );
        steps.insert(
            "b".to_owned(),
            StepResult {
                status: "failed".into(),
                output: Value::Null,
                error: Some("boom".into()),
            },
        );
        let input = json!({"who": "x"});
        let item = json!({"v": 7});
        let cx = RefContext {
            run_id: "r".into(),
            campus_id: "c".into(),
            input: &input,
            steps: &steps,
            item: Some(&item),
        };
        let t = json!({"a": {"$ref": "steps.a.output.items.1.v"}, "who": {"$ref": "input.who"},
            "e": {"$ref": "steps.b.error"}, "s": {"$ref": "steps.b.status"}, "i": {"$ref": "item.v"},
            "list": [{"$ref": "run.id"}, 3], "missing": {"$ref": "steps.a.output.nope"}});
        assert_eq!(
            resolve(&t, &cx),
            json!({"a": 2, "who": "x", "e": "boom", "s": "failed", "i": 7, "list": ["r", 3], "missing": null})
        );
    }
}
