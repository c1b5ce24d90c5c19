//! The project's wire contracts: Rust code generated from `proto/` (messages, gRPC clients and
//! servers) and the encoded descriptor set that server reflection serves.
//!
//! This is the only crate that runs code generation. It holds no logic: services convert
//! these types into their own domain types at their gRPC edge.

/// Every file under `proto/`, as an encoded `FileDescriptorSet`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

pub mod users {
    pub mod v1 {
        tonic::include_proto!("users.v1");
    }
}

pub mod products {
    pub mod v1 {
        tonic::include_proto!("products.v1");
    }
}

pub mod orders {
    pub mod v1 {
        tonic::include_proto!("orders.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("events.v1");
    }
}

pub mod purchases {
    pub mod v1 {
        tonic::include_proto!("purchases.v1");
    }
}

pub mod fault {
    pub mod v1 {
        tonic::include_proto!("fault.v1");
    }
}

pub mod ops {
    pub mod v1 {
        tonic::include_proto!("ops.v1");
    }
}
