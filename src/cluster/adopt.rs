//! The rules for adopting a plain official-image primary (no replication role, initdb's
//! pg_hba.conf, `wal_log_hints` off): which node may be touched at all, and what its role,
//! pg_hba.conf and `wal_log_hints` still need. Plain data in, a verdict out.
//!
//! Reads and changes nothing; [`crate::adopt`] observes, asks these rules and acts.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Serialize;

use super::{ClusterView, ContainerStatus};

/// Why a node may not be adopted (no role created, no pg_hba.conf edited, nothing set on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAdoptable {
    #[error("no primary is known")]
    NoPrimary,
    #[error("node {0} is not the current primary")]
    NotThePrimary(usize),
    #[error("the observation is older than the last change of primary")]
    StaleView,
    #[error("an operation holds the primary")]
    Busy,
    #[error("the node is fenced")]
    Fenced,
    #[error("the primary's container is not running")]
    ContainerNotRunning,
    #[error("the running container is not the one observed as the primary")]
    OtherContainer,
    #[error("the primary does not answer")]
    Unreachable,
    #[error("the node is in recovery (a standby)")]
    InRecovery,
    #[error("the node's system identifier is not this cluster's")]
    Foreign,
}

/// Whether `node` may be adopted on the strength of `view`: it is the primary the sidecar holds,
/// the view was taken under the generation still current, it is neither fenced nor held by an
/// operation, its own container runs, and it answers as a writable member of this cluster.
/// Another cluster's server, a fenced old primary or a standby is never touched.
pub fn may_adopt(
    view: &ClusterView,
    node: usize,
    current_generation: u64,
) -> Result<(), NotAdoptable> {
    let primary = view.primary.ok_or(NotAdoptable::NoPrimary)?;
    if primary != node {
        return Err(NotAdoptable::NotThePrimary(node));
    }
    if view.generation != current_generation {
        return Err(NotAdoptable::StaleView);
    }
    let n = view
        .nodes
        .get(node)
        .ok_or(NotAdoptable::NotThePrimary(node))?;
    if n.fenced {
        return Err(NotAdoptable::Fenced);
    }
    if n.busy {
        return Err(NotAdoptable::Busy);
    }
    if n.container != Some(ContainerStatus::Running) {
        return Err(NotAdoptable::ContainerNotRunning);
    }
    let pg = n.pg.as_ref().ok_or(NotAdoptable::Unreachable)?;
    if pg.in_recovery {
        return Err(NotAdoptable::InRecovery);
    }
    if !n.is_member(view.system_identifier) {
        return Err(NotAdoptable::Foreign);
    }
    Ok(())
}

/// The same rule on what the node says right now, and on the container found to exec in: the
/// view may be a pass old, and a container recreated meanwhile is not the one observed.
pub fn confirm_primary(
    view: &ClusterView,
    node: usize,
    fresh: &ServerFacts,
    container_id: &str,
) -> Result<(), NotAdoptable> {
    let n = view
        .nodes
        .get(node)
        .ok_or(NotAdoptable::NotThePrimary(node))?;
    if n.container_id.as_deref() != Some(container_id) {
        return Err(NotAdoptable::OtherContainer);
    }
    if fresh.in_recovery {
        return Err(NotAdoptable::InRecovery);
    }
    if view.system_identifier != Some(fresh.system_identifier) {
        return Err(NotAdoptable::Foreign);
    }
    Ok(())
}

/// What the primary says about itself, read right before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerFacts {
    pub in_recovery: bool,
    pub system_identifier: u64,
    /// `SHOW hba_file` and `SHOW data_directory`.
    pub hba_file: String,
    pub data_directory: String,
    /// `SHOW ssl`: libpq's default `sslmode=prefer` then uses TLS, so `hostssl` rules match the
    /// standbys' connections and `hostnossl` ones do not.
    pub ssl: bool,
    pub wal_log_hints: bool,
    pub data_checksums: bool,
    /// `pg_settings.pending_restart` of `wal_log_hints`: set, waiting for a restart.
    pub wal_log_hints_pending: bool,
}

/// The functions pg_rewind calls on its source, as `GRANT EXECUTE ON FUNCTION` names them.
pub const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// The replication role as the primary has it (`pg_roles`, `pg_authid`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoleFacts {
    pub can_login: bool,
    pub replication: bool,
    pub superuser: bool,
    /// Its password is stored as a SCRAM-SHA-256 verifier (the rule the sidecar adds asks for
    /// scram-sha-256, which an md5 hash or no password cannot pass).
    pub scram_password: bool,
    /// Of [`REWIND_FUNCTIONS`], those it may not execute.
    pub missing_grants: Vec<String>,
}

