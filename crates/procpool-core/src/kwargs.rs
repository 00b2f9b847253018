//! Keyword arguments: matching `{"name": value}` pairs to a registered function's
//! parameters, by the names its worker announces in the handshake ([`TaskInfo`]). The
//! worker only ever sees positional arguments; this is done before a task is queued.

use procpool_proto::TaskInfo;

use crate::errors::TaskError;

/// Places `kwargs` after `args` in the order of `task`'s parameters, and returns the
/// positional arguments of the call.
///
/// A parameter whose type is written `Option<..>` may be left out: it gets `absent()`
/// (JSON `null` for a JSON call, which decodes as `None`). Fails with
/// [`TaskError::BadArgs`] naming the argument when one is given twice (by position and by
/// keyword), names no parameter, is missing, or when there are more positional arguments
/// than parameters. The type is read as written in the function's signature: an alias of
/// `Option` is not recognised, so such a parameter must be given.
pub fn bind_kwargs<T>(
    task: &TaskInfo,
    args: Vec<T>,
    kwargs: Vec<(String, T)>,
    mut absent: impl FnMut() -> T,
) -> Result<Vec<T>, TaskError> {
    let bad = |message: String| TaskError::BadArgs { message };
    let params = &task.params;
    let listed = || {
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        if names.is_empty() {
            "it takes none".to_owned()
        } else {
            format!("its parameters: {}", names.join(", "))
        }
    };
    if args.len() > params.len() {
        return Err(bad(format!(
            "{} takes {} argument{}, {} given by position",
            task.name,
            params.len(),
            if params.len() == 1 { "" } else { "s" },
            args.len()
        )));
    }
    let given = args.len();
    let mut slots: Vec<Option<T>> = args.into_iter().map(Some).collect();
    slots.resize_with(params.len(), || None);
    for (name, value) in kwargs {
        let Some(i) = params.iter().position(|p| p.name == name) else {
            return Err(bad(format!(
                "{} has no parameter named {name:?} ({})",
                task.name,
                listed()
            )));
        };
        if i < given {
            return Err(bad(format!(
                "argument {name:?} of {} given both by position and by keyword",
                task.name
            )));
        }
        // Two equal keys cannot come from a JSON object (the parser keeps one); from a
        // list of pairs they are the same mistake as a repeat by position.
        if slots[i].is_some() {
            return Err(bad(format!(
                "argument {name:?} of {} given twice by keyword",
                task.name
            )));
        }
        slots[i] = Some(value);
    }
    slots
        .into_iter()
        .zip(params)
        .map(|(slot, p)| match slot {
            Some(value) => Ok(value),
            None if is_option(&p.type_name) => Ok(absent()),
            None => Err(bad(format!(
                "missing argument {:?} of {} ({}: {})",
                p.name, task.name, p.name, p.type_name
            ))),
        })
        .collect()
}

/// Whether a type, as written in a signature, is `Option<..>` (bare or by its full path).
fn is_option(type_name: &str) -> bool {
    let t = type_name.trim_start_matches("::");
    let t = t
        .strip_prefix("std::option::")
        .or_else(|| t.strip_prefix("core::option::"))
        .unwrap_or(t);
    t.starts_with("Option<")
}

#[cfg(test)]
mod tests {
    use procpool_proto::ParamInfo;

    use super::*;

    fn info(params: &[(&str, &str)]) -> TaskInfo {
        TaskInfo {
            name: "f".into(),
            params: params
                .iter()
                .map(|(n, t)| ParamInfo {
                    name: (*n).into(),
                    type_name: (*t).into(),
                })
                .collect(),
            result: "()".into(),
            fallible: false,
            is_async: false,
        }
    }

    fn message(e: TaskError) -> String {
        match e {
            TaskError::BadArgs { message } => message,
            other => panic!("not bad_args: {other:?}"),
        }
    }

    #[test]
    fn keywords_fill_the_parameters_in_order() {
        let f = info(&[("a", "i64"), ("b", "i64"), ("c", "Option<i64>")]);
        let kw = vec![("c".to_owned(), 3), ("b".to_owned(), 2)];
        assert_eq!(bind_kwargs(&f, vec![1], kw, || 0).unwrap(), [1, 2, 3]);
        let kw = vec![("b".to_owned(), 2), ("a".to_owned(), 1)];
        assert_eq!(bind_kwargs(&f, vec![], kw, || -1).unwrap(), [1, 2, -1]);
    }

    #[test]
    fn every_mistake_is_named() {
        let f = info(&[("a", "i64"), ("b", "Vec<i64>")]);
        let kw = |pairs: &[(&str, i32)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let e = message(bind_kwargs(&f, vec![1], kw(&[("z", 2)]), || 0).unwrap_err());
        assert_eq!(e, "f has no parameter named \"z\" (its parameters: a, b)");
        let e = message(bind_kwargs(&f, vec![1], kw(&[("a", 2)]), || 0).unwrap_err());
        assert_eq!(
            e,
            "argument \"a\" of f given both by position and by keyword"
        );
        let e = message(bind_kwargs(&f, vec![], kw(&[("a", 2)]), || 0).unwrap_err());
        assert_eq!(e, "missing argument \"b\" of f (b: Vec<i64>)");
        let e = message(bind_kwargs(&f, vec![1, 2, 3], kw(&[]), || 0).unwrap_err());
        assert_eq!(e, "f takes 2 arguments, 3 given by position");
        let e = message(bind_kwargs(&f, vec![], kw(&[("a", 1), ("a", 2)]), || 0).unwrap_err());
        assert_eq!(e, "argument \"a\" of f given twice by keyword");
    }

    #[test]
    fn option_is_recognised_by_its_paths_only() {
        assert!(is_option("Option<String>"));
        assert!(is_option("std::option::Option<Vec<u8>>"));
        assert!(is_option("::core::option::Option<u8>"));
        assert!(!is_option("Optional<u8>"));
        assert!(!is_option("Vec<Option<u8>>"));
    }
}
