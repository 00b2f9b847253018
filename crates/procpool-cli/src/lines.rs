//! What a line of a job stream claims before it is parsed as a job: blank or not, and
//! the id it is claimed by. A leaf shared by the job reader ([`crate::jobs`]) and the
//! duplicate-id plan ([`crate::plan`]), which must agree on both.

use std::borrow::Cow;

use serde_json::Value;

/// Whether a line holds no job.
pub(crate) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The id a line is claimed by: that of a JSON object with a string `id`, as
/// [`JobReader`](crate::jobs::JobReader) reads it.
pub(crate) fn line_id(line: &[u8]) -> Option<Cow<'_, str>> {
    /// Only the id, borrowed from the line unless it has escapes, the other fields
    /// skipped without building them; a line this does not read (a duplicate or
    /// non-string `id`, bad JSON) goes through the JSON tree, which decides.
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
    }
    // serde reads a struct from a JSON array too: only objects here.
    if line.trim_ascii_start().first() == Some(&b'{')
        && let Ok(IdOnly { id }) = serde_json::from_slice(line)
    {
        return id;
    }
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(mut obj)) => match obj.remove("id") {
            Some(Value::String(id)) => Some(Cow::Owned(id)),
            _ => None,
        },
        _ => None,
    }
}