/// What to do about the role itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleStep {
    /// The replication user is the configured superuser: nothing to create or grant.
    Superuser,
    /// No such role: create it `WITH REPLICATION LOGIN` and its password (as a verifier).
    Create,
    /// It exists without these attributes: add them (its password is left as it is).
    Alter { replication: bool, login: bool },
    /// It has what it needs.
    Keep,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolePlan {
    pub step: RoleStep,
    /// Functions to grant EXECUTE on, from [`REWIND_FUNCTIONS`] only.
    pub grants: Vec<&'static str>,
}

impl RolePlan {
    /// The `/status` word for what was found or done.
    pub fn status(&self) -> &'static str {
        match self.step {
            RoleStep::Superuser => "superuser",
            RoleStep::Create => "created",
            RoleStep::Alter { .. } => "updated",
            RoleStep::Keep if !self.grants.is_empty() => "granted",
            RoleStep::Keep => "present",
        }
    }

    pub fn changes_anything(&self) -> bool {
        !matches!(self.step, RoleStep::Superuser | RoleStep::Keep) || !self.grants.is_empty()
    }
}

/// What the replication role needs. `role` is None when it does not exist. A superuser role
/// opens replication connections and reads any file without REPLICATION or grants.
pub fn role_plan(user_is_superuser: bool, role: Option<&RoleFacts>) -> RolePlan {
    if user_is_superuser {
        return RolePlan {
            step: RoleStep::Superuser,
            grants: vec![],
        };
    }
    let Some(r) = role else {
        return RolePlan {
            step: RoleStep::Create,
            grants: REWIND_FUNCTIONS.to_vec(),
        };
    };
    let replication = !r.replication && !r.superuser;
    let login = !r.can_login;
    let step = if replication || login {
        RoleStep::Alter { replication, login }
    } else {
        RoleStep::Keep
    };
    let grants = if r.superuser {
        vec![]
    } else {
        REWIND_FUNCTIONS
            .into_iter()
            .filter(|f| r.missing_grants.iter().any(|m| m == f))
            .collect()
    };
    RolePlan { step, grants }
}

/// One row of `pg_hba_file_rules`, as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HbaRule {
    pub line: Option<u32>,
    /// `host`, `hostssl`, `hostnossl`, `hostgssenc`, `hostnogssenc`, `local`; None on an error row.
    pub kind: Option<String>,
    pub databases: Vec<String>,
    pub users: Vec<String>,
    /// `all`, `samehost`, `samenet`, an IP address, or a host name.
    pub address: Option<String>,
    pub netmask: Option<String>,
    pub method: Option<String>,
    /// Set when the line does not parse: then PostgreSQL does not load the file at all.
    pub error: Option<String>,
}

/// Whether pg_hba.conf lets the replication user stream from the cluster's networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HbaVerdict {
    /// Every subnet is matched first by a rule the sidecar's password passes.
    Covered,
    /// These subnets are matched by no rule: lines appended at the end would take effect.
    Missing(Vec<IpNet>),
    /// An earlier rule rejects (or asks for what a password cannot give) connections from the
    /// subnet: a line appended after it would never be reached.
    Blocked {
        line: Option<u32>,
        subnet: IpNet,
        why: String,
    },
    /// A line does not parse: PostgreSQL keeps the old rules on reload whatever is appended.
    Broken { line: Option<u32>, error: String },
    /// The primary's container has no address on a Docker network (host networking?): which
    /// addresses standbys come from is not known.
    NoNetwork,
}

impl HbaVerdict {
    /// The `/status` word for a verdict that needs no change, or why none can be made.
    pub fn status(&self) -> String {
        match self {
            HbaVerdict::Covered => "present".into(),
            HbaVerdict::Missing(nets) => format!(
                "missing: {}",
                nets.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            HbaVerdict::Blocked { line, subnet, why } => {
                format!("blocked: {} ({subnet}) {why}", line_name(*line))
            }
            HbaVerdict::Broken { line, error } => format!("error: {}: {error}", line_name(*line)),
            HbaVerdict::NoNetwork => {
                "unknown: the primary's container has no address on a Docker network".into()
            }
        }
    }
}

fn line_name(line: Option<u32>) -> String {
    line.map_or("a line of pg_hba.conf".into(), |l| {
        format!("pg_hba.conf line {l}")
    })
}

/// Three-valued: a rule's field may match for reasons the rules cannot see (group membership,
/// a regular expression, a host name's DNS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    Maybe,
    No,
}

