//! pgpool-sidecar: runs pgpool-II and keeps a Docker-hosted PostgreSQL streaming-replication
//! cluster highly available.
//!
//! The flow, one module per step: observe ([`reconcile`], [`docker`], [`postgres`],
//! [`pgpool::control`]) → decide ([`cluster`], pure) → act ([`failover`], [`recovery`],
//! [`adopt`], [`pgpool::supervisor`]) → record ([`metrics`], [`http`]). [`daemon`] wires them
//! together.
#![forbid(unsafe_code)]

pub mod adopt;
pub mod client;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod failover;
pub mod hook;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod pgpool;
pub mod postgres;
pub mod reaper;
pub mod reconcile;
pub mod recovery;
pub mod saturation;
pub mod slots;
pub mod startup;
pub mod state;
pub mod switchover;
pub mod tls;
pub mod tls_watch;
pub mod users;
