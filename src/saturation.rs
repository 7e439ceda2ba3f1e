//! pgpool's client slots in use, so a full pool (clients that hang, or "sorry, too many clients
//! already") shows before it happens.
//!
//! Reads: pgpool's child processes through PCP (`pcp_proc_info`), every [`EVERY`] (or probe
//! interval, if longer) while pgpool runs. Changes: the
//! `pgpool_client_connections{,_max}` gauges and `State::pgpool_clients` (for `/status`).
//! Per-backend connections come with the reconcile loop's probes instead (see
//! [`crate::reconcile`]): the sidecar has its own session on every node already.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Ctx;

/// Each PCP call costs a fork and exec of the tool, a worker process in pgpool, and three `LOG`
/// lines of pgpool's (`forked new pcp worker`, …) that no setting silences: sampled as often as
/// the bundled Prometheus scrapes, not every probe.
const EVERY: Duration = Duration::from_secs(5);

/// The tool reads a few kB from pgpool's shared memory; more than this is a pgpool in trouble.
const PCP_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<Ctx>) {
    let max = crate::pgpool::conf::num_init_children(&ctx.cfg);
    ctx.metrics
        .pgpool_client_connections_max
        .set(max.unwrap_or(0).into());
    let mut tick = tokio::time::interval(ctx.cfg.probe_interval.max(EVERY));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last failure, so a streak of them is logged once, not every tick.
    let mut failing: Option<String> = None;
    loop {
        tick.tick().await;
        if !ctx.with_state(|s| s.pgpool_started) {
            continue;
        }
        let slots = match ctx.pgpool.client_slots(PCP_TIMEOUT).await {
            Ok(slots) => {
                if failing.take().is_some() {
                    tracing::info!("pgpool's client slots can be read again");
                }
                Some(slots)
            }
            Err(e) => {
                let message = e.to_string();
                if failing.is_none() {
                    tracing::warn!(error = %message, "cannot read pgpool's client slots");
                } else {
                    tracing::debug!(error = %message, "cannot read pgpool's client slots");
                }
                failing = Some(message);
                None
            }
        };
        // Unknown reads as 0, not as the last value: a pgpool that stopped answering PCP has
        // stopped serving clients too (pgpool_sidecar_up says which).
        ctx.metrics
            .pgpool_client_connections
            .set(slots.map_or(0, |s| s.in_use.into()));
        ctx.with_state(|s| s.pgpool_clients = slots);
    }
}
