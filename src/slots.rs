//! WAL retention: one physical replication slot per standby on the primary, so a standby that was
//! away catches up from the primary's WAL instead of being rebuilt — until the primary's
//! `max_slot_wal_keep_size` (the guard against a long-gone standby filling the disk) gives that
//! WAL up, after which the recovery ladder rebuilds the standby.
//!
//! Reads: the primary's `pg_replication_slots` (only slots named `sidecar_…`) and its
//! `max_slot_wal_keep_size`, once per reconcile pass. Changes: creates slots for the configured
//! standbys, drops ours that belong to no standby any more (removed nodes, the primary's own),
//! sets the guard, re-points a streaming standby that does not use its slot; on a promotion the
//! new primary's stale slots go and every standby's slot is made there at once; a node about to be
//! rebuilt gets a fresh slot; a node that became a standby loses the stale slots it held as a
//! primary (pg_rewind keeps them, and they would hold WAL back on it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::postgres::{PgError, Session, Slot};
use crate::state::Ctx;

pub use crate::cluster::{slot_name, SLOT_PREFIX as PREFIX};

/// One configured node other than the primary, as the slot rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotNode {
    pub id: usize,
    pub slot: String,
    /// It should have a slot: slots are on and it is not another cluster's node.
    pub wanted: bool,
    /// It streams from the primary right now.
    pub streaming: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    Create {
        slot: String,
    },
    Drop {
        slot: String,
    },
    /// The standby streams without its slot, or through one it should not use: re-pointing it
    /// writes the right `primary_slot_name` (or none).
    Repoint {
        node: usize,
    },
}

/// The actions that make the primary's slots match the nodes. Pure, for unit tests.
pub fn plan(nodes: &[SlotNode], existing: &[Slot]) -> Vec<SlotAction> {
    let mut plan = Vec::new();
    let have: BTreeMap<&str, &Slot> = existing.iter().map(|s| (s.name.as_str(), s)).collect();
    let wanted: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.wanted)
        .map(|n| n.slot.as_str())
        .collect();
    for n in nodes.iter().filter(|n| n.wanted) {
        match have.get(n.slot.as_str()) {
            None => plan.push(SlotAction::Create {
                slot: n.slot.clone(),
            }),
            Some(s) if !s.active && n.streaming => plan.push(SlotAction::Repoint { node: n.id }),
            Some(_) => {}
        }
    }
    for s in existing
        .iter()
        .filter(|s| !wanted.contains(s.name.as_str()))
    {
        if !s.active {
            plan.push(SlotAction::Drop {
                slot: s.name.clone(),
            });
        } else if let Some(n) = nodes.iter().find(|n| n.slot == s.name) {
            // In use by a node that should not have one (slots turned off): it lets go of the
            // slot first, and a later pass drops it.
            plan.push(SlotAction::Repoint { node: n.id });
        }
    }
    plan
}

/// `max_slot_wal_keep_size` as `pg_settings.setting` shows it: whole MB, or -1 for no limit.
pub fn guard_setting(bytes: Option<u64>) -> String {
    match bytes {
        None => "-1".into(),
        Some(b) => b.div_ceil(1 << 20).to_string(),
    }
}

/// The configured nodes other than `primary`, with whether each should have a slot.
pub fn slot_nodes(ctx: &Ctx, primary: usize, streaming: &BTreeSet<usize>) -> Vec<SlotNode> {
    let foreign = ctx.with_state(|s| s.foreign.clone());
    (0..ctx.cfg.nodes.len())
        .filter(|&n| n != primary)
        .map(|n| SlotNode {
            id: n,
            slot: slot_name(ctx.node_name(n)),
            wanted: ctx.cfg.replication_slots && !foreign.contains(&n),
            streaming: streaming.contains(&n),
        })
        .collect()
}

/// What one pass over the primary's slots leaves for the caller, which owns the throttles.
#[derive(Debug, Default)]
pub struct Kept {
    /// Standbys to re-point so that they use their slot (or none).
    pub repoint: Vec<usize>,
    /// Why the guard could not be set, if it could not.
    pub guard_problem: Option<String>,
}

/// One reconcile pass over the primary's slots, on the probe loop's session to it.
pub async fn keep(ctx: &Ctx, session: &mut Session, primary: usize) -> Result<Kept, PgError> {
    let timeout = ctx.probe_timeout();
    let mut kept = Kept::default();
    if ctx.cfg.replication_slots {
        // The slots are still kept without it: a standby without its slot cannot catch up.
        kept.guard_problem = ensure_guard(ctx, session).await.err();
    }
    let existing = session.slots(PREFIX, timeout).await?;
    // Who streams is read after the slots, from the same server: a standby that let go of its
    // slot (an operator cleared its primary_conninfo, say) has no walsender by then, so an
    // idle slot is never taken for "streams without it" on an older view.
    let streaming: BTreeSet<usize> = session
        .replication(timeout)
        .await?
        .values()
        .filter(|r| r.state == "streaming")
        .filter_map(|r| (0..ctx.cfg.nodes.len()).find(|&n| ctx.node_name(n) == r.application_name))
        .collect();
    let nodes = slot_nodes(ctx, primary, &streaming);
    record(ctx, &nodes, &existing);
    for action in plan(&nodes, &existing) {
        match action {
            SlotAction::Create { slot } => {
                let r = session.create_slot(&slot, timeout).await;
                count(ctx, "create", &slot, &r);
            }
            SlotAction::Drop { slot } => {
                let r = session.drop_slot(&slot, timeout).await;
                count(ctx, "drop", &slot, &r);
            }
            SlotAction::Repoint { node } => kept.repoint.push(node),
        }
    }
    Ok(kept)
}

