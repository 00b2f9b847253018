//! [`JsonGraph`]: JSON arguments in which nested tasks may appear anywhere, as
//! `{"$task": NAME, "args": [...], "kwargs": {...}}` objects. This is the CLI's job format for nested tasks,
//! and the shape any JSON front end (the HTTP control plane) can hand to a MetaTask.

use futures::FutureExt as _;
use futures::future::{BoxFuture, Either, join_all};
use procpool_core::{Task, TaskError, TaskInfo};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::context::{InputContext, start_task, then_task};
use crate::errors::{JsonGraphError, MetaError};
use crate::inputs::Inputs;

/// The key that makes a JSON object a nested task.
const TASK_KEY: &str = "$task";
/// The nested task's positional arguments (optional; `[]` when absent).
const ARGS_KEY: &str = "args";
/// The nested task's keyword arguments (optional), by parameter name.
const KWARGS_KEY: &str = "kwargs";

/// A JSON value in which an object `{"$task": "square", "args": [3]}` anywhere (in
/// arrays, in objects, in another nested task's `args`) is a task. As [`Inputs`] it
/// resolves to the same JSON with every nested task replaced by its result: nested tasks
/// run concurrently, and a task whose `args` hold nested tasks runs once they are done.
///
/// A `$task` object has exactly the keys `$task` (a non-empty string, the registered
/// name) and optionally `args` (an array) and `kwargs` (an object: arguments by parameter
/// name, see [`Task::json_kwargs`]); anything else is a [`JsonGraphError`]. Keyword
/// arguments are matched to the parameters the pool's workers announce
/// ([`bind`](Self::bind)) before any task of the graph is queued.
///
/// ```
/// use procpool_manager::JsonGraph;
/// use serde_json::json;
///
/// let args = json!([[{"$task": "square", "args": [2]}, {"$task": "square", "args": [3]}]]);
/// let graph = JsonGraph::parse(args)?;
/// assert_eq!(graph.task_names(), ["square", "square"]);
/// # Ok::<(), procpool_manager::JsonGraphError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct JsonGraph(Node);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    /// A subtree without tasks, kept as it is.
    Plain(Value),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
    Task {
        name: String,
        args: Vec<Node>,
        /// Matched to parameters by [`JsonGraph::bind`], which leaves this empty.
        kwargs: Vec<(String, Node)>,
    },
}

impl JsonGraph {
    /// Parses `value`, finding its nested tasks.
    pub fn parse(value: Value) -> Result<JsonGraph, JsonGraphError> {
        parse(value, "$").map(JsonGraph)
    }

    /// Whether `value` holds a `$task` object anywhere (well formed or not): a quick scan
    /// that lets plain arguments skip [`parse`](Self::parse).
    pub fn contains_tasks(value: &Value) -> bool {
        match value {
            Value::Array(items) => items.iter().any(Self::contains_tasks),
            Value::Object(map) => {
                map.contains_key(TASK_KEY) || map.values().any(Self::contains_tasks)
            }
            _ => false,
        }
    }

    /// Names of the nested tasks, depth first (a task's nested arguments before it).
    pub fn task_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        collect_names(&self.0, &mut names);
        names
    }

    /// Matches the keyword arguments of every nested task to its parameters, as `tasks`
    /// (a pool's [`tasks`](procpool_core::Pool::tasks)) names them, so that the graph
    /// holds positional arguments only. Fails with [`MetaError::Task`] naming the nested
    /// task and its place, of kind `unknown_task` for a name that `tasks` lacks and
    /// `bad_args` for a missing, unknown or repeated argument (see
    /// [`bind_kwargs`](procpool_core::bind_kwargs)). Running the graph does this first,
    /// so a mistake anywhere in it fails the run before any of its tasks is queued.
    pub fn bind(self, tasks: &[TaskInfo]) -> Result<JsonGraph, MetaError> {
        bind(self.0, tasks, "$").map(JsonGraph)
    }
}

