//! Orders as the service understands them, and the rules a valid one obeys.

use platform::fields::{FieldViolation, check_range};
use uuid::Uuid;

pub const MAX_QUANTITY: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(i32);

impl Quantity {
    pub fn parse(field: &str, raw: i32) -> Result<Self, FieldViolation> {
        check_range(field, i64::from(raw), 1, MAX_QUANTITY)?;
        Ok(Self(raw))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub quantity: Quantity,
}

#[derive(Debug, Clone)]
pub struct Cancellation {
    pub id: Uuid,
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Placed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse_stored(raw: &str) -> Option<Self> {
        match raw {
            "placed" => Some(Self::Placed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub quantity: i32,
    pub status: OrderStatus,
    pub version: u64,
    pub placed_at: i64,
    pub updated_at: i64,
}
