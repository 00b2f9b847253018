//! [`JsonGraph`]: JSON arguments in which nested tasks may appear anywhere, as
//! `{"$task": NAME, "args": [...]}` objects. This is the CLI's job format for nested tasks,
//! and the shape any JSON front end (the HTTP control plane) can hand to a MetaTask.

use futures::FutureExt as _;
use futures::future::{BoxFuture, join_all};
use procpool_core::Task;
use serde_json::{Map, Value};

use crate::context::{InputContext, start_task, then_task};
use crate::errors::{JsonGraphError, MetaError};
use crate::inputs::Inputs;

/// The key that makes a JSON object a nested task.
const TASK_KEY: &str = "$task";
/// The nested task's positional arguments (optional; `[]` when absent).
const ARGS_KEY: &str = "args";

/// A JSON value in which an object `{"$task": "square", "args": [3]}` anywhere (in
/// arrays, in objects, in another nested task's `args`) is a task. As [`Inputs`] it
/// resolves to the same JSON with every nested task replaced by its result: nested tasks
/// run concurrently, and a task whose `args` hold nested tasks runs once they are done.
///
/// A `$task` object has exactly the keys `$task` (a non-empty string, the registered
/// name) and optionally `args` (an array); anything else is a [`JsonGraphError`].
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
}

fn collect_names<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
    match node {
        Node::Plain(_) => {}
        Node::Array(items) => items.iter().for_each(|n| collect_names(n, out)),
        Node::Object(fields) => fields.iter().for_each(|(_, n)| collect_names(n, out)),
        Node::Task { name, args } => {
            args.iter().for_each(|n| collect_names(n, out));
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
    if let Some(extra) = map.keys().find(|k| *k != TASK_KEY && *k != ARGS_KEY) {
        return Err(invalid(
            path,
            format!("unknown key {extra:?} (a nested task has only \"$task\" and \"args\")"),
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
    Ok(Node::Task { name, args })
}

impl Inputs for JsonGraph {
    type Output = Value;

    fn start(self, at: &InputContext) -> BoxFuture<'static, Result<Value, MetaError>> {
        start_node(self.0, at)
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
        Node::Task { name, args } => {
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
}