/// Sets the primary's `max_slot_wal_keep_size` to the configured guard when it differs. A value
/// given on the server's command line outranks ALTER SYSTEM: that is reported, not fought.
async fn ensure_guard(ctx: &Ctx, session: &mut Session) -> Result<(), String> {
    let timeout = ctx.probe_timeout();
    let want = guard_setting(ctx.cfg.max_slot_wal_keep_size);
    let rows = session
        .query(
            "SELECT setting, source FROM pg_settings WHERE name = 'max_slot_wal_keep_size'",
            timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
    let row = match rows.first() {
        Some(r) => Some(
            crate::postgres::columns(
                session.name(),
                "max_slot_wal_keep_size",
                r,
                &["setting", "source"],
            )
            .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let have = row
        .as_ref()
        .and_then(|get| get("setting"))
        .unwrap_or_default();
    let source = row
        .as_ref()
        .and_then(|get| get("source"))
        .unwrap_or_default();
    if have == want {
        return Ok(());
    }
    if !matches!(source, "default" | "configuration file") {
        return Err(format!(
            "max_slot_wal_keep_size is {have}MB from the server's {source}, not the configured {want}MB; \
             remove it there so the sidecar can set it"
        ));
    }
    let value = if want == "-1" {
        want.clone()
    } else {
        format!("{want}MB")
    };
    session
        .set_setting("max_slot_wal_keep_size", &value, timeout)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(value = %value, "max_slot_wal_keep_size set on the primary");
    Ok(())
}

/// Publishes what the primary's slots hold, per node, for `/status` and the metrics.
fn record(ctx: &Ctx, nodes: &[SlotNode], existing: &[Slot]) {
    let by_node: BTreeMap<usize, Slot> = nodes
        .iter()
        .filter_map(|n| {
            existing
                .iter()
                .find(|s| s.name == n.slot)
                .map(|s| (n.id, s.clone()))
        })
        .collect();
    ctx.with_state(|s| s.slots = by_node);
}

/// Logs and counts a slot change; a call that found nothing to change is neither.
fn count(ctx: &Ctx, action: &str, slot: &str, result: &Result<bool, PgError>) {
    let label = match result {
        Ok(false) => return,
        Ok(true) => {
            tracing::info!(slot, action, "replication slot changed on the primary");
            "success"
        }
        Err(e) => {
            tracing::warn!(slot, action, error = %e, "replication slot change failed");
            "failure"
        }
    };
    ctx.metrics
        .slot_actions
        .with_label_values(&[action, label])
        .inc();
}

/// Makes sure `primary` has the slot of `node`; the slot name to configure on the standby, or
/// `None` when slots are off or the slot cannot be made (the standby then streams without one
/// rather than not at all).
pub async fn ensure_for(ctx: &Ctx, primary: usize, node: usize) -> Option<String> {
    if !wanted(ctx, node) {
        return None;
    }
    let slot = slot_name(ctx.node_name(node));
    let mut session = ctx.sessions[primary].lock().await;
    // One the guard invalidated holds nothing; a fresh one reserves WAL from now on. (The
    // recovery ladder reads `lost` before it gets here: it is its signal to rebuild.)
    let lost = find(&mut session, &slot)
        .await
        .is_some_and(|s| !s.active && s.wal_status == "lost");
    if lost {
        let r = session.drop_slot(&slot, SLOT_CALL_TIMEOUT).await;
        count(ctx, "drop", &slot, &r);
    }
    let r = session.create_slot(&slot, SLOT_CALL_TIMEOUT).await;
    count(ctx, "create", &slot, &r);
    r.ok().map(|_| slot)
}

/// A just-promoted primary: slots it kept from an earlier time as primary are stale (their WAL
/// positions are of another era, maybe `lost`), so the idle ones go; then every standby gets
/// its slot, the absent ones too, before any WAL of the new timeline could be given up.
pub async fn on_promotion(ctx: &Ctx, primary: usize) {
    if !ctx.cfg.replication_slots {
        return;
    }
    let mut session = ctx.sessions[primary].lock().await;
    if let Ok(stale) = session.slots(PREFIX, SLOT_CALL_TIMEOUT).await {
        for s in stale.iter().filter(|s| !s.active) {
            let r = session.drop_slot(&s.name, SLOT_CALL_TIMEOUT).await;
            count(ctx, "drop", &s.name, &r);
        }
    }
    // No idle slot is left, so none can be lost: plain creation, on the one session.
    for node in (0..ctx.cfg.nodes.len()).filter(|&n| n != primary && wanted(ctx, n)) {
        let slot = slot_name(ctx.node_name(node));
        let r = session.create_slot(&slot, SLOT_CALL_TIMEOUT).await;
        count(ctx, "create", &slot, &r);
    }
}

const SLOT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh slot for a node about to be rebuilt: one that was invalidated by the guard holds no
/// WAL, and a new one reserves WAL from before the base backup starts.
pub async fn reset_for(ctx: &Ctx, primary: usize, node: usize) -> Option<String> {
    if !wanted(ctx, node) {
        return None;
    }
    let slot = slot_name(ctx.node_name(node));
    let r = ctx.sessions[primary]
        .lock()
        .await
        .drop_slot(&slot, SLOT_CALL_TIMEOUT)
        .await;
    count(ctx, "drop", &slot, &r);
    ensure_for(ctx, primary, node).await
}

/// Whether the guard made the primary give up WAL that `node`'s slot held: the node cannot catch
/// up by streaming any more.
pub async fn lost(ctx: &Ctx, primary: usize, node: usize) -> bool {
    if !ctx.cfg.replication_slots {
        return false;
    }
    let slot = slot_name(ctx.node_name(node));
    find(&mut *ctx.sessions[primary].lock().await, &slot)
        .await
        .is_some_and(|s| s.wal_status == "lost")
}

/// The sidecar's slot named `slot` on the session's server, if it answers and has it.
async fn find(session: &mut Session, slot: &str) -> Option<Slot> {
    let all = session.slots(PREFIX, SLOT_CALL_TIMEOUT).await.ok()?;
    all.into_iter().find(|s| s.name == slot)
}

/// Drops the sidecar's slots on a node that is now a standby: left from its time as primary,
/// they would make it keep WAL nobody reads.
pub async fn drop_local(ctx: &Ctx, node: usize) {
    let mut session = ctx.sessions[node].lock().await;
    let Ok(stale) = session.slots(PREFIX, SLOT_CALL_TIMEOUT).await else {
        return;
    };
    for s in stale.into_iter().filter(|s| !s.active) {
        if let Ok(true) = session.drop_slot(&s.name, SLOT_CALL_TIMEOUT).await {
            tracing::info!(node = %ctx.node_name(node), slot = %s.name, "stale replication slot of its time as primary dropped");
        }
    }
}

fn wanted(ctx: &Ctx, node: usize) -> bool {
    ctx.cfg.replication_slots && !ctx.with_state(|s| s.foreign.contains(&node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: usize, wanted: bool, streaming: bool) -> SlotNode {
        SlotNode {
            id,
            slot: slot_name(&format!("pg-{id}")),
            wanted,
            streaming,
        }
    }

    fn slot(name: &str, active: bool) -> Slot {
        Slot {
            name: name.into(),
            active,
            wal_status: "reserved".into(),
            retained_bytes: Some(0),
        }
    }

    #[test]
    fn names_are_valid_slot_names() {
        assert_eq!(slot_name("pg-1"), "sidecar_pg_1");
        assert_eq!(slot_name("DB.Node"), "sidecar_db_node");
        assert_eq!(slot_name(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn creates_missing_slots_even_for_absent_standbys() {
        let nodes = [node(1, true, true), node(2, true, false)];
        let existing = [slot("sidecar_pg_1", true)];
        assert_eq!(
            plan(&nodes, &existing),
            vec![SlotAction::Create {
                slot: "sidecar_pg_2".into()
            }]
        );
    }

    #[test]
    fn drops_only_idle_slots_of_nobody() {
        let nodes = [node(1, true, true)];
        let existing = [
            slot("sidecar_pg_1", true),
            slot("sidecar_pg_0", false),
            slot("sidecar_pg_9", true),
        ];
        assert_eq!(
            plan(&nodes, &existing),
            vec![SlotAction::Drop {
                slot: "sidecar_pg_0".into()
            }]
        );
    }

    #[test]
    fn repoints_a_streaming_standby_that_does_not_use_its_slot() {
        let nodes = [node(1, true, true), node(2, true, false)];
        let existing = [slot("sidecar_pg_1", false), slot("sidecar_pg_2", false)];
        assert_eq!(
            plan(&nodes, &existing),
            vec![SlotAction::Repoint { node: 1 }]
        );
    }

    #[test]
    fn slots_turned_off_release_then_drop() {
        let nodes = [node(1, false, true), node(2, false, false)];
        let existing = [slot("sidecar_pg_1", true), slot("sidecar_pg_2", false)];
        assert_eq!(
            plan(&nodes, &existing),
            vec![
                SlotAction::Repoint { node: 1 },
                SlotAction::Drop {
                    slot: "sidecar_pg_2".into()
                }
            ]
        );
    }

    #[test]
    fn guard_in_whole_megabytes() {
        assert_eq!(guard_setting(None), "-1");
        assert_eq!(guard_setting(Some(1 << 30)), "1024");
        assert_eq!(guard_setting(Some((64 << 20) + 1)), "65");
    }
}
