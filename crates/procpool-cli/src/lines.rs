//! What a line of a job stream claims before it is parsed as a job: blank or not, and
//! the id it is claimed by. A leaf shared by the job reader ([`crate::jobs`]) and the
//! duplicate-id plan ([`crate::plan`]), which must agree on both.

use serde_json::Value;

/// Whether a line holds no job.
pub(crate) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The id a line is claimed by: that of a JSON object with a string `id`, as
/// [`JobReader`] reads it.
pub(crate) fn line_id(line: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(mut obj)) => match obj.remove("id") {
            Some(Value::String(id)) => Some(id),
            _ => None,
        },
        _ => None,
    }
}
