//! Checks that look at more than one setting: node references, port and slot clashes, limits
//! that depend on the node count.
//!
//! Reads: the settings above the one being checked ([`Earlier`]). Changes: the problem list.
//! A check that needs `NODES` is skipped while `NODES` itself is wrong; that is already
//! reported and further messages would only be noise.

use std::collections::{BTreeMap, BTreeSet};

use super::settings::Earlier;
use super::{parse, Checker, NodeAddr, DEFAULT_PCP_PORT, ENV_PREFIX};
use crate::pgpool::conf;

/// The PCP password shares a line of pgpool's pass file with the port and user, so its limit
/// depends on both. The answer never holds the password.
pub(super) fn pcp_password_problem(password: &str, e: &Earlier) -> Option<String> {
    let port = e.pcp_port.unwrap_or(DEFAULT_PCP_PORT);
    let user = e.pcp_user.as_deref().unwrap_or_default();
    conf::pcp_password_problem(port, user, password).map(str::to_owned)
}

/// pgpool, PCP and the HTTP server share this container's network namespace, so equal ports
/// would fail at bind time, after pgpool has half started.
pub(super) fn port_clashes(ck: &mut Checker, e: &Earlier) {
    let (Some(pcp), Some(pgpool), Some(http)) = (e.pcp_port, e.pgpool_port, e.http_listen) else {
        return;
    };
    if pcp == pgpool {
        ck.problem(
            "PCP_PORT",
            format!("is {pcp}, the same as {ENV_PREFIX}PGPOOL_PORT"),
        );
    }
    let http = http.port();
    for (other, port) in [("PCP_PORT", pcp), ("PGPOOL_PORT", pgpool)] {
        if http == port {
            ck.problem(
                "HTTP_LISTEN",
                format!("uses port {http}, the same as {ENV_PREFIX}{other}"),
            );
        }
    }
}

/// The certificate needs its key and the other way round, and all must be readable PEM: found
/// now, this is exit 64 naming the variable, not a pgpool that never starts.
pub(super) fn tls_files(ck: &mut Checker, e: &Earlier) {
    let (Some(cert), Some(key), Some(ca)) = (&e.tls_cert_file, &e.tls_key_file, &e.tls_ca_file)
    else {
        return;
    };
    for (name, message) in crate::tls::file_problems(cert.as_deref(), key.as_deref(), ca.as_deref())
    {
        ck.problem(name, message);
    }
}

/// Two standbys sharing a slot would take turns failing to stream.
pub(super) fn slot_clashes(ck: &mut Checker, e: &Earlier) {
    let (Some(true), Some(nodes)) = (e.replication_slots, e.nodes.as_deref()) else {
        return;
    };
    let mut seen = BTreeMap::new();
    for n in nodes {
        let slot = crate::cluster::slot_name(&n.host);
        // (Equal hosts are reported, or allowed with distinct ports, elsewhere.)
        let clash = seen
            .insert(slot.clone(), n.host.clone())
            .filter(|other| *other != n.host);
        if let Some(other) = clash {
            ck.problem(
                "NODES",
                format!(
                    "hosts {other:?} and {:?} would share the replication slot {slot:?}; \
                     rename one, or set PGPOOL_SIDECAR_REPLICATION_SLOTS=false",
                    n.host
                ),
            );
        }
    }
}

pub(super) fn synchronous_standbys(s: &str, e: &Earlier) -> Result<u32, String> {
    let n = parse::number::<u32>(s)?;
    match e.nodes.as_deref() {
        Some(nodes) if n as usize >= nodes.len() => Err(format!(
            "is {n} but must be less than the number of nodes ({})",
            nodes.len()
        )),
        _ => Ok(n),
    }
}

pub(super) fn preferred_primary(s: &str, e: &Earlier) -> Result<Option<usize>, String> {
    match e.nodes.as_deref() {
        Some(nodes) => resolve_node(nodes, s).map(Some),
        None => Ok(None),
    }
}

/// Every node at priority 0.
pub(super) fn no_priorities(e: &Earlier) -> Vec<i32> {
    vec![0; e.nodes.as_ref().map_or(0, Vec::len)]
}

/// Parses `host=prio,...`; without valid nodes only the syntax is checked.
pub(super) fn priorities(list: &str, e: &Earlier) -> Result<Vec<i32>, Vec<String>> {
    let nodes = e.nodes.as_deref();
    let mut priorities = no_priorities(e);
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, item) in list.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            problems.push(format!("item {} is empty", i + 1));
            continue;
        }
        let Some((host, prio)) = item.split_once('=') else {
            problems.push(format!("{item:?} is not host=priority"));
            continue;
        };
        let (host, prio) = (host.trim(), prio.trim());
        let prio = match prio.parse::<i32>() {
            Ok(p) => p,
            Err(_) => {
                problems.push(format!("{item:?}: priority {prio:?} is not an integer"));
                continue;
            }
        };
        let Some(nodes) = nodes else { continue };
        match resolve_node(nodes, host) {
            Ok(id) if !seen.insert(id) => {
                problems.push(format!("{} is given more than once", nodes[id]));
            }
            Ok(id) => priorities[id] = prio,
            Err(message) => problems.push(message),
        }
    }
    if problems.is_empty() {
        Ok(priorities)
    } else {
        Err(problems)
    }
}

/// Finds a node by `host` or, when several nodes share a host, by `host:port`.
fn resolve_node(nodes: &[NodeAddr], name: &str) -> Result<usize, String> {
    if let Some(i) = nodes.iter().position(|n| n.to_string() == name) {
        return Ok(i);
    }
    let matching: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.host.eq_ignore_ascii_case(name))
        .map(|(i, _)| i)
        .collect();
    match matching.as_slice() {
        [i] => Ok(*i),
        [] => {
            let known: Vec<String> = nodes.iter().map(NodeAddr::to_string).collect();
            Err(format!(
                "{name:?} is not in {ENV_PREFIX}NODES ({})",
                known.join(", ")
            ))
        }
        _ => Err(format!(
            "{name:?} matches several nodes; write it as host:port"
        )),
    }
}
