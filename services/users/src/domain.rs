//! User accounts as the service understands them, and the rules a valid one obeys.

use platform::fields::{FieldViolation, parse_text, truncate};
use uuid::Uuid;

pub const MAX_NAME_CHARS: usize = 200;
/// RFC 5321's limit on a forward path.
pub const MAX_EMAIL_CHARS: usize = 254;

/// A syntactically plausible email address in its canonical form: compatibility-normalised and
/// case-folded (Unicode's compatibility caseless match, NFKC after full case folding), so
/// that addresses a person cannot tell apart are one address. `ＡＤＡ@example.com` (full
/// width), `Ada@Example.com` and `ada@example.com` register once; `straße@` and
/// `STRASSE@` too. Look-alikes from other scripts (a Cyrillic `а`) stay distinct: telling
/// those apart takes the confusables data of UTS #39, beyond what this service does.
///
/// The check is deliberately practical rather than RFC 5322-complete: one `@`, a non-empty
/// local part of at most 64 characters, and a dotted domain of letters, digits and hyphens.
/// Only sending mail to it could prove more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// The canonical form of an address: NFKC(fold(NFKD(fold(NFD(raw))))), Unicode's
/// compatibility caseless match (Unicode 16, §3.13, D146) turned into a key.
pub fn canonical_email(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let first = caseless::default_case_fold_str(&raw.nfd().collect::<String>());
    let second = caseless::default_case_fold_str(&first.nfkd().collect::<String>());
    second.nfkc().collect()
}

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let candidate = canonical_email(&parse_text(field, raw, MAX_EMAIL_CHARS)?);
        let invalid = || {
            FieldViolation::new(
                field,
                format!(
                    "must be an email address such as ada@example.com, got {:?}",
                    truncate(raw, 64)
                ),
            )
        };
        let (local, domain) = candidate.split_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Self(candidate))
        } else {
            Err(invalid())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 200 characters once trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        parse_text(field, raw, MAX_NAME_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub email: Email,
    pub name: UserName,
}

#[derive(Debug, Clone)]
pub struct Rename {
    pub id: Uuid,
    pub name: UserName,
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Deletion {
    pub id: Uuid,
    pub expected_version: Option<u64>,
}

/// A live user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A display name as given and family name: the last word is the family name, the words
/// before it the given name; a one-word name is a given name only. A heuristic (names do not
/// split so simply everywhere), which is why event schema 2 keeps `name` beside the parts.
pub fn split_name(name: &str) -> (&str, &str) {
    let name = name.trim();
    match name.rsplit_once(char::is_whitespace) {
        Some((given, family)) => (given.trim_end(), family),
        None => (name, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_word_is_the_family_name() {
        assert_eq!(split_name("Ada Lovelace"), ("Ada", "Lovelace"));
        assert_eq!(
            split_name("Grace Brewster  Hopper"),
            ("Grace Brewster", "Hopper")
        );
        assert_eq!(split_name("Plato"), ("Plato", ""));
        assert_eq!(split_name("  Alan Turing "), ("Alan", "Turing"));
    }

    #[test]
    fn emails_are_lower_cased_and_checked_for_shape() {
        assert_eq!(
            Email::parse("email", " Ada.Lovelace+x@Example.COM ").map(|e| e.0),
            Ok("ada.lovelace+x@example.com".to_owned())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "ada lovelace@example.com",
            "ada@exa_mple.com",
            "ada@-example.com",
            ".ada@example.com",
            "a..da@example.com",
            "ada@example..com",
        ] {
            assert!(
                Email::parse("email", bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse("email", &long_local).is_err());
    }

    #[test]
    fn addresses_a_person_cannot_tell_apart_are_one_address() {
        let canonical = |raw: &str| Email::parse("email", raw).map(|email| email.0);
        let ada = Ok("ada@example.com".to_owned());
        assert_eq!(
            canonical("ＡＤＡ@ｅｘａｍｐｌｅ.ｃｏｍ"),
            ada,
            "full-width forms"
        );
        assert_eq!(canonical("ADA@EXAMPLE.COM"), ada);
        assert_eq!(
            canonical("straße@example.com"),
            canonical("STRASSE@example.com"),
            "full case folding: ß is ss"
        );
        assert_eq!(
            canonical("ﬁnn@example.com"),
            Ok("finn@example.com".to_owned()),
            "the fi ligature"
        );
        assert_eq!(
            canonical("e\u{301}lise@example.com"),
            canonical("\u{e9}lise@example.com"),
            "a combining accent and the precomposed letter"
        );
        assert!(
            canonical("a\u{200B}da@example.com").is_err(),
            "an invisible character is refused, not folded away"
        );
        assert_ne!(
            canonical("\u{430}da@example.com"),
            ada,
            "a Cyrillic look-alike stays another address"
        );
    }
}
