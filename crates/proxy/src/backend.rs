//! One upstream server: its health, its load, its idle connections and its drain state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::SegQueue;
use cutover_core::Slot;
use tokio_util::sync::CancellationToken;

use crate::upstream::Conn;

pub(crate) struct IdleConnection {
    pub conn: Conn,
    pub idle_since: Instant,
}

/// A backend of one slot of one app. It lives as long as the backend is in the route table and
/// any request still uses it; a table change that keeps the address keeps the same object, and so
/// its health, ejection state and warm connections.
pub struct Backend {
    pub addr: SocketAddr,
    pub slot: Slot,
    /// Requests dispatched and not yet finished; the load balancer's measure of load.
    pub(crate) in_flight: AtomicUsize,
    /// Verdict of the active health checks.
    healthy: AtomicBool,
    consecutive_ok: AtomicU32,
    consecutive_failed: AtomicU32,
    /// Passive ejection: milliseconds since `epoch` until which the backend is out.
    ejected_until_ms: AtomicU64,
    connect_failures_in_row: AtomicU32,
    epoch: Instant,
    /// Warm connections. A `SegQueue` allocates in small blocks as connections arrive and frees
    /// them as they leave, where an `ArrayQueue` of `max_idle` slots cost ~30 KiB per backend
    /// up front, used or not (10 000 backends put in a table: 300 MB).
    idle: SegQueue<IdleConnection>,
    /// Connections in `idle`, counted apart to bound it to `max_idle` without a lock.
    idle_len: AtomicUsize,
    max_idle: usize,
    /// True while the backend's slot has traffic. Connections are kept alive only then, so a slot
    /// that lost its traffic sheds its connections as its last requests finish.
    serving: AtomicBool,
    /// Incremented on every change of `serving`, so a drain timer armed for one episode does
    /// nothing if the slot regained traffic in between.
    drain_episode: AtomicU64,
    /// Cancelled when in-flight requests must be cut (drain timeout reached, backend retired).
    stop: ArcSwap<CancellationToken>,
    /// Cancelled when the backend leaves the table: ends its health check task.
    pub(crate) retired: CancellationToken,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("slot", &self.slot)
            .finish()
    }
}

impl Backend {
    pub(crate) fn new(addr: SocketAddr, slot: Slot, max_idle: usize) -> Self {
        Backend {
            addr,
            slot,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            consecutive_ok: AtomicU32::new(0),
            consecutive_failed: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            connect_failures_in_row: AtomicU32::new(0),
            epoch: Instant::now(),
            idle: SegQueue::new(),
            idle_len: AtomicUsize::new(0),
            max_idle: max_idle.max(1),
            serving: AtomicBool::new(false),
            drain_episode: AtomicU64::new(0),
            stop: ArcSwap::from_pointee(CancellationToken::new()),
            retired: CancellationToken::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// May new requests be sent here?
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_ejected()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records an active health check result; returns the new verdict when it changed.
    pub(crate) fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.consecutive_failed.store(0, Ordering::Relaxed);
            let n = self
                .consecutive_ok
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if n >= healthy_threshold && !self.healthy.swap(true, Ordering::Relaxed) {
                // A backend that passes its checks again is also forgiven its connection failures.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                self.connect_failures_in_row.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.consecutive_ok.store(0, Ordering::Relaxed);
            let n = self
                .consecutive_failed
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if n >= unhealthy_threshold && self.healthy.swap(false, Ordering::Relaxed) {
                self.close_idle();
                return Some(false);
            }
        }
        None
    }

    /// Passive health: a connection attempt failed. Ejects the backend for `base * 2^(n-1)`,
    /// capped at `max`, where n counts failures in a row. Returns the ejection time.
    pub(crate) fn record_connect_failure(&self, base: Duration, max: Duration) -> Duration {
        let n = self
            .connect_failures_in_row
            .fetch_add(1, Ordering::Relaxed)
            .min(20);
        let backoff = base.saturating_mul(1u32 << n).min(max);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        self.close_idle();
        backoff
    }

    pub(crate) fn record_connect_success(&self) {
        if self.connect_failures_in_row.load(Ordering::Relaxed) != 0 {
            self.connect_failures_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// A warm connection, if one is idle and young enough.
    pub(crate) fn take_idle(&self, max_idle_age: Duration) -> Option<Conn> {
        while let Some(idle) = self.pop_idle() {
            if idle.idle_since.elapsed() < max_idle_age && idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange completed for the next request, unless the slot is no
    /// longer serving (then it is dropped, which closes it).
    pub(crate) fn put_idle(&self, conn: Conn) {
        if !self.serving.load(Ordering::Relaxed) {
            return;
        }
        // Reserve a place first, so racing returns never keep more than `max_idle`.
        if self.idle_len.fetch_add(1, Ordering::AcqRel) >= self.max_idle {
            self.idle_len.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut conn = conn;
        conn.release();
        self.idle.push(IdleConnection {
            conn,
            idle_since: Instant::now(),
        });
    }

    fn pop_idle(&self) -> Option<IdleConnection> {
        let idle = self.idle.pop()?;
        self.idle_len.fetch_sub(1, Ordering::AcqRel);
        Some(idle)
    }

    pub(crate) fn close_idle(&self) {
        while self.pop_idle().is_some() {}
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// Token cut at the end of a drain; every request takes the current one when it starts.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        CancellationToken::clone(&self.stop.load())
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Marks the slot of this backend as having traffic (or not). Losing traffic closes idle
    /// connections at once and cuts the requests still running after `drain_timeout`, unless
    /// traffic came back by then.
    pub(crate) fn set_serving(self: &Arc<Self>, serving: bool, drain_timeout: Duration) {
        if self.serving.swap(serving, Ordering::Relaxed) == serving {
            return;
        }
        if serving {
            self.drain_episode.fetch_add(1, Ordering::Relaxed);
        } else {
            self.begin_drain(drain_timeout);
        }
    }

    fn begin_drain(self: &Arc<Self>, drain_timeout: Duration) {
        let episode = self.drain_episode.fetch_add(1, Ordering::Relaxed) + 1;
        self.close_idle();
        let backend = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            backend.end_drain(episode);
        });
    }

    fn end_drain(&self, episode: u64) {
        if self.drain_episode.load(Ordering::Relaxed) != episode {
            return;
        }
        let cut = self.in_flight();
        let old = self.stop.swap(Arc::new(CancellationToken::new()));
        old.cancel();
        if cut > 0 {
            tracing::warn!(backend = %self.addr, slot = %self.slot, requests = cut,
                "drain timeout reached: cutting requests still in flight");
        }
    }

    /// The backend left the route table: its health checks stop and, after the drain timeout,
    /// whatever still runs on it is cut.
    pub(crate) fn retire(self: &Arc<Self>, drain_timeout: Duration) {
        self.retired.cancel();
        self.serving.store(false, Ordering::Relaxed);
        self.begin_drain(drain_timeout);
    }
}
