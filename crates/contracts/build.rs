//! Compiles every package under `proto/` without `protoc`: protox parses the files in
//! process, so a fresh machine needs nothing but cargo.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "users/v1/users.proto",
    "products/v1/products.proto",
    "orders/v1/orders.proto",
    "events/v1/events.proto",
    "purchases/v1/purchases.proto",
    "fault/v1/fault.proto",
    "ops/v1/ops.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let fds = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptor_set.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    let mut config = tonic_prost_build::Config::new();
    // Gives every message `prost::Name`, so an event's type is its full protobuf name
    // rather than a string typed by hand.
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    Ok(())
}
