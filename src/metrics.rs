//! Prometheus metrics (prefix `pgpool_sidecar_`), in a registry of our own.
//!
//! Reads: nothing. Changes: the series below; the reconcile loop sets gauges once per probe
//! interval, failover and recovery count their actions. Known label values are initialised to 0
//! so a series exists before its first event.

use crate::cluster::Rung;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pgpool::control::PoolStatus;
use crate::pgpool::version::PgpoolVersion;

const DURATION_BUCKETS: &[f64] = &[
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

pub const ROLES: [&str; 3] = ["primary", "standby", "unknown"];

/// Every series the sidecar exports; cloned handles are cheap (Arc inside).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub up: IntGauge,
    pub backend_up: IntGaugeVec,
    pub backend_role: IntGaugeVec,
    pub backend_timeline: IntGaugeVec,
    pub primaries: IntGauge,
    pub pgpool_backend_status: IntGaugeVec,
    pub replication_streaming: IntGaugeVec,
    pub replication_lag_bytes: IntGaugeVec,
    pub replication_lag_seconds: GaugeVec,
    pub node_foreign: IntGaugeVec,
    pub failovers: IntCounterVec,
    pub failover_duration: HistogramVec,
    pub last_failover: Gauge,
    pub switchovers: IntCounterVec,
    pub switchover_duration: HistogramVec,
    pub recoveries: IntCounterVec,
    pub recovery_duration: HistogramVec,
    pub fencing_actions: IntCounterVec,
    pub docker_api_errors: IntCounterVec,
    pub pgpool_restarts: IntCounter,
    pub slot_retained_bytes: IntGaugeVec,
    pub slot_wal_status: IntGaugeVec,
    pub slot_actions: IntCounterVec,
    pub adoption_changes: IntCounterVec,
    pub resumed_operations: IntCounterVec,
    pub node_restarts: IntCounterVec,
    pub state_file_write_failures: IntCounter,
    pub node_stopped_on_purpose: IntGaugeVec,
    pub tls: crate::tls_watch::TlsMetrics,
    pub pgpool_client_connections: IntGauge,
    pub pgpool_client_connections_max: IntGauge,
    pub backend_connections: IntGaugeVec,
    pub backend_max_connections: IntGaugeVec,
    pub app_users: IntGauge,
    pub login_roles_without_pool_passwd: IntGauge,
    pub app_user_changes: IntCounterVec,
    pub app_user_sync_failures: IntCounterVec,
}

/// What the users task changes (the `change` label).
pub const APP_USER_CHANGES: [&str; 3] = ["role_created", "password_set", "pool_passwd"];
/// Where the users task can fail (the `stage` label).
pub const APP_USER_STAGES: [&str; 4] = ["declaration", "roles", "pool_passwd", "reload"];

/// What the sidecar may change on a plain primary it adopts (the `change` label).
pub const ADOPTION_CHANGES: [&str; 3] = ["replication_role", "hba_rule", "wal_log_hints"];

/// `pg_replication_slots.wal_status` values, plus `missing` for a standby without a slot.
pub const SLOT_STATUSES: [&str; 5] = ["reserved", "extended", "unreserved", "lost", "missing"];

fn name(n: &str) -> String {
    format!("pgpool_sidecar_{n}")
}

macro_rules! reg {
    ($r:expr, $m:expr) => {{
        let m = $m?;
        $r.register(Box::new(m.clone()))?;
        m
    }};
}

