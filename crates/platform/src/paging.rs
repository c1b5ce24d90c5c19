//! Keyset pagination shared by the list endpoints. A page token is an opaque cursor naming
//! the last row of the previous page, so pages stay stable while rows are inserted, and a
//! page costs the same however deep it is.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::fields::FieldViolation;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// Interprets a request's page size: 0 means the default, negative or above the cap is invalid.
pub fn page_size(field: &str, raw: i32) -> Result<u32, FieldViolation> {
    match raw {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1.. if raw.unsigned_abs() <= MAX_PAGE_SIZE => Ok(raw.unsigned_abs()),
        _ => Err(FieldViolation::new(
            field,
            format!(
                "must be between 1 and {MAX_PAGE_SIZE} (0 for the default of {DEFAULT_PAGE_SIZE}), got {raw}"
            ),
        )),
    }
}

/// Position after which the next page starts: the sort key and id of the last row served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub sort_key: i64,
    pub id: Uuid,
}

/// Leading byte of every token, so the format can change without misreading old tokens.
const TOKEN_FORMAT: u8 = 1;
const TOKEN_LEN: usize = 1 + 8 + 16;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(TOKEN_FORMAT);
        bytes.extend_from_slice(&self.sort_key.to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a page token; the empty token means "from the start".
    pub fn decode(field: &str, token: &str) -> Result<Option<Self>, FieldViolation> {
        if token.is_empty() {
            return Ok(None);
        }
        let malformed = || {
            FieldViolation::new(
                field,
                "is not a token this service issued; pass next_page_token from the previous response, or empty for the first page",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
        if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_FORMAT {
            return Err(malformed());
        }
        let sort_key = i64::from_be_bytes(bytes[1..9].try_into().map_err(|_| malformed())?);
        let id = Uuid::from_slice(&bytes[9..]).map_err(|_| malformed())?;
        Ok(Some(Self { sort_key, id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size("page_size", 0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size("page_size", 1), Ok(1));
        assert_eq!(page_size("page_size", 1_000), Ok(1_000));
        assert!(page_size("page_size", 1_001).is_err());
        assert!(page_size("page_size", -1).is_err());
        assert!(page_size("page_size", i32::MIN).is_err());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let cursor = Cursor {
            sort_key: -42,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode("t", &cursor.encode()), Ok(Some(cursor)));
        assert_eq!(Cursor::decode("t", ""), Ok(None));
        assert!(Cursor::decode("t", "!!!").is_err());
        assert!(Cursor::decode("t", "AAAA").is_err());
        let mut other_format = URL_SAFE_NO_PAD.decode(cursor.encode()).unwrap_or_default();
        other_format[0] = 2;
        assert!(Cursor::decode("t", &URL_SAFE_NO_PAD.encode(other_format)).is_err());
    }
}
