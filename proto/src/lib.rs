//! The `rtprelay.v1` gRPC contract. Generated from `proto/rtprelay/v1/relay.proto`; both the
//! server (used by `rtprelay-control`) and the client (used by tests, the blaster and benchmarks)
//! come from this one crate so they can never drift apart.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("rtprelay.v1");
}