impl Metrics {
    /// Fails only on a metric definition the prometheus crate rejects (a programming error the
    /// unit test catches), reported instead of panicking. `pgpool_version` is the pgpool-II
    /// found at start; it does not change while the daemon runs.
    pub fn new(
        node_count: usize,
        pgpool_version: PgpoolVersion,
    ) -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let nodes: Vec<String> = (0..node_count).map(|i| i.to_string()).collect();
        let build_info = reg!(
            r,
            IntGaugeVec::new(
                Opts::new(name("build_info"), "Build information; always 1."),
                &["version"]
            )
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Which pgpool a dashboard's numbers come from: defaults and behaviour differ by version.
        let pgpool_info = reg!(
            r,
            IntGaugeVec::new(
                Opts::new(
                    name("pgpool_info"),
                    "The pgpool-II version the sidecar runs; always 1."
                ),
                &["version"]
            )
        );
        pgpool_info
            .with_label_values(&[&pgpool_version.to_string()])
            .set(1);
        let m = Metrics {
            up: reg!(
                r,
                IntGauge::new(name("up"), "1 when pgpool answered SHOW POOL_NODES.")
            ),
            backend_up: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("backend_up"),
                        "1 when the sidecar's own SQL probe of the node succeeded."
                    ),
                    &["node"]
                )
            ),
            backend_role: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("backend_role"),
                        "Role of the node as a state set (1 for the current role)."
                    ),
                    &["node", "role"]
                )
            ),
            backend_timeline: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(name("backend_timeline"), "Timeline the node is on."),
                    &["node"]
                )
            ),
            primaries: reg!(
                r,
                // Not `primary_count`: promtool reserves `_count` for histograms and summaries.
                IntGauge::new(
                    name("primaries"),
                    "Nodes that accept writes; more than 1 is split brain."
                )
            ),
            pgpool_backend_status: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("pgpool_backend_status"),
                        "pgpool's status of the node as a state set."
                    ),
                    &["node", "status"]
                )
            ),
            replication_streaming: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("replication_streaming"),
                        "1 when the standby streams from the current primary."
                    ),
                    &["node"]
                )
            ),
            replication_lag_bytes: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("replication_lag_bytes"),
                        "WAL bytes the standby has yet to replay, as the primary sees it."
                    ),
                    &["node"]
                )
            ),
            replication_lag_seconds: reg!(
                r,
                GaugeVec::new(
                    Opts::new(
                        name("replication_lag_seconds"),
                        "The primary's replay_lag for the standby (0 when idle)."
                    ),
                    &["node"]
                )
            ),
            node_foreign: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("node_foreign_data"),
                        "1 when the node holds another cluster's data and is left alone."
                    ),
                    &["node"]
                )
            ),
            failovers: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(name("failovers_total"), "Failovers of the primary."),
                    &["result"]
                )
            ),
            failover_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("failover_duration_seconds"),
                        "From detection to the new primary accepting writes."
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["result"]
                )
            ),
            last_failover: reg!(
                r,
                Gauge::new(
                    name("last_failover_timestamp_seconds"),
                    "Unix time of the last successful failover (0: none)."
                )
            ),
            switchovers: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(name("switchovers_total"), "Planned switchovers."),
                    &["result"]
                )
            ),
            switchover_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("switchover_duration_seconds"),
                        "Duration of planned switchovers."
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["result"]
                )
            ),
            recoveries: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("recoveries_total"),
                        "Nodes brought back as standbys, by method."
                    ),
                    &["node", "method", "result"]
                )
            ),
            recovery_duration: reg!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        name("recovery_duration_seconds"),
                        "Duration of node recoveries."
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                    &["node", "method", "result"]
                )
            ),
            fencing_actions: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("fencing_actions_total"),
                        "Actions taken to fence an old primary."
                    ),
                    &["action", "result"]
                )
            ),
            docker_api_errors: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(name("docker_api_errors_total"), "Failed Docker API calls."),
                    &["operation"]
                )
            ),
            pgpool_restarts: reg!(
                r,
                IntCounter::new(
                    name("pgpool_restarts_total"),
                    "Times pgpool died and was restarted."
                )
            ),
            slot_retained_bytes: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("replication_slot_retained_bytes"),
                        "WAL the primary keeps for the standby's replication slot."
                    ),
                    &["node"]
                )
            ),
            slot_wal_status: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("replication_slot_wal_status"),
                        "wal_status of the standby's slot on the primary as a state set; lost means the max_slot_wal_keep_size guard removed WAL it needs."
                    ),
                    &["node", "status"]
                )
            ),
            slot_actions: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("replication_slot_actions_total"),
                        "Replication slots created or dropped by the sidecar."
                    ),
                    &["action", "result"]
                )
            ),
            adoption_changes: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("adoption_changes_total"),
                        "Changes made to a plain primary so standbys can stream and be rewound: the replication role, a pg_hba.conf rule, wal_log_hints."
                    ),
                    &["change"]
                )
            ),
            resumed_operations: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("resumed_operations_total"),
                        "Operations found in flight in the state file at start-up (cut short by a crash or restart of the sidecar) and finished or undone."
                    ),
                    &["operation"]
                )
            ),
            node_restarts: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("node_restarts_total"),
                        "Node containers started again by the sidecar because their process exited by itself (crash, OOM, SIGKILL by PID), or at start-up because nobody stopped them on purpose."
                    ),
                    &["node", "reason"]
                )
            ),
            state_file_write_failures: reg!(
                r,
                IntCounter::new(
                    name("state_file_write_failures_total"),
                    "Failed writes of the state file: while this grows, a restart of the sidecar forgets fenced nodes and operations in flight."
                )
            ),
            node_stopped_on_purpose: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("node_stopped_on_purpose"),
                        "1 while a node stays down because an operator stopped it through the Docker API (persisted across restarts)."
                    ),
                    &["node"]
                )
            ),
            // Saturation: pgpool serves at most num_init_children clients at once, a node at
            // most max_connections sessions; the bundled alerts fire at 90 % of either.
            pgpool_client_connections: reg!(
                r,
                IntGauge::new(
                    name("pgpool_client_connections"),
                    "pgpool child processes serving a client (read through PCP); at num_init_children the next client waits for a free one, or is refused with reserved_connections set."
                )
            ),
            pgpool_client_connections_max: reg!(
                r,
                IntGauge::new(
                    name("pgpool_client_connections_max"),
                    "pgpool's num_init_children: the most clients it serves at once."
                )
            ),
            backend_connections: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("backend_connections"),
                        "Client backends on the node (pg_stat_activity), pgpool's and the sidecar's included; 0 while the node does not answer."
                    ),
                    &["node"]
                )
            ),
            backend_max_connections: reg!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        name("backend_max_connections"),
                        "The node's max_connections; 0 while the node does not answer."
                    ),
                    &["node"]
                )
            ),
            app_users: reg!(
                r,
                IntGauge::new(
                    name("app_users"),
                    "Application users declared (PGPOOL_SIDECAR_USERS or its file) and written into pool_passwd."
                )
            ),
            login_roles_without_pool_passwd: reg!(
                r,
                IntGauge::new(
                    name("login_roles_without_pool_passwd"),
                    "Login roles on the primary that nobody declared: they cannot log in through pgpool (/status lists them)."
                )
            ),
            app_user_changes: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("app_user_changes_total"),
                        "Changes made for the declared users: roles created, passwords set on the primary, pool_passwd rewritten (with a pgpool reload)."
                    ),
                    &["change"]
                )
            ),
            app_user_sync_failures: reg!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        name("app_user_sync_failures_total"),
                        "Failures while applying the declared users, by stage; the last good declaration stays in force."
                    ),
                    &["stage"]
                )
            ),
            tls: crate::tls_watch::TlsMetrics::new(&r, node_count)?,
            registry: r,
        };
        for c in APP_USER_CHANGES {
            m.app_user_changes.with_label_values(&[c]).inc_by(0);
        }
        for st in APP_USER_STAGES {
            m.app_user_sync_failures.with_label_values(&[st]).inc_by(0);
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            m.registry.register(Box::new(pc))?;
        }
        for n in &nodes {
            let n = n.as_str();
            m.backend_up.with_label_values(&[n]).set(0);
            for role in ROLES {
                m.backend_role.with_label_values(&[n, role]).set(0);
            }
            m.backend_role.with_label_values(&[n, "unknown"]).set(1);
            m.backend_timeline.with_label_values(&[n]).set(0);
            for s in PoolStatus::ALL {
                m.pgpool_backend_status
                    .with_label_values(&[n, s.as_str()])
                    .set(0);
            }
            m.replication_streaming.with_label_values(&[n]).set(0);
            m.replication_lag_bytes.with_label_values(&[n]).set(0);
            m.replication_lag_seconds.with_label_values(&[n]).set(0.0);
            m.node_foreign.with_label_values(&[n]).set(0);
            m.slot_retained_bytes.with_label_values(&[n]).set(0);
            m.backend_connections.with_label_values(&[n]).set(0);
            m.backend_max_connections.with_label_values(&[n]).set(0);
            // Known series start at 0, so "no rebuild happened" is a 0 to check, not an absence
            // that a renamed label would also produce.
            for method in [Rung::Attach, Rung::Rewind, Rung::Rebuild] {
                for result in ["success", "failure"] {
                    m.recoveries
                        .with_label_values(&[n, method.as_str(), result]);
                    m.recovery_duration
                        .with_label_values(&[n, method.as_str(), result]);
                }
            }
            for st in SLOT_STATUSES {
                m.slot_wal_status
                    .with_label_values(&[n, st])
                    .set((st == "missing") as i64);
            }
        }
        for op in crate::cluster::restart::OpKind::ALL {
            m.resumed_operations.with_label_values(&[op.as_str()]);
        }
        for n in &nodes {
            m.node_stopped_on_purpose
                .with_label_values(&[n.as_str()])
                .set(0);
            for reason in ["died", "startup"] {
                m.node_restarts.with_label_values(&[n.as_str(), reason]);
            }
        }
        for change in ADOPTION_CHANGES {
            m.adoption_changes.with_label_values(&[change]);
        }
        for action in ["create", "drop"] {
            for result in ["success", "failure"] {
                m.slot_actions.with_label_values(&[action, result]);
            }
        }
        for result in ["success", "failure"] {
            m.failovers.with_label_values(&[result]);
            m.failover_duration.with_label_values(&[result]);
            m.switchovers.with_label_values(&[result]);
            m.switchover_duration.with_label_values(&[result]);
            for action in ["kill", "stop", "disconnect"] {
                m.fencing_actions.with_label_values(&[action, result]);
            }
        }
        Ok(m)
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_exist_before_any_event() {
        let m = Metrics::new(3, PgpoolVersion::new(4, 6, 1)).unwrap();
        m.recoveries
            .with_label_values(&["1", "rebuild", "success"])
            .inc();
        let text = String::from_utf8(m.render().unwrap()).unwrap();
        // Label pairs come out sorted by name, whatever the declaration order.
        assert!(text.contains(
            "pgpool_sidecar_recoveries_total{method=\"rebuild\",node=\"1\",result=\"success\"} 1"
        ));
        assert!(text.contains("pgpool_sidecar_build_info{version=\""));
        assert!(text.contains("pgpool_sidecar_pgpool_info{version=\"4.6.1\"} 1\n"));
        assert!(text.contains("# TYPE pgpool_sidecar_pgpool_info gauge"));
        assert!(text.contains("pgpool_sidecar_backend_up{node=\"2\"} 0"));
        assert!(text.contains("pgpool_sidecar_backend_role{node=\"1\",role=\"unknown\"} 1"));
        assert!(text.contains("pgpool_sidecar_failovers_total{result=\"success\"} 0"));
        assert!(text
            .contains("pgpool_sidecar_pgpool_backend_status{node=\"0\",status=\"quarantine\"} 0"));
        assert!(text.contains("# TYPE pgpool_sidecar_failover_duration_seconds histogram"));
        assert!(text.contains("pgpool_sidecar_adoption_changes_total{change=\"hba_rule\"} 0"));
        assert!(text.contains("process_resident_memory_bytes"));
        assert!(text.contains("pgpool_sidecar_pgpool_client_connections 0\n"));
        assert!(text.contains("pgpool_sidecar_pgpool_client_connections_max 0\n"));
        assert!(text.contains("pgpool_sidecar_backend_connections{node=\"2\"} 0\n"));
        assert!(text.contains("pgpool_sidecar_backend_max_connections{node=\"0\"} 0\n"));
    }
}