/// How a rule's address field relates to one subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every address of the subnet.
    Whole,
    /// Some of it, or maybe (a host name).
    Part,
    None,
}

/// Methods the sidecar's password passes (ldap, radius, pam and bsd check a password too).
const PASSWORD_METHODS: [&str; 8] = [
    "trust",
    "password",
    "md5",
    "scram-sha-256",
    "ldap",
    "radius",
    "pam",
    "bsd",
];

fn kind_matches(kind: &str, ssl: bool) -> bool {
    match kind {
        "host" | "hostnogssenc" => true,
        "hostssl" => ssl,
        "hostnossl" => !ssl,
        // hostgssenc needs GSSAPI encryption, which a standby's libpq never has here; local
        // lines are for the Unix socket.
        _ => false,
    }
}

fn user_matches(users: &[String], user: &str) -> Match {
    if users.iter().any(|u| u == "all" || u == user) {
        Match::Yes
    } else if users
        .iter()
        .any(|u| u.starts_with('+') || u.starts_with('/'))
    {
        // `+group` (membership) and `/regex` (PG 16+) may include the user.
        Match::Maybe
    } else {
        Match::No
    }
}

fn reach(rule: &HbaRule, subnet: &IpNet) -> Reach {
    let Some(address) = rule.address.as_deref() else {
        return Reach::None;
    };
    match address {
        "all" => Reach::Whole,
        // The server's own subnets: the cluster's networks are among them.
        "samenet" => Reach::Whole,
        // Only the server's own addresses, from which no standby connects.
        "samehost" => Reach::None,
        _ => {
            let Ok(ip) = address.parse::<std::net::IpAddr>() else {
                // A host name: matched by reverse DNS, unknown here.
                return Reach::Part;
            };
            let net = match rule.netmask.as_deref().map(str::parse::<std::net::IpAddr>) {
                Some(Ok(mask)) => IpNet::with_netmask(ip, mask).ok(),
                Some(Err(_)) => None,
                None => IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).ok(),
            };
            match net.map(|n| n.trunc()) {
                Some(n) if n.contains(subnet) => Reach::Whole,
                Some(n) if subnet.contains(&n) => Reach::Part,
                Some(_) => Reach::None,
                // A mask that is no prefix: be careful, it may overlap.
                None => Reach::Part,
            }
        }
    }
}

/// Whether the rules let `user` open replication connections from every address of every
/// subnet in `subnets`. PostgreSQL takes the first rule whose type, database, user and address
/// match, so the walk stops at the first rule that may match: one the password passes covers
/// the subnet only if it surely matches all of it; a `reject` (or a method no password passes)
/// that may match any of it blocks, since a line appended after it would never be reached.
/// For a replication connection only the `replication` keyword matches the database field.
pub fn hba_verdict(rules: &[HbaRule], user: &str, subnets: &[IpNet], ssl: bool) -> HbaVerdict {
    if let Some(bad) = rules.iter().find(|r| r.error.is_some()) {
        return HbaVerdict::Broken {
            line: bad.line,
            error: bad.error.clone().unwrap_or_default(),
        };
    }
    if subnets.is_empty() {
        return HbaVerdict::NoNetwork;
    }
    let mut missing = Vec::new();
    'subnets: for subnet in subnets {
        for rule in rules {
            if !rule.kind.as_deref().is_some_and(|k| kind_matches(k, ssl)) {
                continue;
            }
            if !rule.databases.iter().any(|d| d == "replication") {
                continue;
            }
            let user_match = user_matches(&rule.users, user);
            let reach = reach(rule, subnet);
            if user_match == Match::No || reach == Reach::None {
                continue;
            }
            let method = rule.method.as_deref().unwrap_or("");
            if PASSWORD_METHODS.contains(&method) {
                if user_match == Match::Yes && reach == Reach::Whole {
                    continue 'subnets;
                }
                // Covers part of it, or maybe: look on, the rest must be covered too.
                continue;
            }
            let why = if method == "reject" {
                "rejects replication connections from the cluster network".to_string()
            } else {
                format!(
                    "asks for {method} authentication, which the sidecar's password cannot pass"
                )
            };
            return HbaVerdict::Blocked {
                line: rule.line,
                subnet: *subnet,
                why,
            };
        }
        missing.push(*subnet);
    }
    if missing.is_empty() {
        HbaVerdict::Covered
    } else {
        HbaVerdict::Missing(missing)
    }
}

