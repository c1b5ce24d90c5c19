//! Integration tests of purchases-bus and of the owners answering on the bus, with the real
//! services and a real nats-server (the in-process harness): the owners answer as they do on
//! gRPC; purchases-bus fails like purchases-sync when an owner is down, slow or failing, and
//! also when the bus is down, where purchases-sync and purchases-async keep answering.

mod failures;
mod owners;
