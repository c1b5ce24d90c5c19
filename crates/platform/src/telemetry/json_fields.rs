//! A span's fields in JSON log lines, with a value recorded later appended in place.
//!
//! tracing-subscriber's `JsonFields` keeps a span's fields as one JSON object and, for every
//! `Span::record`, parses that object, inserts the value and writes it all again. Each request
//! span records three values after it opens (its trace and span ids, then its status code):
//! profiled on purchases-async answering health checks one at a time, those re-writes were
//! about 9% of the process's CPU, more than the health service itself. Here a recorded value
//! is appended to the object instead, unless the span already holds that field (a status
//! recorded again when an answer fails after its headers): then the object is written again
//! with the later value, so it always holds each field once and
//! [`JsonLine`](super::json_line::JsonLine) can copy it into a line as it is.

use std::fmt;

use serde::Serialize as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// A span's fields as one JSON object, each field once, recorded values appended. Written
/// as the fields are visited, where tracing-subscriber's `JsonFields` gathers them into a map
/// first.
#[derive(Debug, Default)]
pub struct AppendingJsonFields;

impl<'writer> FormatFields<'writer> for AppendingJsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_str(&object_of(fields)?)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let added = object_of(fields)?;
        let mut again = HeldAlready {
            object: &current.fields,
            found: false,
        };
        fields.record(&mut again);
        if again.found {
            merge_members(&mut current.fields, &added);
        } else {
            append_members(&mut current.fields, &added);
        }
        Ok(())
    }
}

/// `fields` as the text of a JSON object.
fn object_of(fields: impl RecordFields) -> Result<String, fmt::Error> {
    let mut text = Vec::with_capacity(256);
    text.push(b'{');
    fields.record(&mut JsonMembers::new(&mut text));
    text.push(b'}');
    String::from_utf8(text).map_err(|_| fmt::Error)
}

/// `value` as a JSON string, escaped, at the end of `out`.
pub(super) fn json_string(out: &mut Vec<u8>, value: &str) {
    // Writing to a Vec cannot fail, and a str is always a valid JSON string.
    let _ = value.serialize(&mut serde_json::Serializer::new(out));
}

/// Writes the fields it visits as JSON object members (`"name":value,...`) at the end of
/// its buffer, as tracing-subscriber's JSON format does: numbers and booleans as themselves
/// (a non-finite float as null), text as strings, anything else by its `Debug` form. `log.*`
/// fields are left out: they are a `log` record's metadata, which the line carries already.
pub(super) struct JsonMembers<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonMembers<'a> {
    pub(super) fn new(out: &'a mut Vec<u8>) -> Self {
        Self { out, first: true }
    }

    fn key(&mut self, field: &Field) -> bool {
        if field.name().starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        json_string(self.out, field.name());
        self.out.push(b':');
        true
    }

    fn value(&mut self, field: &Field, value: impl serde::Serialize) {
        if self.key(field) {
            let _ = value.serialize(&mut serde_json::Serializer::new(&mut *self.out));
        }
    }
}

impl Visit for JsonMembers<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.value(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            json_string(self.out, &format!("{value:?}"));
        }
    }
}

/// Whether any field recorded is already a member of `object`. serde_json writes a key as
/// `"name":` with nothing between, and a quote inside a string value is escaped, so the text
/// holds that pattern only where the key is (a field named like the end of another's name
/// still has its own opening quote). A false hit would only take the slower, exact path.
struct HeldAlready<'a> {
    object: &'a str,
    found: bool,
}

impl Visit for HeldAlready<'_> {
    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        if !self.found {
            let name = field.name();
            self.found = self.object.match_indices(name).any(|(at, _)| {
                self.object[..at].ends_with('"')
                    && self.object[at + name.len()..].starts_with("\":")
            });
        }
    }
}

/// Sets the members of the JSON object `added` in the JSON object `object`, a member of
/// `added` replacing one of the same name: what `JsonFields` does on every record.
fn merge_members(object: &mut String, added: &str) {
    let parse = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).unwrap_or_default()
    };
    let mut members = parse(object);
    members.extend(parse(added));
    if let Ok(text) = serde_json::to_string(&members) {
        *object = text;
    }
}

/// Adds the members of the JSON object `added` to the JSON object `object` (either may be
/// empty text, which stands for no fields).
fn append_members(object: &mut String, added: &str) {
    let Some(added_members) = members(added).filter(|added| !added.is_empty()) else {
        return;
    };
    if members(object).is_some_and(|held| !held.is_empty()) {
        object.pop();
        object.push(',');
        object.push_str(added_members);
        object.push('}');
    } else {
        object.clear();
        object.push_str(added);
    }
}

/// The members of a JSON object's text, without its braces: empty for no fields (stored as
/// empty text, or `{}`), none when the text is not an object.
pub(super) fn members(object: &str) -> Option<&str> {
    if object.is_empty() {
        return Some("");
    }
    object.strip_prefix('{')?.strip_suffix('}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_appended_to_an_object_or_start_one() {
        let mut object = String::from(r#"{"a":1}"#);
        append_members(&mut object, r#"{"b":"x","c":true}"#);
        assert_eq!(object, r#"{"a":1,"b":"x","c":true}"#);
        append_members(&mut object, "{}");
        append_members(&mut object, "");
        assert_eq!(object, r#"{"a":1,"b":"x","c":true}"#);
        for empty in ["", "{}"] {
            let mut object = String::from(empty);
            append_members(&mut object, r#"{"d":2}"#);
            assert_eq!(object, r#"{"d":2}"#);
        }
    }

    #[test]
    fn an_objects_members_are_its_text_inside_the_braces() {
        assert_eq!(members(r#"{"a":1,"b":"}"}"#), Some(r#""a":1,"b":"}""#));
        assert_eq!(members("{}"), Some(""));
        assert_eq!(members(""), Some(""));
        assert_eq!(members("[1]"), None);
    }

    #[test]
    fn a_field_recorded_again_is_replaced_not_repeated() {
        let mut object = String::from(r#"{"code":14,"method":"Check"}"#);
        merge_members(&mut object, r#"{"code":0}"#);
        let merged: serde_json::Value = serde_json::from_str(&object).expect("JSON");
        assert_eq!(merged, serde_json::json!({"code": 0, "method": "Check"}));
        assert_eq!(object.matches("code").count(), 1, "{object}");
    }

    #[test]
    fn a_field_is_found_by_its_key_only() {
        let held = |object: &str, name: &'static str| {
            let mut visit = HeldAlready {
                object,
                found: false,
            };
            let span = tracing::info_span!("probe", id = 1, span_id = 2, message = 3);
            let field = span.field(name).expect("a field of the probe span");
            tracing::field::Visit::record_debug(&mut visit, &field, &1);
            visit.found
        };
        assert!(held(r#"{"id":"x"}"#, "id"));
        assert!(!held(r#"{"span_id":"x"}"#, "id"));
        assert!(!held(r#"{"message":"\"id\": no"}"#, "id"));
        assert!(held(r#"{"message":"\"id\":","span_id":1}"#, "span_id"));
    }
}