/// The comment line written before the sidecar's pg_hba.conf lines.
pub const HBA_COMMENT: &str = "# added by pgpool-sidecar: replication from the cluster network";

/// The pg_hba.conf line that lets `user` stream from `subnet`. The user is always quoted (so a
/// name like `all` or `/x` means that role, not a keyword or a pattern); a `"` in it is doubled,
/// as pg_hba.conf reads it.
pub fn hba_line(user: &str, subnet: &IpNet) -> String {
    format!(
        "host replication \"{}\" {subnet} scram-sha-256",
        user.replace('"', "\"\"")
    )
}

/// The sidecar edits pg_hba.conf only where it lies in the data directory: a file elsewhere
/// (a bind mount, a config management's) belongs to someone who would lose the change, or
/// overwrite it. Compared by path components, with no `..` allowed.
pub fn hba_file_inside(hba_file: &str, data_directory: &str) -> bool {
    let (file, dir) = (Path::new(hba_file), Path::new(data_directory));
    let plain = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
    };
    plain(file) && plain(dir) && file != dir && file.starts_with(dir)
}

/// What `wal_log_hints` needs, for pg_rewind to rewind this node some day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalHints {
    On,
    /// Data checksums do what wal_log_hints would.
    Checksums,
    /// Already set, waiting for the next restart.
    PendingRestart,
    /// Off and no checksums: `ALTER SYSTEM SET wal_log_hints = on`.
    Set,
}

impl WalHints {
    /// The `/status` word; after [`WalHints::Set`] the setting waits for a restart.
    pub fn status(&self) -> &'static str {
        match self {
            WalHints::On => "on",
            WalHints::Checksums => "checksums",
            WalHints::PendingRestart | WalHints::Set => "pending_restart",
        }
    }
}

pub fn wal_hints(f: &ServerFacts) -> WalHints {
    if f.wal_log_hints {
        WalHints::On
    } else if f.data_checksums {
        WalHints::Checksums
    } else if f.wal_log_hints_pending {
        WalHints::PendingRestart
    } else {
        WalHints::Set
    }
}

/// Once a check of a primary ran to its end, it is repeated only this often (an operator may
/// edit pg_hba.conf, restart the primary, drop the role).
pub const ADOPT_RECHECK: Duration = Duration::from_secs(60);
/// After a check that failed half-way (SQL, Docker).
pub const ADOPT_RETRY: Duration = Duration::from_secs(5);

/// The last check made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub node: usize,
    pub generation: u64,
    pub at: Instant,
    /// It ran to its end (whatever it found); false when a query or Docker call failed.
    pub settled: bool,
}

/// Whether the primary `node` of `generation` is to be checked now. A new primary or generation
/// is checked at once; a settled check is repeated every [`ADOPT_RECHECK`]; a failed one after
/// [`ADOPT_RETRY`], or at once when recovery `asked` (it is about to need the rule).
pub fn adopt_due(
    last: Option<&Checked>,
    node: usize,
    generation: u64,
    now: Instant,
    asked: bool,
) -> bool {
    let Some(last) = last else { return true };
    if last.node != node || last.generation != generation {
        return true;
    }
    let age = now.saturating_duration_since(last.at);
    if last.settled {
        age >= ADOPT_RECHECK
    } else {
        asked || age >= ADOPT_RETRY
    }
}

/// `/status`'s `adoption`: what the last check of the primary found and what the sidecar
/// changed on it. Never a password or verifier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Adoption {
    pub node: String,
    /// `superuser`, `created`, `updated`, `granted` or `present`.
    pub replication_role: String,
    /// `added`, `present`, `error: …`, `blocked: …` or `unknown: …`.
    pub hba_rule: String,
    /// `on`, `checksums` or `pending_restart` (takes effect at the primary's next restart).
    pub wal_log_hints: String,
    /// Unix seconds.
    pub checked_at: f64,
    /// What stands in the way, in words (also logged, once).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A re-check finds `present` what an earlier one of the same node created or added: `/status`
