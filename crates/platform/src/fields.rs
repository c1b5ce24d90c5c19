//! Field-level validation shared by every gRPC edge. A failed check names the field and says
//! what a valid value looks like, so the caller can fix the request without reading our code.

use uuid::Uuid;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses an entity id: a UUIDv7 in its canonical hyphenated form, the only kind the
/// services issue. Anything else cannot name an entity, so it is an invalid argument rather
/// than an unknown id.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(field, "is required"));
    }
    let id = Uuid::try_parse(raw)
        .ok()
        .filter(|id| raw.len() == 36 && id.get_version_num() == 7)
        .ok_or_else(|| {
            FieldViolation::new(
                field,
                format!(
                    "must be a UUIDv7 in hyphenated form such as 019a9a6e-3f4b-7cc0-9a5e-2b7f1f0c9d21, got {:?}",
                    truncate(raw, 64)
                ),
            )
        })?;
    Ok(id)
}

/// Characters that change how text displays without showing themselves: the bidirectional
/// controls (an override makes "exe.txt" read "txt.exe") and the zero-width and invisible
/// format characters (which make two names that look the same compare different). No
/// name, title or address here needs one. The cost is real, if small: Persian and some
/// Indic spellings use the zero-width non-joiner, and emoji sequences the zero-width joiner.
fn is_hidden_formatting(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2066}' => "LEFT-TO-RIGHT ISOLATE",
        '\u{2067}' => "RIGHT-TO-LEFT ISOLATE",
        '\u{2068}' => "FIRST STRONG ISOLATE",
        '\u{2069}' => "POP DIRECTIONAL ISOLATE",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}'..='\u{2064}' => "INVISIBLE OPERATOR",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{034F}' => "COMBINING GRAPHEME JOINER",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        _ => return None,
    })
}

/// Validates free text: surrounding white space is trimmed, the rest must be 1 to
/// `max_chars` characters without control characters, bidirectional controls or invisible
/// formatting characters.
pub fn parse_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldViolation> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    let n_chars = trimmed.chars().count();
    if n_chars > max_chars {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max_chars} characters, got {n_chars}"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    if let Some((n_char, (c, name))) = trimmed
        .chars()
        .enumerate()
        .find_map(|(n_char, c)| is_hidden_formatting(c).map(|name| (n_char, (c, name))))
    {
        return Err(FieldViolation::new(
            field,
            format!(
                "must not contain invisible or text-direction characters: U+{:04X} {name} at character {}",
                u32::from(c),
                n_char + 1
            ),
        ));
    }
    Ok(trimmed.to_owned())
}

/// Checks that a count-like number lies in `min..=max`.
pub fn check_range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, FieldViolation> {
    if value < min || value > max {
        return Err(FieldViolation::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

/// Shortens a caller's value before echoing it in an error message, so a huge field cannot
/// make a huge error.
pub fn truncate(raw: &str, max_chars: usize) -> String {
    match raw.char_indices().nth(max_chars) {
        Some((byte_idx, _)) => format!("{}…", &raw[..byte_idx]),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_uuidv7_ids_are_accepted() {
        let v7 = Uuid::now_v7();
        assert_eq!(parse_id("id", &v7.to_string()), Ok(v7));
        assert!(parse_id("id", "").is_err());
        assert!(parse_id("id", "not-a-uuid").is_err());
        assert!(
            parse_id("id", &Uuid::from_u128(1).to_string()).is_err(),
            "nil-like v0 id"
        );
        assert!(
            parse_id("id", &v7.simple().to_string()).is_err(),
            "unhyphenated"
        );
        assert!(parse_id("id", &format!("{{{v7}}}")).is_err(), "braced");
    }

    #[test]
    fn text_is_trimmed_and_bounded_in_characters_not_bytes() {
        assert_eq!(parse_text("name", "  Ada  ", 3), Ok("Ada".to_owned()));
        assert!(parse_text("name", "   ", 3).is_err());
        assert_eq!(parse_text("name", "ééé", 3), Ok("ééé".to_owned()));
        assert!(parse_text("name", "éééé", 3).is_err());
        assert!(parse_text("name", "a\u{0}b", 3).is_err());
    }

    #[test]
    fn text_with_hidden_direction_or_width_changes_is_refused() {
        for (raw, code) in [
            ("Ada\u{202E}fdp.exe", "U+202E"),
            ("A\u{200B}da", "U+200B"),
            ("A\u{200D}da", "U+200D"),
            ("\u{2066}Ada", "U+2066"),
            ("Ada\u{FEFF}", "U+FEFF"),
        ] {
            let violation = parse_text("name", raw, 50).expect_err(raw);
            assert!(violation.reason.contains(code), "{violation}");
        }
        assert!(parse_text("name", "Zoë Ångström-Ñúñez", 50).is_ok());
        assert!(
            parse_text("name", "محمد", 50).is_ok(),
            "right-to-left script is fine"
        );
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }
}
