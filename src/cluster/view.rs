//! The pure layer's data: what the reconcile loop observed, as plain values. A leaf module:
//! it imports nothing of the crate, so the I/O modules depend on it and never the reverse.
//!
//! Reads and changes nothing; it only defines types.

use serde::Serialize;

/// What the sidecar needs to know of a node's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ContainerStatus {
    Missing,
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Removing,
}

impl ContainerStatus {
    pub fn is_up(&self) -> bool {
        matches!(self, ContainerStatus::Running)
    }
}

/// What one probe saw of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct PgState {
    pub in_recovery: bool,
    pub system_identifier: u64,
    pub timeline: u32,
    /// Primary: current WAL insert position. Standby: the higher of received and replayed.
    pub lsn: u64,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    /// Standby: whether its WAL receiver is streaming, and from which host.
    pub streaming: bool,
    pub upstream_host: Option<String>,
    /// Databases other than postgres/template0/template1: a cluster with any is somebody's data.
    pub user_databases: Vec<String>,
    pub wal_receiver_paused: bool,
    /// Client backends in `pg_stat_activity` (every session counts against `max_connections`,
    /// pgpool's and the sidecar's too).
    pub client_backends: u32,
    pub max_connections: u32,
}

/// pgpool's status of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolStatus {
    Up,
    Waiting,
    Down,
    Unused,
    Quarantine,
}

impl PoolStatus {
    pub const ALL: [PoolStatus; 5] = [
        PoolStatus::Up,
        PoolStatus::Waiting,
        PoolStatus::Down,
        PoolStatus::Unused,
        PoolStatus::Quarantine,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            PoolStatus::Up => "up",
            PoolStatus::Waiting => "waiting",
            PoolStatus::Down => "down",
            PoolStatus::Unused => "unused",
            PoolStatus::Quarantine => "quarantine",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        PoolStatus::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// pgpool routes queries to it (waiting = up, no connection made yet).
    pub fn is_serving(&self) -> bool {
        matches!(self, PoolStatus::Up | PoolStatus::Waiting)
    }
}

/// Everything known about one node at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeView {
    pub id: usize,
    pub name: String,
    /// None when Docker could not be asked.
    pub container: Option<ContainerStatus>,
    /// None when the SQL probe failed.
    pub pg: Option<PgState>,
    /// Consecutive failed probes.
    pub probe_failures: u32,
    pub pool: Option<PoolStatus>,
    /// The primary's `pg_stat_replication` says this node streams from it.
    pub streaming_from_primary: bool,
    /// A recovery job owns the node right now; leave it alone.
    pub busy: bool,
    /// Fenced after a failover: stays down until recovery takes it back.
    pub fenced: bool,
    /// Consecutive passes this reachable standby of the cluster did not stream from the primary.
    pub not_streaming_passes: u32,
    /// Bytes the standby has yet to replay, as the primary sees it.
    pub lag_bytes: Option<u64>,
    /// The id of the node's own container, as last inspected: Docker events of any other
    /// container (a `docker-compose run` of the same service, a job) are not about this node.
    pub container_id: Option<String>,
    /// An operator stopped it through the Docker API: it stays down until started again.
    pub stopped_on_purpose: bool,
    /// Its process exited by itself (no stop request through the API): start it again.
    pub died: bool,
    /// A recovery of it was cut short by a restart of the sidecar: run it again.
    pub redo: Option<Redo>,
    /// Docker events that took it down, counted when the pass began (see `State::down_events`).
    pub down_events: u64,
}

/// A recovery found in flight at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Redo {
    /// Through the whole ladder again.
    Recovery,
    /// A rebuild again: its data directory may be half copied.
    Rebuild,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
    /// The node the sidecar holds to be primary (its own authoritative state).
    pub primary: Option<usize>,
    /// The cluster's system identifier, learned from the primary.
    pub system_identifier: Option<u64>,
    /// The state generation (primary changes) this view was observed under.
    pub generation: u64,
    /// The primary's `pg_stat_replication` was read in this pass: then it alone says who
    /// streams from the primary.
    pub replication_seen: bool,
    /// The primary the state file named at start-up, until a primary is adopted.
    pub remembered_primary: Option<usize>,
}

/// A Docker event, as the rules need it.
#[derive(Debug, Clone, Default)]
pub struct EventFacts {
    pub container_id: String,
    /// `com.docker.compose.oneoff=True` or a job container.
    pub oneoff: bool,
    pub action: String,
    /// For `kill`: the signal sent.
    pub signal: Option<String>,
}

/// A rung of the recovery ladder: how a node comes back as a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rung {
    /// Start it, re-point it, attach it: its data is kept as it is.
    Attach,
    /// `pg_rewind` onto the primary's timeline: the un-replicated tail is discarded.
    Rewind,
    /// Empty the data directory and copy the primary: everything on the node is discarded.
    Rebuild,
}

impl Rung {
    pub fn as_str(&self) -> &'static str {
        match self {
            Rung::Attach => "attach",
            Rung::Rewind => "rewind",
            Rung::Rebuild => "rebuild",
        }
    }
}

/// What a node about to be recovered is known to hold, before anything is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryFacts {
    /// The operator asked for a rebuild, or the node's slot was lost (its WAL is gone).
    pub force_rebuild: bool,
    /// A fenced old primary: it may have written WAL the new primary lacks, so it is never
    /// started as it is.
    pub fenced: bool,
    /// Its data directory holds no cluster at all (a recreated container on a lost volume).
    pub empty: bool,
    /// Its control file says it ran with `wal_log_hints` on or with data checksums: pg_rewind
    /// can rewind it (see [`crate::cluster::control_file_rewindable`]).
    pub rewindable: bool,
    /// A rewind or rebuild job of this node was cut short by a restart of the sidecar: the
    /// data directory is the sidecar's own half-written work (its wipe was allowed when the job
    /// started), whatever its control file now says or fails to say.
    pub rewrite_in_flight: bool,
}

/// Whose data a stopped node holds, read offline (`pg_controldata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataIdentity {
    Empty,
    /// This cluster's system identifier.
    Member,
    /// Another cluster's, but seen online with no user database: a fresh initdb.
    FreshInitdb,
    /// Another cluster's data, or an identifier that could not be read.
    Foreign(String),
}
