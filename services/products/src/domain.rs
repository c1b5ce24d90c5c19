//! Products as the catalogue understands them, and the rules a valid one obeys.

use platform::fields::{FieldViolation, check_range, parse_text, truncate};
use uuid::Uuid;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_IMAGE_URL_CHARS: usize = 2_048;
/// Also a bound in bytes: a URL of 2,048 four-byte characters would make a page of 1,000
/// products (or purchases) larger than the 4 MiB a gRPC client decodes by default.
pub const MAX_IMAGE_URL_BYTES: usize = 2_048;
/// Ten billion in the currency's main unit: far above any real price, low enough that sums
/// over a large order history cannot overflow an i64.
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;
/// Most ids one BatchGetProducts call may name.
pub const MAX_BATCH_IDS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        parse_text(field, raw, MAX_TITLE_CHARS).map(Self)
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// An absolute http(s) URL with a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldViolation> {
        let text = parse_text(field, raw, MAX_IMAGE_URL_CHARS)?;
        if text.len() > MAX_IMAGE_URL_BYTES {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {MAX_IMAGE_URL_BYTES} bytes in UTF-8 (percent-encode non-ASCII characters), got {}",
                    text.len()
                ),
            ));
        }
        let invalid = || {
            FieldViolation::new(
                field,
                format!(
                    "must be an absolute http or https URL such as https://example.com/p.png, got {:?}",
                    truncate(raw, 64)
                ),
            )
        };
        let url = url::Url::parse(&text).map_err(|_| invalid())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid());
        }
        Ok(Self(text))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceCents(i64);

impl PriceCents {
    pub fn parse(field: &str, raw: i64) -> Result<Self, FieldViolation> {
        check_range(field, raw, 1, MAX_PRICE_CENTS).map(Self)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewProduct {
    pub title: Title,
    pub image_url: ImageUrl,
    pub price_cents: PriceCents,
}

/// The fields an update sets; at least one is present.
#[derive(Debug, Clone)]
pub struct ProductChange {
    pub id: Uuid,
    pub title: Option<Title>,
    pub image_url: Option<ImageUrl>,
    pub price_cents: Option<PriceCents>,
    pub expected_version: Option<u64>,
}

impl ProductChange {
    /// The product with this change applied (version and timestamps untouched).
    pub fn apply_to(&self, current: &Product) -> Product {
        Product {
            title: self
                .title
                .clone()
                .map_or_else(|| current.title.clone(), Title::into_inner),
            image_url: self
                .image_url
                .clone()
                .map_or_else(|| current.image_url.clone(), ImageUrl::into_inner),
            price_cents: self
                .price_cents
                .map_or(current.price_cents, PriceCents::get),
            ..current.clone()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub title: String,
    pub image_url: String,
    pub price_cents: i64,
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Removes repeated ids, keeping each first occurrence in place, so a batch answers each
/// product once in the order the caller asked.
pub fn dedupe_ids(ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_urls_must_be_absolute_http_urls() {
        assert!(ImageUrl::parse("image_url", "https://example.com/a.png").is_ok());
        assert!(ImageUrl::parse("image_url", "http://cdn.example.com:8080/x?y=1").is_ok());
        for bad in [
            "",
            "example.com/a.png",
            "/a.png",
            "ftp://example.com/a.png",
            "javascript:alert(1)",
            "https://",
        ] {
            assert!(
                ImageUrl::parse("image_url", bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn prices_are_positive_and_bounded() {
        assert!(PriceCents::parse("price_cents", 1).is_ok());
        assert!(PriceCents::parse("price_cents", MAX_PRICE_CENTS).is_ok());
        assert!(PriceCents::parse("price_cents", 0).is_err());
        assert!(PriceCents::parse("price_cents", -5).is_err());
        assert!(PriceCents::parse("price_cents", MAX_PRICE_CENTS + 1).is_err());
    }

    #[test]
    fn duplicate_ids_keep_their_first_position() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(dedupe_ids(vec![b, a, b, c, a]), vec![b, a, c]);
    }
}
