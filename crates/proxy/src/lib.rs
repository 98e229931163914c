//! cutover's data plane.
//!
//! A reverse proxy that splits one app's traffic between two slots (`blue`, `green`). The design
//! decision everything else follows from: **the route table is an immutable value swapped
//! atomically** ([`AppProxy::apply`]). A request loads the current table once and is routed by it
//! to the end, so a change is visible to the very next request and no request ever sees half of a
//! change. Everything that must survive a swap (a backend's health, its warm connections, its
//! metrics) lives in objects the tables point to, reused from one table to the next by address.
//!
//! Users are sticky: the hash of a user key gives a fixed bucket, and the canary slot takes the
//! users whose bucket is below its weight ([`cutover_core::bucket`]). Within a slot, requests go to
//! the less loaded of two random healthy backends. A request that could not connect is retried on
//! another backend; a request whose bytes reached a backend is never replayed.
//!
//! Upstream connections are HTTP/1.1 with keep-alive, managed here rather than by a generic client
//! pool, because draining needs control a generic pool does not give: a slot that loses its
//! traffic closes its idle connections at once, lets in-flight requests finish, and cuts what is
//! left after its drain timeout.

pub mod app;
pub mod backend;
pub mod body;
mod client;
pub mod config;
mod downstream;
pub mod flags;
mod handler;
pub mod health;
mod http1;
pub mod listener;
pub mod metrics;
pub mod prometheus;
mod upstream;
mod watch;

pub use app::{ActivePool, ActiveTable, AppProxy};
pub use config::{HealthCheckConfig, ListenerKind, PreviewConfig, ProxySettings, StickyConfig};
pub use flags::{FlagForwarding, FlagSource, FlagTraffic};
pub use listener::{closed_connections, serve, tls_acceptor, TlsError};
pub use metrics::{MetricsSnapshot, MetricsSummary, PoolMetrics};
pub use tokio_rustls::TlsAcceptor;