/// keeps saying the sidecar made it.
pub fn sticky(previous: Option<&str>, now: &str) -> String {
    match previous {
        Some(p @ ("created" | "updated" | "granted" | "added")) if now == "present" => p.into(),
        _ => now.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeView, PgState};

    const SYSID: u64 = 7_000_000_000_000_000_001;

    fn node(id: usize, in_recovery: bool) -> NodeView {
        NodeView {
            id,
            name: format!("pg-{id}"),
            container: Some(ContainerStatus::Running),
            container_id: Some(format!("c{id}")),
            pg: Some(PgState {
                in_recovery,
                system_identifier: SYSID,
                timeline: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn view() -> ClusterView {
        ClusterView {
            nodes: vec![node(0, false), node(1, true)],
            primary: Some(0),
            system_identifier: Some(SYSID),
            generation: 3,
            replication_seen: true,
            remembered_primary: None,
        }
    }

    #[test]
    fn only_the_current_writable_primary_of_this_cluster_is_adopted() {
        assert_eq!(may_adopt(&view(), 0, 3), Ok(()));
        type Spoil = fn(&mut ClusterView);
        let cases: Vec<(usize, u64, Spoil, NotAdoptable)> = vec![
            (1, 3, |_| {}, NotAdoptable::NotThePrimary(1)),
            (0, 4, |_| {}, NotAdoptable::StaleView),
            (0, 3, |v| v.primary = None, NotAdoptable::NoPrimary),
            (0, 3, |v| v.nodes[0].fenced = true, NotAdoptable::Fenced),
            (0, 3, |v| v.nodes[0].busy = true, NotAdoptable::Busy),
            (
                0,
                3,
                |v| v.nodes[0].container = Some(ContainerStatus::Paused),
                NotAdoptable::ContainerNotRunning,
            ),
            (
                0,
                3,
                |v| v.nodes[0].container = None,
                NotAdoptable::ContainerNotRunning,
            ),
            (0, 3, |v| v.nodes[0].pg = None, NotAdoptable::Unreachable),
            (
                0,
                3,
                |v| v.nodes[0].pg.as_mut().unwrap().in_recovery = true,
                NotAdoptable::InRecovery,
            ),
            (
                0,
                3,
                |v| v.nodes[0].pg.as_mut().unwrap().system_identifier = 42,
                NotAdoptable::Foreign,
            ),
            (0, 3, |v| v.system_identifier = None, NotAdoptable::Foreign),
        ];
        for (node, generation, spoil, want) in cases {
            let mut v = view();
            spoil(&mut v);
            assert_eq!(may_adopt(&v, node, generation), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn fresh_facts_and_the_container_must_agree_with_the_view() {
        let fresh = ServerFacts {
            system_identifier: SYSID,
            ..Default::default()
        };
        assert_eq!(confirm_primary(&view(), 0, &fresh, "c0"), Ok(()));
        assert_eq!(
            confirm_primary(&view(), 0, &fresh, "recreated"),
            Err(NotAdoptable::OtherContainer)
        );
        let standby = ServerFacts {
            in_recovery: true,
            ..fresh.clone()
        };
        assert_eq!(
            confirm_primary(&view(), 0, &standby, "c0"),
            Err(NotAdoptable::InRecovery)
        );
        let other = ServerFacts {
            system_identifier: 42,
            ..fresh
        };
        assert_eq!(
            confirm_primary(&view(), 0, &other, "c0"),
            Err(NotAdoptable::Foreign)
        );
    }

    fn role(can_login: bool, replication: bool, superuser: bool, missing: &[&str]) -> RoleFacts {
        RoleFacts {
            can_login,
            replication,
            superuser,
            scram_password: true,
            missing_grants: missing.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_role_gets_what_it_lacks_and_nothing_else() {
        let all = REWIND_FUNCTIONS.to_vec();
        /// Replication user is the superuser, the role found, the step, the grants, the word.
        type Row = (
            bool,
            Option<RoleFacts>,
            RoleStep,
            Vec<&'static str>,
            &'static str,
        );
        let table: Vec<Row> = vec![
            (true, None, RoleStep::Superuser, vec![], "superuser"),
            (false, None, RoleStep::Create, all.clone(), "created"),
            (
                false,
                Some(role(true, true, false, &[])),
                RoleStep::Keep,
                vec![],
                "present",
            ),
            (
                false,
                Some(role(true, true, false, &REWIND_FUNCTIONS[2..])),
                RoleStep::Keep,
                all[2..].to_vec(),
                "granted",
            ),
            (
                false,
                Some(role(false, true, false, &[])),
                RoleStep::Alter {
                    replication: false,
                    login: true,
                },
                vec![],
                "updated",
            ),
            (
                false,
                Some(role(true, false, false, &REWIND_FUNCTIONS)),
                RoleStep::Alter {
                    replication: true,
                    login: false,
                },
                all.clone(),
                "updated",
            ),
            // A superuser role streams without REPLICATION and reads files without grants.
            (
                false,
                Some(role(true, false, true, &REWIND_FUNCTIONS)),
                RoleStep::Keep,
                vec![],
                "present",
            ),
            // Only the known functions are ever granted, whatever the server answered.
            (
                false,
                Some(role(true, true, false, &["pg_catalog.lo_import(text)"])),
                RoleStep::Keep,
                vec![],
                "present",
            ),
        ];
        for (is_su, facts, step, grants, status) in table {
            let plan = role_plan(is_su, facts.as_ref());
            assert_eq!(plan.step, step, "{facts:?}");
            assert_eq!(plan.grants, grants, "{facts:?}");
            assert_eq!(plan.status(), status, "{facts:?}");
            assert_eq!(
                plan.changes_anything(),
                !matches!(status, "present" | "superuser")
            );
        }
    }

    fn rule(
        line: u32,
        kind: &str,
        db: &str,
        user: &str,
        addr: &str,
        mask: &str,
        m: &str,
    ) -> HbaRule {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        HbaRule {
            line: Some(line),
            kind: opt(kind),
            databases: db.split(',').map(str::to_string).collect(),
            users: user.split(',').map(str::to_string).collect(),
            address: opt(addr),
            netmask: opt(mask),
            method: opt(m),
            error: None,
        }
    }

    /// initdb's pg_hba.conf in the official image, plus its appended line.
    fn official() -> Vec<HbaRule> {
        vec![
            rule(117, "local", "all", "all", "", "", "trust"),
            rule(
                119,
                "host",
                "all",
                "all",
                "127.0.0.1",
                "255.255.255.255",
                "trust",
            ),
            rule(
                121,
                "host",
                "all",
                "all",
                "::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "trust",
            ),
            rule(124, "local", "replication", "all", "", "", "trust"),
            rule(
                125,
                "host",
                "replication",
                "all",
                "127.0.0.1",
                "255.255.255.255",
                "trust",
            ),
            rule(
                126,
                "host",
                "replication",
                "all",
                "::1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "trust",
            ),
            rule(128, "host", "all", "all", "all", "", "scram-sha-256"),
        ]
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn the_official_images_rules_do_not_let_standbys_stream() {
        let subnets = [net("172.18.0.0/16")];
        assert_eq!(
            hba_verdict(&official(), "replicator", &subnets, false),
            HbaVerdict::Missing(subnets.to_vec())
        );
        // Once the sidecar's line is appended (as the view shows it: unquoted), it is covered.
        let mut added = official();
        added.push(rule(
            130,
            "host",
            "replication",
            "replicator",
            "172.18.0.0",
            "255.255.0.0",
            "scram-sha-256",
        ));
        assert_eq!(
            hba_verdict(&added, "replicator", &subnets, false),
            HbaVerdict::Covered
        );
    }

    #[test]
    fn hba_rules_are_matched_first_match_in_order() {
        let s = [net("172.18.0.0/16")];
        let ok = |r: Vec<HbaRule>| hba_verdict(&r, "repl", &s, false);
        let missing = HbaVerdict::Missing(s.to_vec());
        let accept =
            |addr: &str, mask: &str| rule(1, "host", "replication", "repl", addr, mask, "md5");
        let reject =
            |addr: &str, mask: &str| rule(1, "host", "replication", "all", addr, mask, "reject");
        let blocked = |why: &str| HbaVerdict::Blocked {
            line: Some(1),
            subnet: s[0],
            why: why.into(),
        };
        let rejects = "rejects replication connections from the cluster network";
        let table: Vec<(&str, Vec<HbaRule>, HbaVerdict)> = vec![
            ("all", vec![accept("all", "")], HbaVerdict::Covered),
            ("samenet", vec![accept("samenet", "")], HbaVerdict::Covered),
            (
                "samehost is only the server itself",
                vec![accept("samehost", "")],
                missing.clone(),
            ),
            (
                "wider CIDR",
                vec![accept("172.16.0.0", "255.240.0.0")],
                HbaVerdict::Covered,
            ),
            (
                "narrower CIDR",
                vec![accept("172.18.1.0", "255.255.255.0")],
                missing.clone(),
            ),
            (
                "other network",
                vec![accept("10.0.0.0", "255.0.0.0")],
                missing.clone(),
            ),
            ("other family", vec![accept("::", "::")], missing.clone()),
            (
                "a single address",
                vec![accept("172.18.0.5", "")],
                missing.clone(),
            ),
            ("host name", vec![accept("pg-1", "")], missing.clone()),
            (
                "all does not match replication",
                vec![rule(1, "host", "all", "all", "all", "", "trust")],
                missing.clone(),
            ),
            (
                "another user",
                vec![rule(1, "host", "replication", "other", "all", "", "trust")],
                missing.clone(),
            ),
            (
                "user all",
                vec![rule(
                    1,
                    "host",
                    "replication",
                    "x,all",
                    "all",
                    "",
                    "scram-sha-256",
                )],
                HbaVerdict::Covered,
            ),
            (
                "a group may or may not hold the user",
                vec![rule(
                    1,
                    "host",
                    "replication",
                    "+repl_group",
                    "all",
                    "",
                    "trust",
                )],
                missing.clone(),
            ),
            (
                "database list",
                vec![rule(
                    1,
                    "host",
                    "app,replication",
                    "repl",
                    "all",
                    "",
                    "trust",
                )],
                HbaVerdict::Covered,
            ),
            (
                "reject first",
                vec![reject("all", ""), accept("all", "")],
                blocked(rejects),
            ),
            (
                "accept first",
                vec![accept("all", ""), reject("all", "")],
                HbaVerdict::Covered,
            ),
            (
                "a reject of part of the subnet blocks",
                vec![reject("172.18.3.0", "255.255.255.0"), accept("all", "")],
                blocked(rejects),
            ),
            (
                "a reject of another network does not",
                vec![reject("10.0.0.0", "255.0.0.0"), accept("all", "")],
                HbaVerdict::Covered,
            ),
            (
                "a reject by host name may match",
                vec![reject("evil.example", ""), accept("all", "")],
                blocked(rejects),
            ),
            (
                "a reject of another user does not",
                vec![
                    rule(1, "host", "replication", "other", "all", "", "reject"),
                    accept("all", ""),
                ],
                HbaVerdict::Covered,
            ),
            (
                "a reject of a group may hold the user",
                vec![rule(
                    1,
                    "host",
                    "replication",
                    "+nobody",
                    "all",
                    "",
                    "reject",
                )],
                blocked(rejects),
            ),
            (
                "a partial accept, then a reject of the rest",
                vec![accept("172.18.0.0", "255.255.128.0"), reject("all", "")],
                blocked(rejects),
            ),
            (
                "cert cannot be passed with a password",
                vec![rule(1, "host", "replication", "repl", "all", "", "cert")],
                blocked("asks for cert authentication, which the sidecar's password cannot pass"),
            ),
            (
                "hostssl does not match without TLS",
                vec![rule(
                    1,
                    "hostssl",
                    "replication",
                    "repl",
                    "all",
                    "",
                    "reject",
                )],
                missing.clone(),
            ),
            (
                "hostnossl matches without TLS",
                vec![rule(
                    1,
                    "hostnossl",
                    "replication",
                    "repl",
                    "all",
                    "",
                    "trust",
                )],
                HbaVerdict::Covered,
            ),
            (
                "hostgssenc never matches",
                vec![rule(
                    1,
                    "hostgssenc",
                    "replication",
                    "repl",
                    "all",
                    "",
                    "trust",
                )],
                missing.clone(),
            ),
            (
                "local lines are for the socket",
                vec![rule(1, "local", "replication", "all", "", "", "trust")],
                missing.clone(),
            ),
        ];
        for (what, rules, want) in table {
            assert_eq!(ok(rules), want, "{what}");
        }
        // With TLS on, hostssl matches and hostnossl does not.
        let ssl = vec![rule(
            1,
            "hostssl",
            "replication",
            "repl",
            "all",
            "",
            "trust",
        )];
        assert_eq!(hba_verdict(&ssl, "repl", &s, true), HbaVerdict::Covered);
        let nossl = vec![rule(
            1,
            "hostnossl",
            "replication",
            "repl",
            "all",
            "",
            "trust",
        )];
        assert_eq!(hba_verdict(&nossl, "repl", &s, true), missing);
    }

    #[test]
    fn every_subnet_must_be_covered_and_errors_or_no_network_say_so() {
        let s = [net("172.18.0.0/16"), net("172.19.0.0/16")];
        let one = vec![rule(
            1,
            "host",
            "replication",
            "repl",
            "172.18.0.0",
            "255.255.0.0",
            "md5",
        )];
        assert_eq!(
            hba_verdict(&one, "repl", &s, false),
            HbaVerdict::Missing(vec![s[1]])
        );
        assert_eq!(hba_verdict(&one, "repl", &[], false), HbaVerdict::NoNetwork);
        let mut broken = official();
        broken.push(HbaRule {
            line: Some(131),
            error: Some("invalid authentication method \"scram\"".into()),
            ..Default::default()
        });
        let v = hba_verdict(&broken, "repl", &s, false);
        assert_eq!(
            v,
            HbaVerdict::Broken {
                line: Some(131),
                error: "invalid authentication method \"scram\"".into()
            }
        );
        assert_eq!(
            v.status(),
            "error: pg_hba.conf line 131: invalid authentication method \"scram\""
        );
    }

    #[test]
    fn hba_lines_quote_the_user_and_edit_only_files_in_the_data_directory() {
        let s = net("172.18.0.0/16");
        assert_eq!(
            hba_line("replicator", &s),
            "host replication \"replicator\" 172.18.0.0/16 scram-sha-256"
        );
        assert_eq!(
            hba_line("a\"b all", &net("fd00::/64")),
            "host replication \"a\"\"b all\" fd00::/64 scram-sha-256"
        );
        let data = "/var/lib/postgresql/data";
        let table = [
            ("/var/lib/postgresql/data/pg_hba.conf", data, true),
            (
                "/var/lib/postgresql/data/pg_hba.conf",
                "/var/lib/postgresql/data/",
                true,
            ),
            (
                "/var/lib/postgresql/18/docker/pg_hba.conf",
                "/var/lib/postgresql/18/docker",
                true,
            ),
            ("/etc/postgresql/pg_hba.conf", data, false),
            ("/var/lib/postgresql/data2/pg_hba.conf", data, false),
            ("/var/lib/postgresql/data/../pg_hba.conf", data, false),
            ("pg_hba.conf", "", false),
            (data, data, false),
        ];
        for (file, dir, want) in table {
            assert_eq!(hba_file_inside(file, dir), want, "{file} in {dir}");
        }
    }

    #[test]
    fn wal_log_hints_is_set_only_when_neither_it_nor_checksums_are_on() {
        let f = |wal_log_hints, data_checksums, wal_log_hints_pending| ServerFacts {
            wal_log_hints,
            data_checksums,
            wal_log_hints_pending,
            ..Default::default()
        };
        let table = [
            (f(true, false, false), WalHints::On, "on"),
            (f(true, true, false), WalHints::On, "on"),
            (f(false, true, false), WalHints::Checksums, "checksums"),
            (
                f(false, false, true),
                WalHints::PendingRestart,
                "pending_restart",
            ),
            (f(false, false, false), WalHints::Set, "pending_restart"),
        ];
        for (facts, want, status) in table {
            assert_eq!(wal_hints(&facts), want, "{facts:?}");
            assert_eq!(want.status(), status);
        }
    }

    #[test]
    fn checks_are_cheap_once_settled_and_prompt_when_needed() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let done = Checked {
            node: 0,
            generation: 3,
            at: t0,
            settled: true,
        };
        let failed = Checked {
            settled: false,
            ..done
        };
        let table = [
            (None, 0, 3, s(0), false, true),
            (Some(done), 0, 3, s(1), false, false),
            (Some(done), 0, 3, s(1), true, false),
            (Some(done), 0, 3, s(60), false, true),
            (Some(done), 1, 3, s(1), false, true),
            (Some(done), 0, 4, s(1), false, true),
            (Some(failed), 0, 3, s(1), false, false),
            (Some(failed), 0, 3, s(1), true, true),
            (Some(failed), 0, 3, s(5), false, true),
        ];
        for (last, node, generation, now, asked, want) in table {
            assert_eq!(
                adopt_due(last.as_ref(), node, generation, now, asked),
                want,
                "{last:?} {node} {generation} {asked}"
            );
        }
    }

    #[test]
    fn what_the_sidecar_made_stays_said() {
        assert_eq!(sticky(Some("created"), "present"), "created");
        assert_eq!(sticky(Some("added"), "present"), "added");
        assert_eq!(sticky(Some("added"), "error: x"), "error: x");
        assert_eq!(sticky(Some("present"), "present"), "present");
        assert_eq!(sticky(None, "present"), "present");
    }
}
