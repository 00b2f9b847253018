//! The HTTP routes: request validation, the token check, and the JSON each route answers.
//! Every error is `{"error": {"kind": ..., "message": ...}}` with a fitting status code.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use procpool::manager::{Cached, JsonGraph, PendingTask};
use procpool::{MetaTask, RetryPolicy, Task, TaskError, TaskManager};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::events::{self, WireEvent};
use crate::metrics::{self, PoolGauges};
use crate::report::Status;
use crate::shared::{Cancel, Shared};
use crate::table::{Entry, Lookup};

/// Longest channel name and cache key accepted, in bytes.
const MAX_CHANNEL: usize = 256;
const MAX_CACHE_KEY: usize = 1024;
/// Most channels one submission may name in `notify_channels`.
const MAX_NOTIFY_CHANNELS: usize = 64;

type Ctx = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let v1 = Router::new()
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/{id}", get(read).delete(cancel))
        .route("/v1/events", get(subscribe))
        .route_layer(middleware::from_fn_with_state(shared.clone(), authorize));
    Router::new()
        .merge(v1)
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(DefaultBodyLimit::max(shared.settings.max_body))
        .with_state(shared)
}

/// An error answer.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"kind": self.kind, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// With a token set, a `/v1` request needs `Authorization: Bearer <token>`.
async fn authorize(State(shared): Ctx, request: Request, next: Next) -> Response {
    if let Some(token) = &shared.settings.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, given)| given.trim());
        // Constant time, so the answer's timing does not tell how much of a guess matched
        // (only whether its length did).
        let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.as_bytes())));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs `Authorization: Bearer <token>` (the --token it was started with)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The body of `POST /v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    task: String,
    #[serde(default)]
    args: Vec<Value>,
    /// Arguments by parameter name, after those in `args`.
    #[serde(default)]
    kwargs: Map<String, Value>,
    cache_key: Option<String>,
    channel: Option<String>,
    /// Channels that also get the task's events, beside `channel`.
    #[serde(default)]
    notify_channels: Vec<String>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
}

/// A submission that passed every check.
struct Valid {
    task: String,
    args: Value,
    graph: Option<JsonGraph>,
    cache_key: Option<String>,
    /// `channel` and `notify_channels`, each once.
    channels: Vec<String>,
    timeout: Option<Duration>,
    retries: Option<u32>,
}

fn validate(shared: &Shared, body: &[u8]) -> Result<Valid, ApiError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "a task request is a JSON object: {\"task\": NAME, \"args\": [...]}",
        ));
    }
    let body: SubmitBody = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("invalid task request: {e}")))?;
    if body.task.is_empty() {
        return Err(ApiError::bad_request("\"task\" is empty"));
    }
    let limit = |name: &str, value: &Option<String>, max: usize| match value {
        Some(v) if v.is_empty() => Err(ApiError::bad_request(format!("\"{name}\" is empty"))),
        Some(v) if v.len() > max => Err(ApiError::bad_request(format!(
            "\"{name}\" is longer than {max} bytes"
        ))),
        _ => Ok(()),
    };
    limit("cache_key", &body.cache_key, MAX_CACHE_KEY)?;
    limit("channel", &body.channel, MAX_CHANNEL)?;
    if body.notify_channels.len() > MAX_NOTIFY_CHANNELS {
        return Err(ApiError::bad_request(format!(
            "\"notify_channels\" names more than {MAX_NOTIFY_CHANNELS} channels"
        )));
    }
    for c in &body.notify_channels {
        limit("notify_channels", &Some(c.clone()), MAX_CHANNEL)?;
    }
    if body.timeout_ms == Some(0) {
        return Err(ApiError::bad_request(
            "\"timeout_ms\" must be a whole number of milliseconds above 0",
        ));
    }
    let unprocessable = |kind: &'static str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, kind, message)
    };
    let pool = shared.manager.pool();
    let served = pool.tasks();
    // A remote pool with no agent up yet: the task waits for one, which decides on its
    // name (nested tasks are matched when it comes).
    let no_agent = served.is_empty() && pool.is_remote();
    // The task's own keyword arguments (nested tasks among them are plain values here).
    let args = if body.kwargs.is_empty() {
        body.args
    } else if no_agent {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_agent",
            "no agent is up to match keyword arguments against; retry, or pass args",
        ));
    } else {
        pool.bind_json(&body.task, body.args, body.kwargs)
            .map_err(|e| match e {
                TaskError::UnknownTask { name } => unprocessable(
                    "unknown_task",
                    format!("the workers serve no task named {name:?}"),
                ),
                other => unprocessable(other.kind(), other.to_string()),
            })?
    };
    let args = Value::Array(args);
    let graph = if JsonGraph::contains_tasks(&args) {
        let graph = JsonGraph::parse(args.clone())
            .map_err(|e| ApiError::bad_request(format!("in \"args\": {e}")))?;
        Some(graph)
    } else {
        None
    };
    let names = graph.iter().flat_map(|g| g.task_names());
    if let Some(unknown) = std::iter::once(body.task.as_str())
        .chain(names)
        .find(|name| !no_agent && !served.iter().any(|t| t.name == *name))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_task",
            format!("the workers serve no task named {unknown:?}"),
        ));
    }
    // Nested tasks' keyword arguments, all matched before anything runs.
    let graph = graph
        .map(|g| if no_agent { Ok(g) } else { g.bind(&served) })
        .transpose()
        .map_err(|e| {
            let place = match (e.failed_name(), e.path()) {
                (Some(name), Some(path)) => format!("nested task {name:?} at {path}: "),
                _ => String::new(),
            };
            let detail = e
                .task_error()
                .map_or_else(|| e.to_string(), ToString::to_string);
            unprocessable(e.kind(), format!("{place}{detail}"))
        })?;
    let mut channels: Vec<String> = Vec::new();
    for c in body.channel.into_iter().chain(body.notify_channels) {
        if !channels.contains(&c) {
            channels.push(c);
        }
    }
    Ok(Valid {
        task: body.task,
        args,
        graph,
        cache_key: body.cache_key,
        channels,
        timeout: body.timeout_ms.map(Duration::from_millis),
        retries: body.retries,
    })
}

/// Starts the run of a submission (or joins the running one with its cache key).
fn start(manager: &TaskManager, v: Valid) -> PendingTask {
    let (task, timeout, retries) = (v.task.clone(), v.timeout, v.retries);
    // The task's own call; its `timeout_ms` and `retries` apply to it, not to the nested
    // tasks (which follow the pool's).
    let call = move |args: Value| {
        let mut call = Task::json(task, args);
        if let Some(d) = timeout {
            call = call.timeout(d);
        }
        if let Some(n) = retries {
            call = call.retry(RetryPolicy::new(n));
        }
        call
    };
    let channel = Some(events::INTERNAL_CHANNEL);
    match (v.graph, v.cache_key) {
        (None, None) => manager.run_task(call(v.args), channel),
        (None, Some(key)) => manager.run_task(Cached::new(key, call(v.args)), channel),
        (Some(graph), key) => {
            // Nested tasks first, all at once; then the call with their results in place.
            let run = MetaTask::process_as_task(graph, call).with_name(v.task);
            match key {
                None => manager.run_task(run, channel),
                Some(key) => manager.run_task(Cached::new(key, run), channel),
            }
        }
    }
}

async fn submit(State(shared): Ctx, body: Result<Bytes, BytesRejection>) -> Response {
    match try_submit(&shared, body) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn try_submit(
    shared: &Arc<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(e.status(), kind, e.body_text())
    })?;
    let valid = validate(shared, &body)?;
    if !shared.accepting.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let now = Instant::now();
    let mut table = shared.table();
    table.sweep(now);
    if table.active() >= shared.settings.max_active {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tasks",
            format!(
                "{} tasks are already accepted and not finished (--max-active)",
                table.active()
            ),
        ));
    }
    let channels = valid.channels.clone();
    let (task, cache_key) = (valid.task.clone(), valid.cache_key.clone());
    // Under the table's lock: the forwarder cannot see an event of this task before its
    // entry exists and its `started` went out.
    let pending = start(&shared.manager, valid);
    let id = pending.id();
    let joined = match table.entry(id) {
        Some(entry) => {
            // A consumer joining by cache key adds its channels to the running task.
            for c in &channels {
                if !entry.channels.contains(c) {
                    entry.channels.push(c.clone());
                }
            }
            true
        }
        None => {
            table.insert(
                id,
                Entry {
                    task: task.clone(),
                    cache_key,
                    channels: channels.clone(),
                    pending: Some(pending.clone()),
                    accepted: now,
                    started: false,
                    progress: None,
                    end: None,
                },
            );
            let watcher = shared.clone();
            tokio::spawn(async move {
                let outcome = pending.value().await;
                watcher.finish(id, &outcome, Instant::now());
                // The table keeps the result; the manager's copy is not needed.
                let _ = watcher.manager.get_result(id).await;
            });
            false
        }
    };
    if !channels.is_empty() {
        let task = table.entry(id).map_or(task, |e| e.task.clone());
        events::emit(
            shared,
            &channels,
            &WireEvent::Started {
                task_id: id,
                task: &task,
            },
        );
    }
    drop(table);
    shared.metrics.submitted(joined);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"task_id": id, "deduplicated": joined})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tasks/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The JSON of a task for `GET` (and `DELETE`) answers; refreshes its `started` flag.
fn describe(shared: &Shared, id: Uuid, entry: &mut Entry) -> Value {
    let mut pids = Vec::new();
    let status = match &entry.end {
        Some(end) => end.status,
        None => {
            pids = shared.manager.worker_pids(id).unwrap_or_default();
            entry.started |= !pids.is_empty();
            if entry.started {
                Status::Running
            } else {
                Status::Pending
            }
        }
    };
    let end = entry.end.as_ref();
    json!({
        "task_id": id,
        "task": entry.task,
        "cache_key": entry.cache_key,
        "status": status,
        "progress": entry.progress.as_ref().map(|p| p.0),
        "progress_message": entry.progress.as_ref().map(|p| p.1.as_str()),
        "worker_pids": pids,
        "result": end.and_then(|e| e.result.as_ref()),
        "error": end.and_then(|e| e.error.as_ref()),
    })
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no task has id {id:?}"),
    )
}

fn expired(shared: &Shared, id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "expired",
        format!(
            "task {id} ended more than {:?} ago; its result is gone",
            shared.settings.result_ttl
        ),
    )
}

async fn read(State(shared): Ctx, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let uuid = parse_id(&id)?;
    let mut table = shared.table();
    match table.lookup(uuid, Instant::now()) {
        Lookup::Known(entry) => Ok(Json(describe(&shared, uuid, entry))),
        Lookup::Expired => Err(expired(&shared, uuid)),
        Lookup::Unknown => Err(not_found(&id)),
    }
}

async fn cancel(State(shared): Ctx, Path(id): Path<String>) -> Result<Response, ApiError> {
    let uuid = parse_id(&id)?;
    let cancelled = match shared.cancel(uuid).await {
        Cancel::Cancelled => true,
        Cancel::AlreadyFinished => false,
        Cancel::Expired => return Err(expired(&shared, uuid)),
        Cancel::Unknown => return Err(not_found(&id)),
    };
    let mut table = shared.table();
    match table.entry(uuid) {
        Some(entry) if cancelled => Ok(Json(describe(&shared, uuid, entry)).into_response()),
        Some(entry) => Ok(already_finished(&shared, uuid, entry)),
        None => Err(expired(&shared, uuid)),
    }
}

/// `409`: the error, and the task as it ended.
fn already_finished(shared: &Shared, id: Uuid, entry: &mut Entry) -> Response {
    let task = describe(shared, id, entry);
    let message = format!(
        "task {id} already finished ({})",
        task["status"].as_str().unwrap_or("?")
    );
    let body = json!({"error": {"kind": "already_finished", "message": message}, "task": task});
    (StatusCode::CONFLICT, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    channel: Option<String>,
}

async fn subscribe(
    State(shared): Ctx,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(c) = &query.channel
        && (c.is_empty() || c.len() > MAX_CHANNEL)
    {
        return Err(ApiError::bad_request(format!(
            "\"channel\" must be 1 to {MAX_CHANNEL} bytes"
        )));
    }
    if *shared.closing.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    // Subscribed before the upgrade answer goes out: once the client has its socket,
    // nothing published afterwards is missed.
    let rx = shared.clients.subscribe(query.channel);
    let closing = shared.closing.subscribe();
    Ok(ws.on_upgrade(move |socket| events::stream(socket, rx, closing)))
}

async fn scrape(State(shared): Ctx) -> Response {
    let status = shared.manager.pool().status().await;
    let (mut pending, mut running) = (0, 0);
    {
        let mut table = shared.table();
        for (id, entry) in table.active_entries() {
            if !entry.started {
                let pids = shared.manager.worker_pids(*id).unwrap_or_default();
                entry.started = !pids.is_empty();
            }
            if entry.started {
                running += 1;
            } else {
                pending += 1;
            }
        }
    }
    let restarts = status.worker_starts.saturating_sub(shared.initial_starts);
    let text = shared.metrics.encode(PoolGauges {
        pending,
        running,
        status,
        restarts,
    });
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn healthz(State(shared): Ctx) -> Response {
    let status = shared.manager.pool().status().await;
    let body = json!({
        "workers": {"starting": status.starting, "idle": status.idle, "busy": status.busy},
        "queued": status.queued,
    });
    let (code, state, message) = match &status.unhealthy {
        _ if !shared.accepting.load(Ordering::SeqCst) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            Some("the server is shutting down".to_owned()),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            Some(why.clone()),
        ),
        None => (StatusCode::OK, "ok", None),
    };
    let mut body = body;
    body["status"] = json!(state);
    if let Some(m) = message {
        body["message"] = json!(m);
    }
    (code, Json(body)).into_response()
}