fn bind(node: Node, tasks: &[TaskInfo], path: &str) -> Result<Node, MetaError> {
    match node {
        Node::Plain(_) => Ok(node),
        Node::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, n)| bind(n, tasks, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Node::Array),
        Node::Object(fields) => fields
            .into_iter()
            .map(|(k, n)| {
                let at = format!("{path}[{k:?}]");
                bind(n, tasks, &at).map(|n| (k, n))
            })
            .collect::<Result<_, _>>()
            .map(Node::Object),
        Node::Task { name, args, kwargs } => {
            // The task never got an id: it fails before it is built.
            let fail = |source: TaskError| MetaError::Task {
                id: Uuid::new_v4(),
                name: name.clone(),
                path: path.to_owned(),
                source: Box::new(source),
            };
            let Some(info) = tasks.iter().find(|t| t.name == name) else {
                return Err(fail(TaskError::UnknownTask { name: name.clone() }));
            };
            let args = args
                .into_iter()
                .enumerate()
                .map(|(i, n)| bind(n, tasks, &format!("{path}.{ARGS_KEY}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if kwargs.is_empty() {
                return Ok(Node::Task { name, args, kwargs });
            }
            let kwargs = kwargs
                .into_iter()
                .map(|(k, n)| {
                    let at = format!("{path}.{KWARGS_KEY}[{k:?}]");
                    bind(n, tasks, &at).map(|n| (k, n))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let args = procpool_core::bind_kwargs(info, args, kwargs, || Node::Plain(Value::Null))
                .map_err(fail)?;
            Ok(Node::Task {
                name,
                args,
                kwargs: Vec::new(),
            })
        }
    }
}

fn collect_names<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
    match node {
        Node::Plain(_) => {}
        Node::Array(items) => items.iter().for_each(|n| collect_names(n, out)),
        Node::Object(fields) => fields.iter().for_each(|(_, n)| collect_names(n, out)),
        Node::Task { name, args, kwargs } => {
            args.iter().for_each(|n| collect_names(n, out));
            kwargs.iter().for_each(|(_, n)| collect_names(n, out));
            out.push(name);
        }
    }
}

fn invalid(path: &str, message: impl Into<String>) -> JsonGraphError {
    JsonGraphError {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn parse(value: Value, path: &str) -> Result<Node, JsonGraphError> {
    if !JsonGraph::contains_tasks(&value) {
        return Ok(Node::Plain(value));
    }
    match value {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse(v, &format!("{path}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Node::Array),
        Value::Object(map) if map.contains_key(TASK_KEY) => parse_task(map, path),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| {
                let at = format!("{path}[{k:?}]");
                parse(v, &at).map(|n| (k, n))
            })
            .collect::<Result<_, _>>()
            .map(Node::Object),
        // `contains_tasks` is false for every other value.
        other => Ok(Node::Plain(other)),
    }
}

fn parse_task(mut map: Map<String, Value>, path: &str) -> Result<Node, JsonGraphError> {
    if let Some(extra) = map
        .keys()
        .find(|k| ![TASK_KEY, ARGS_KEY, KWARGS_KEY].contains(&k.as_str()))
    {
        return Err(invalid(
            path,
            format!(
                "unknown key {extra:?} (a nested task has only \"$task\", \"args\" and \"kwargs\")"
            ),
        ));
    }
    let name = match map.remove(TASK_KEY) {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => {
            return Err(invalid(
                path,
                "\"$task\" must be a non-empty string naming a task",
            ));
        }
    };
    let args = match map.remove(ARGS_KEY) {
        None => Vec::new(),
        Some(Value::Array(args)) => args
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse(v, &format!("{path}.args[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                path,
                "\"args\" must be an array of positional arguments",
            ));
        }
    };
    let kwargs = match map.remove(KWARGS_KEY) {
        None => Vec::new(),
        Some(Value::Object(kwargs)) => kwargs
            .into_iter()
            .map(|(k, v)| {
                let at = format!("{path}.{KWARGS_KEY}[{k:?}]");
                parse(v, &at).map(|n| (k, n))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(
                path,
                "\"kwargs\" must be an object of arguments by parameter name",
            ));
        }
    };
    Ok(Node::Task { name, args, kwargs })
}

impl Inputs for JsonGraph {
    type Output = Value;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Value, MetaError>> {
        let tasks = at.pool.tasks();
        if tasks.is_empty() && at.pool.is_remote() {
            // No agent is up yet: the names and keyword arguments are matched against what
            // the first one serves, and the tasks wait for it (a cancel ends the wait).
            let (at, scope) = (at.clone(), at.scope.clone());
            return async move {
                let pool = at.pool.clone();
                let served = std::pin::pin!(pool.wait_for_tasks());
                let failed = std::pin::pin!(scope.failed());
                match futures::future::select(served, failed).await {
                    Either::Left((tasks, _)) => start_bound(self.0, &tasks, &at).await,
                    Either::Right((failure, _)) => Err(failure),
                }
            }
            .boxed();
        }
        start_bound(self.0, &tasks, at)
    }
}

/// Matches every task's arguments first (a mistake queues nothing), then starts them.
fn start_bound(
    node: Node,
    tasks: &[TaskInfo],
    at: &InputContext,
) -> BoxFuture<'static, Result<Value, MetaError>> {
    match bind(node, tasks, at.path()) {
        Ok(node) => start_node(node, at),
        Err(failure) => futures::future::ready(Err(at.scope.fail(failure))).boxed(),
    }
}

fn start_node(node: Node, at: &InputContext) -> BoxFuture<'static, Result<Value, MetaError>> {
    match node {
        Node::Plain(value) => futures::future::ready(Ok(value)).boxed(),
        Node::Array(items) => {
            let parts: Vec<_> = items
                .into_iter()
                .enumerate()
                .map(|(i, n)| start_node(n, &at.index(i)))
                .collect();
            join_all(parts)
                .map(|done| done.into_iter().collect::<Result<_, _>>().map(Value::Array))
                .boxed()
        }
        Node::Object(fields) => {
            let (keys, parts): (Vec<String>, Vec<_>) = fields
                .into_iter()
                .map(|(k, n)| {
                    let started = start_node(n, &at.key(&k));
                    (k, started)
                })
                .unzip();
            join_all(parts)
                .map(|done| {
                    keys.into_iter()
                        .zip(done)
                        .map(|(k, v)| Ok((k, v?)))
                        .collect::<Result<Map<_, _>, _>>()
                        .map(Value::Object)
                })
                .boxed()
        }
        // `bind` left no keyword arguments.
        Node::Task { name, args, .. } => {
            let plain: Option<Vec<Value>> = args
                .iter()
                .map(|n| match n {
                    Node::Plain(v) => Some(v.clone()),
                    _ => None,
                })
                .collect();
            match plain {
                // Queued now, with the other leaves of the run.
                Some(args) => start_task(at, Task::json(name, Value::Array(args))),
                // Its own call waits for its nested arguments.
                None => {
                    let args = start_node(Node::Array(args), &at.field(ARGS_KEY));
                    then_task(at, args, move |args| Task::json(name, args))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_tasks_anywhere() {
        let g = JsonGraph::parse(json!([
            1,
            {"x": [{"$task": "a"}], "y": 2},
            {"$task": "b", "args": [{"$task": "c", "args": [5]}, 6]}
        ]))
        .unwrap();
        assert_eq!(g.task_names(), ["a", "c", "b"]);
        assert!(JsonGraph::contains_tasks(&json!({"k": [{"$task": 1}]})));
        assert!(!JsonGraph::contains_tasks(&json!({"k": [{"task": 1}]})));
    }

    #[test]
    fn plain_values_stay_plain() {
        let v = json!({"a": [1, 2], "b": null});
        assert_eq!(
            JsonGraph::parse(v.clone()).unwrap(),
            JsonGraph(Node::Plain(v))
        );
    }

    #[test]
    fn malformed_tasks_name_their_place() {
        let err = JsonGraph::parse(json!([0, [{"$task": 5}]])).unwrap_err();
        assert_eq!(err.path, "$[1][0]");
        assert!(err.message.contains("non-empty string"), "{err}");

        let err = JsonGraph::parse(json!({"k": {"$task": "a", "args": 3}})).unwrap_err();
        assert_eq!(err.path, "$[\"k\"]");
        assert!(err.message.contains("array"), "{err}");

        let err = JsonGraph::parse(json!([{"$task": "a", "arg": []}])).unwrap_err();
        assert!(err.message.contains("unknown key \"arg\""), "{err}");

        let err = JsonGraph::parse(json!([{"$task": "a", "args": [{"$task": ""}]}])).unwrap_err();
        assert_eq!(err.path, "$[0].args[0]");
    }

    fn add_and_greet() -> Vec<TaskInfo> {
        let param = |name: &str, ty: &str| procpool_core::ParamInfo {
            name: name.into(),
            type_name: ty.into(),
        };
        let info = |name: &str, params| TaskInfo {
            name: name.into(),
            params,
            result: "i64".into(),
            fallible: false,
            is_async: false,
        };
        vec![
            info("add", vec![param("a", "i64"), param("b", "i64")]),
            info(
                "greet",
                vec![param("name", "String"), param("greeting", "Option<String>")],
            ),
        ]
    }

    #[test]
    fn bind_turns_keywords_into_positions_at_every_depth() {
        let tasks = add_and_greet();
        let g = JsonGraph::parse(json!([
            {"$task": "add", "kwargs": {"b": {"$task": "add", "args": [1], "kwargs": {"b": 2}}, "a": 10}},
            {"$task": "greet", "kwargs": {"name": "Ada"}}
        ]))
        .unwrap();
        let bound = g.bind(&tasks).unwrap();
        let expected = JsonGraph::parse(json!([
            {"$task": "add", "args": [10, {"$task": "add", "args": [1, 2]}]},
            {"$task": "greet", "args": ["Ada", null]}
        ]))
        .unwrap();
        assert_eq!(bound, expected);
    }

    #[test]
    fn bind_names_the_task_and_its_place() {
        let tasks = add_and_greet();
        let fails = |v: Value| JsonGraph::parse(v).unwrap().bind(&tasks).unwrap_err();
        let e = fails(json!({"x": [{"$task": "add", "args": [1], "kwargs": {"c": 2}}]}));
        assert_eq!(e.kind(), "bad_args");
        assert_eq!(e.path(), Some("$[\"x\"][0]"));
        assert!(
            e.task_error()
                .unwrap()
                .to_string()
                .contains("no parameter named \"c\""),
            "{e:?}"
        );
        let e = fails(json!([{"$task": "add", "args": [{"$task": "add", "kwargs": {"a": 1}}]}]));
        assert_eq!(e.path(), Some("$[0].args[0]"));
        assert!(
            e.task_error()
                .unwrap()
                .to_string()
                .contains("missing argument \"b\""),
            "{e:?}"
        );
        let e = fails(json!([{"$task": "nope", "kwargs": {"a": 1}}]));
        assert_eq!(e.kind(), "unknown_task");
        let err = JsonGraph::parse(json!([{"$task": "add", "kwargs": [1]}])).unwrap_err();
        assert!(
            err.message.contains("\"kwargs\" must be an object"),
            "{err}"
        );
    }
}
