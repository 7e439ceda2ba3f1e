//! Container lifecycle through the Docker API (bollard).
//!
//! Reads: container state and specs of the cluster's node containers, the Docker event stream.
//! Changes: kills, stops, starts node containers, sets their restart policy, disconnects them from
//! networks, runs one-off job containers on a node's volumes, and runs commands in a running node
//! container (`exec`, to append to the primary's pg_hba.conf). Called on demand by the
//! reconcile loop, failover and recovery; every call has a timeout.
//!
//! Scope is enforced here, at the only door to Docker: a container is touched only when it carries
//! the cluster's compose project label (and the optional cluster label). Nothing else gets through.

use std::collections::HashMap;
use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerUpdateBody, EndpointSettings,
    HostConfig, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use ipnet::IpNet;
use serde::Serialize;

/// Compose's label naming the project a container belongs to.
pub const PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose's label naming the service (our node's host name).
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
/// Label put on every job container, so tests and operators can find leftovers.
pub const JOB_LABEL: &str = "pgpool-sidecar.job";
/// The compose project of the cluster a job container works for.
pub const JOB_CLUSTER_LABEL: &str = "pgpool-sidecar.cluster";
/// The node a job container works on: at most one job per node may exist.
pub const JOB_NODE_LABEL: &str = "pgpool-sidecar.node";
/// Compose marks `docker-compose run` containers with this label (value `True`): they carry
/// the service's labels but are not the node.
pub const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";

/// A one-off (`docker-compose run`) or job container: never a node, whatever its labels say.
pub fn is_oneoff(labels: &HashMap<String, String>) -> bool {
    labels
        .get(ONEOFF_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || labels.contains_key(JOB_LABEL)
}

const API_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon: {0}")]
    Unreachable(String),
    #[error("Docker {operation} timed out")]
    TimedOut { operation: &'static str },
    #[error("Docker {operation} on {container} failed: {message}")]
    Call {
        operation: &'static str,
        container: String,
        message: String,
        /// The HTTP status of the daemon's answer, when it gave one: what "already stopped"
        /// (304) or "not running" (409) is recognised by, never the message text.
        status: Option<u16>,
    },
    #[error("container {0} is outside this cluster's scope; refusing to touch it")]
    OutOfScope(String),
    #[error("no container found for node {0}")]
    NoContainer(String),
    #[error("job {name} failed with exit code {code}")]
    JobFailed { name: String, code: i64 },
    #[error("job {name} did not finish within {seconds} s and was killed")]
    JobTimedOut { name: String, seconds: u64 },
    #[error("job {job} still runs on node {node}; refusing a second job on the same volume")]
    JobRunning { node: String, job: String },
    #[error("container {0} is not running; nothing can be run in it")]
    NotRunning(String),
    #[error("command in container {container} failed with exit code {code}: {output}")]
    ExecFailed {
        container: String,
        code: i64,
        output: String,
    },
    #[error("command in container {container} did not finish within {seconds} s")]
    ExecTimedOut { container: String, seconds: u64 },
}

impl DockerError {
    /// The Docker operation, as the `operation` label of `docker_api_errors_total`.
    pub fn operation(&self) -> &'static str {
        match self {
            DockerError::Unreachable(_) => "connect",
            DockerError::TimedOut { operation } | DockerError::Call { operation, .. } => operation,
            DockerError::OutOfScope(_) => "scope",
            DockerError::NoContainer(_) => "find",
            DockerError::JobFailed { .. }
            | DockerError::JobTimedOut { .. }
            | DockerError::JobRunning { .. } => "job",
            DockerError::NotRunning(_)
            | DockerError::ExecFailed { .. }
            | DockerError::ExecTimedOut { .. } => "exec",
        }
    }
}

/// Which containers the sidecar may act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    pub project: String,
    pub label: Option<(String, String)>,
}

impl Scope {
    fn admits(&self, labels: &HashMap<String, String>) -> bool {
        labels.get(PROJECT_LABEL) == Some(&self.project)
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| labels.get(k) == Some(v))
    }
}

pub use crate::cluster::ContainerStatus;

#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub status: ContainerStatus,
    pub health: Option<String>,
    pub restart_policy: Option<String>,
    pub image: String,
    pub pgdata: String,
    /// What a job container must share with the node.
    #[serde(skip)]
    pub spec: JobSpec,
    /// The network and its aliases, when the container is on one.
    #[serde(skip)]
    pub network_aliases: Option<(String, Vec<String>)>,
    /// The subnets of the networks it is on (its address with the network's prefix length),
    /// IPv4 and IPv6: where its peers' connections come from.
    #[serde(skip)]
    pub subnets: Vec<IpNet>,
    /// The whole inspect answer: the spec to recreate the container from if it disappears.
    #[serde(skip)]
    pub raw: Box<bollard::models::ContainerInspectResponse>,
}

/// The parts of a node container a job container must share: image, mounts, network.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    pub image: String,
    /// Bind strings `source:destination[:mode]` for binds and named/anonymous volumes alike.
    pub binds: Vec<String>,
    pub network: Option<String>,
}

/// A job container of this cluster, as listed.
#[derive(Debug, Clone)]
pub struct JobContainer {
    pub id: String,
    pub name: String,
    pub running: bool,
}

/// A Docker event about a container of the cluster.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    /// The container's id: what ties the event to a node's own container.
    pub id: String,
    pub service: String,
    /// A `docker-compose run` (or job) container: it shares the service's labels only.
    pub oneoff: bool,
    pub action: String,
    /// For `kill`: the signal sent (a `docker stop` sends the stop signal first).
    pub signal: Option<String>,
    pub time_nano: i64,
}

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    scope: Scope,
}

/// The network an endpoint's address lies in: `172.18.0.3` with prefix 16 → `172.18.0.0/16`.
/// None for no address (host networking, a stopped container) or a prefix that does not fit.
pub fn network_of(ip: Option<&str>, prefix_len: Option<i64>) -> Option<IpNet> {
    let ip: std::net::IpAddr = ip.filter(|s| !s.is_empty())?.parse().ok()?;
    let prefix = u8::try_from(prefix_len?).ok()?;
    IpNet::new(ip, prefix).ok().map(|n| n.trunc())
}

/// The subnets of every network of the container, sorted, without repeats.
fn subnets_of(c: &bollard::models::ContainerInspectResponse) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flat_map(|nets| nets.values())
        .flat_map(|ep| {
            [
                network_of(ep.ip_address.as_deref(), ep.ip_prefix_len),
                network_of(ep.global_ipv6_address.as_deref(), ep.global_ipv6_prefix_len),
            ]
        })
        .flatten()
        .collect();
    nets.sort();
    nets.dedup();
    nets
}

/// Most output an exec keeps (pg_hba.conf edits print a line or two).
const EXEC_OUTPUT_MAX: usize = 64 * 1024;

/// Mounts as bind strings: named and anonymous volumes by name, binds by host path.
fn binds_of(c: &bollard::models::ContainerInspectResponse) -> Vec<String> {
    c.mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            let source = if m.typ.as_deref() == Some("volume") {
                m.name?
            } else {
                m.source?
            };
            let dest = m.destination?;
            Some(if m.rw == Some(false) {
                format!("{source}:{dest}:ro")
            } else {
                format!("{source}:{dest}")
            })
        })
        .collect()
}

async fn timed<T, F>(operation: &'static str, fut: F) -> Result<T, DockerError>
where
    F: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    timed_for(operation, "", API_TIMEOUT, fut).await
}

async fn timed_for<T, F>(
    operation: &'static str,
    container: &str,
    limit: Duration,
    fut: F,
) -> Result<T, DockerError>
where
    F: std::future::Future<Output = Result<T, bollard::errors::Error>>,
{
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(DockerError::TimedOut { operation }),
        Ok(Err(e)) => Err(DockerError::Call {
            operation,
            container: container.to_string(),
            status: status_of(&e),
            message: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// The daemon's HTTP status in a bollard error, if the daemon answered at all.
fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerError {
    /// The daemon answered with this HTTP status.
    pub fn has_status(&self, code: u16) -> bool {
        matches!(self, DockerError::Call { status: Some(s), .. } if *s == code)
    }
}

impl DockerRuntime {
    /// Connects to the local daemon (or `DOCKER_HOST`) and negotiates the API version: never a
    /// pinned version, since Docker 20.10 tops out at 1.41 and Docker 29 wants at least 1.44.
    pub async fn connect() -> Result<Docker, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        tokio::time::timeout(API_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| DockerError::TimedOut {
                operation: "negotiate_version",
            })?
            .map_err(|e| DockerError::Unreachable(e.to_string()))
    }

    pub fn new(docker: Docker, scope: Scope) -> Self {
        DockerRuntime { docker, scope }
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The compose project of the container this process runs in, when it runs in one: compose
    /// sets the container's hostname to its short id.
    pub async fn own_project(docker: &Docker) -> Option<String> {
        let host = std::fs::read_to_string("/etc/hostname").ok()?;
        let inspect = timed("inspect", docker.inspect_container(host.trim(), None))
            .await
            .ok()?;
        inspect.config?.labels?.get(PROJECT_LABEL).cloned()
    }

    /// Finds the container of compose service `service` in scope (running or not).
    pub async fn find(&self, service: &str) -> Result<Option<ContainerInfo>, DockerError> {
        let mut filters = HashMap::new();
        let mut labels = vec![
            format!("{PROJECT_LABEL}={}", self.scope.project),
            format!("{SERVICE_LABEL}={service}"),
        ];
        if let Some((k, v)) = &self.scope.label {
            labels.push(format!("{k}={v}"));
        }
        filters.insert("label", labels);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = timed("list", self.docker.list_containers(Some(opts))).await?;
        // Prefer a running container when compose left an old one behind.
        let mut best: Option<ContainerInfo> = None;
        for summary in list {
            // `docker-compose run pg-0 …` makes a container with pg-0's labels: it is not the
            // node, and fencing or starting it instead of the node would be wrong both ways.
            if summary.labels.as_ref().is_some_and(is_oneoff) {
                continue;
            }
            let Some(id) = summary.id else { continue };
            let info = self.inspect(&id).await?;
            let better = match &best {
                None => true,
                Some(b) => !b.status.is_up() && info.status.is_up(),
            };
            if better {
                best = Some(info);
            }
        }
        Ok(best)
    }

    /// Inspects a container and checks that it is in scope.
    pub async fn inspect(&self, id: &str) -> Result<ContainerInfo, DockerError> {
        let c = timed_for(
            "inspect",
            id,
            API_TIMEOUT,
            self.docker.inspect_container(id, None),
        )
        .await?;
        let config = c.config.clone().unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        if !self.scope.admits(&labels) {
            return Err(DockerError::OutOfScope(id.to_string()));
        }
        let state = c.state.clone().unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
            Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
            Some(ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
            Some(ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
            _ => ContainerStatus::Exited,
        };
        let health = state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty());
        let host_config = c.host_config.clone().unwrap_or_default();
        let restart_policy = host_config
            .restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string());
        let env = config.env.clone().unwrap_or_default();
        let pgdata = env
            .iter()
            .find_map(|e| e.strip_prefix("PGDATA="))
            .unwrap_or("/var/lib/postgresql/data")
            .to_string();
        let binds = binds_of(&c);
        let subnets = subnets_of(&c);
        let network = c
            .network_settings
            .clone()
            .and_then(|n| n.networks)
            .and_then(|n| n.into_keys().next());
        let image = config.image.clone().unwrap_or_default();
        Ok(ContainerInfo {
            id: c.id.clone().unwrap_or_else(|| id.to_string()),
            name: c
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            status,
            health,
            restart_policy,
            image: image.clone(),
            pgdata,
            spec: JobSpec {
                image,
                binds,
                network,
            },
            network_aliases: c
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.iter().next())
                .map(|(net, ep)| {
                    let own = c.id.clone().unwrap_or_default();
                    let aliases = ep
                        .aliases
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| !own.starts_with(a.as_str()))
                        .collect();
                    (net.clone(), aliases)
                }),
            subnets,
            raw: Box::new(c),
        })
    }

    /// Creates the container again from its last inspect (after `docker rm -f`): same name,
    /// image, env, command, labels (compose's included, so compose still owns it), ports,
    /// healthcheck, volumes (named and anonymous, by name: data that survived is reused) and the
    /// network with its aliases. Not the old hostname, IP or endpoint ids: those belong to the
    /// dead container. One network at create time; the rest are connected after (API < 1.44).
    pub async fn recreate(
        &self,
        last: &bollard::models::ContainerInspectResponse,
    ) -> Result<ContainerInfo, DockerError> {
        let config = last.config.clone().unwrap_or_default();
        let labels = config.labels.clone().unwrap_or_default();
        let name = last
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        if !self.scope.admits(&labels) {
            return Err(DockerError::OutOfScope(name));
        }
        let old_id = last.id.clone().unwrap_or_default();
        let hc = last.host_config.clone().unwrap_or_default();
        let mut networks: Vec<(String, EndpointSettings)> = last
            .network_settings
            .clone()
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_iter()
            .map(|(net, ep)| {
                let aliases = ep.aliases.map(|a| {
                    a.into_iter()
                        .filter(|x| old_id.is_empty() || !old_id.starts_with(x.as_str()))
                        .collect()
                });
                (
                    net,
                    EndpointSettings {
                        aliases,
                        ..Default::default()
                    },
                )
            })
            .collect();
        networks.sort_by(|a, b| a.0.cmp(&b.0));
        let first = networks.first().cloned();
        let body = ContainerCreateBody {
            image: config.image,
            env: config.env,
            cmd: config.cmd,
            entrypoint: config.entrypoint,
            labels: Some(labels),
            exposed_ports: config.exposed_ports,
            healthcheck: config.healthcheck,
            user: config.user,
            working_dir: config.working_dir,
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            host_config: Some(HostConfig {
                binds: Some(binds_of(last)),
                port_bindings: hc.port_bindings,
                restart_policy: hc.restart_policy,
                network_mode: first.as_ref().map(|(n, _)| n.clone()).or(hc.network_mode),
                ..Default::default()
            }),
            networking_config: first.map(|(n, ep)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(n, ep)])),
            }),
            ..Default::default()
        };
        let created = self.create_named(&name, body).await?;
        for (net, ep) in networks.into_iter().skip(1) {
            self.connect_network(&created, &name, &net, ep).await?;
        }
        self.inspect(&created).await
    }

    /// Fencing: make sure Docker will not bring the container back, and SIGKILL it.
    /// The restart policy goes first, or `always`/`unless-stopped` would revive the old primary;
    /// while a container is dying Docker refuses the update ("cannot update a stopped
    /// container"), so then the kill goes ahead and the update is retried once it is down.
    pub async fn fence_kill(&self, c: &ContainerInfo) -> Result<(), DockerError> {
        let started = tokio::time::Instant::now();
        let policy_set = self.set_restart_no(c).await;
        let policy_ms = started.elapsed().as_millis();
        let killed = self.kill(c).await;
        let kill_ms = started.elapsed().as_millis() - policy_ms;
        let mut retries = 0;
        if let Err(first) = policy_set {
            tracing::debug!(container = %c.name, error = %first, "restart policy not set before the kill");
            // The update goes through the moment the container is down (about 20 ms after the
            // kill returns); every write waits for this before the promotion.
            let mut last = Err(first);
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                retries += 1;
                last = self.set_restart_no(c).await;
                if last.is_ok() {
                    break;
                }
            }
            last?;
        }
        // Fencing is on every write's critical path: where its time goes, when it is slow.
        tracing::debug!(container = %c.name, policy_ms, kill_ms, retries, total_ms = started.elapsed().as_millis(), "fence_kill");
        killed
    }

    /// SIGKILL; returns once Docker has the container down (it waits for the exit, which takes
    /// 0.2-0.3 s on 2 cores after the processes are gone).
    pub async fn kill(&self, c: &ContainerInfo) -> Result<(), DockerError> {
        let opts = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        match timed_for(
            "kill",
            &c.name,
            API_TIMEOUT,
            self.docker.kill_container(&c.id, Some(opts)),
        )
        .await
        {
            // Killing a container that is already down (409 Conflict) is a success: fencing is
            // idempotent.
            Err(e) if e.has_status(409) => Ok(()),
            other => other,
        }
    }

    pub async fn set_restart_no(&self, c: &ContainerInfo) -> Result<(), DockerError> {
        let body = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        timed_for(
            "update",
            &c.name,
            API_TIMEOUT,
            self.docker.update_container(&c.id, body),
        )
        .await
    }

    /// Connects a container back to `network` under `aliases` (undoing a fencing disconnect).
    pub async fn reconnect(
        &self,
        c: &ContainerInfo,
        network: &str,
        aliases: Vec<String>,
    ) -> Result<ContainerInfo, DockerError> {
        let ep = EndpointSettings {
            aliases: Some(aliases),
            ..Default::default()
        };
        self.connect_network(&c.id, &c.name, network, ep).await?;
        self.inspect(&c.id).await
    }

    /// Creates a container under `name`; returns its id.
    async fn create_named(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        let created = timed_for(
            "create",
            name,
            API_TIMEOUT,
            self.docker.create_container(Some(opts), body),
        )
        .await?;
        Ok(created.id)
    }

    /// Connects container `id` (called `name` in errors) to `network` with endpoint `ep`.
    async fn connect_network(
        &self,
        id: &str,
        name: &str,
        network: &str,
        ep: EndpointSettings,
    ) -> Result<(), DockerError> {
        let req = bollard::models::NetworkConnectRequest {
            container: id.to_string(),
            endpoint_config: Some(ep),
        };
        timed_for(
            "connect",
            name,
            API_TIMEOUT,
            self.docker.connect_network(network, req),
        )
        .await
    }

    /// Cuts a container off every network it is on: the fallback when it cannot be killed.
    pub async fn disconnect_all(&self, c: &ContainerInfo) -> Result<(), DockerError> {
        let inspect = timed("inspect", self.docker.inspect_container(&c.id, None)).await?;
        let nets = inspect
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        for net in nets.keys() {
            let req = bollard::models::NetworkDisconnectRequest {
                container: c.id.clone(),
                force: Some(true),
            };
            timed_for(
                "disconnect",
                &c.name,
                API_TIMEOUT,
                self.docker.disconnect_network(net, req),
            )
            .await?;
        }
        Ok(())
    }

    /// Clean stop (the image's stop signal, SIGINT for postgres: a fast shutdown).
    pub async fn stop(&self, c: &ContainerInfo, grace: Duration) -> Result<(), DockerError> {
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.as_secs() as i32)
            .build();
        match timed_for(
            "stop",
            &c.name,
            grace + API_TIMEOUT,
            self.docker.stop_container(&c.id, Some(opts)),
        )
        .await
        {
            // 304 Not Modified: already in the wanted state.
            Ok(()) => Ok(()),
            Err(e) if e.has_status(304) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn start(&self, c: &ContainerInfo) -> Result<(), DockerError> {
        match timed_for(
            "start",
            &c.name,
            API_TIMEOUT,
            self.docker.start_container(&c.id, None),
        )
        .await
        {
            // 304 Not Modified: already in the wanted state.
            Ok(()) => Ok(()),
            Err(e) if e.has_status(304) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs `script` with bash, as user postgres, in a one-off container that shares the node's
    /// image, volumes and network: the only way to work on PGDATA while postgres (the node's PID 1)
    /// is down. Returns the job's output; the container is removed whatever happens.
    pub async fn run_job(
        &self,
        node: &ContainerInfo,
        job: &str,
        script: &str,
        env: Vec<String>,
        limit: Duration,
    ) -> Result<String, DockerError> {
        let name = format!(
            "{}-{}-{}",
            node.name,
            job,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        );
        // A job left by an earlier sidecar (crash) must not run beside this one on the same
        // volume: finished ones are removed, a running one refuses the new job.
        for left in self.jobs(Some(&node.name)).await? {
            if left.running {
                return Err(DockerError::JobRunning {
                    node: node.name.clone(),
                    job: left.name,
                });
            }
            self.remove_job(&left).await?;
        }
        let mut labels = HashMap::new();
        labels.insert(JOB_LABEL.to_string(), job.to_string());
        labels.insert(JOB_CLUSTER_LABEL.to_string(), self.scope.project.clone());
        labels.insert(JOB_NODE_LABEL.to_string(), node.name.clone());
        let mut env = env;
        env.push(format!("PGDATA={}", node.pgdata));
        let networking = node.spec.network.as_ref().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(n.clone(), EndpointSettings::default())])),
        });
        let body = ContainerCreateBody {
            image: Some(node.spec.image.clone()),
            entrypoint: Some(vec!["bash".into(), "-ec".into(), script.into()]),
            cmd: Some(vec![]),
            user: Some("postgres".into()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(node.spec.binds.clone()),
                network_mode: node.spec.network.clone(),
                ..Default::default()
            }),
            networking_config: networking,
            ..Default::default()
        };
        let id = self.create_named(&name, body).await?;
        let result = self.run_and_wait(&id, &name, limit).await;
        let logs = self.logs(&id).await.unwrap_or_default();
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = timed("remove", self.docker.remove_container(&id, Some(rm))).await;
        match result {
            Ok(0) => Ok(logs),
            Ok(code) => {
                tracing::warn!(job = %name, %logs, "job failed");
                Err(DockerError::JobFailed { name, code })
            }
            Err(e) => {
                tracing::warn!(job = %name, %logs, "job did not finish");
                Err(e)
            }
        }
    }

    async fn run_and_wait(
        &self,
        id: &str,
        name: &str,
        limit: Duration,
    ) -> Result<i64, DockerError> {
        timed_for(
            "start",
            name,
            API_TIMEOUT,
            self.docker.start_container(id, None),
        )
        .await?;
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(id, Some(opts));
        match tokio::time::timeout(limit, wait.next()).await {
            Err(_) => {
                let kill = self
                    .docker
                    .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>);
                if let Err(e) = timed_for("kill", name, API_TIMEOUT, kill).await {
                    tracing::warn!(job = %name, error = %e, "cannot kill the timed-out job");
                }
                Err(DockerError::JobTimedOut {
                    name: name.to_string(),
                    seconds: limit.as_secs(),
                })
            }
            Ok(Some(Ok(r))) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => {
                Ok(code)
            }
            Ok(Some(Err(e))) => Err(DockerError::Call {
                operation: "wait",
                container: name.to_string(),
                status: status_of(&e),
                message: e.to_string(),
            }),
            Ok(None) => Err(DockerError::Call {
                operation: "wait",
                container: name.to_string(),
                status: None,
                message: "wait stream ended without a status".into(),
            }),
        }
    }

    /// Runs `cmd` (no shell unless it names one) as `user` in the running container `c`, and
    /// returns its output (stdout and stderr together). The container is inspected first, so
    /// scope and state are those of now. `limit` bounds the whole call: a command that leaves a
    /// child holding its output never ends the stream, so the caller also wraps the command in
    /// `timeout` inside the container; on expiry the command may still run there.
    pub async fn exec(
        &self,
        c: &ContainerInfo,
        user: &str,
        cmd: Vec<String>,
        limit: Duration,
    ) -> Result<String, DockerError> {
        let now = self.inspect(&c.id).await?;
        if !now.status.is_up() {
            return Err(DockerError::NotRunning(c.name.clone()));
        }
        let timed_out = || DockerError::ExecTimedOut {
            container: c.name.clone(),
            seconds: limit.as_secs(),
        };
        let deadline = tokio::time::Instant::now() + limit;
        let opts = CreateExecOptions {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(cmd),
            user: Some(user.to_string()),
            ..Default::default()
        };
        let created = timed_for(
            "exec",
            &c.name,
            API_TIMEOUT,
            self.docker.create_exec(&c.id, opts),
        )
        .await?;
        let started = timed_for(
            "exec",
            &c.name,
            API_TIMEOUT,
            self.docker.start_exec(&created.id, None),
        )
        .await?;
        let mut out = String::new();
        if let StartExecResults::Attached { mut output, .. } = started {
            let collect = async {
                while let Some(frame) = output.next().await {
                    let frame = frame?;
                    if out.len() < EXEC_OUTPUT_MAX {
                        out.push_str(&String::from_utf8_lossy(&frame.into_bytes()));
                    }
                }
                Ok::<(), bollard::errors::Error>(())
            };
            match tokio::time::timeout_at(deadline, collect).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(e)) => {
                    return Err(DockerError::Call {
                        operation: "exec",
                        container: c.name.clone(),
                        status: status_of(&e),
                        message: e.to_string(),
                    })
                }
                Ok(Ok(())) => {}
            }
        }
        // The stream ends when the command's output closes; its exit code comes a moment later.
        let code = loop {
            let inspect = timed_for(
                "exec_inspect",
                &c.name,
                API_TIMEOUT,
                self.docker.inspect_exec(&created.id),
            )
            .await?;
            if inspect.running == Some(false) {
                break inspect.exit_code.unwrap_or(-1);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if code != 0 {
            return Err(DockerError::ExecFailed {
                container: c.name.clone(),
                code,
                output: out.trim().to_string(),
            });
        }
        Ok(out)
    }

    /// This cluster's job containers (of one node, or all), running or not.
    pub async fn jobs(&self, node: Option<&str>) -> Result<Vec<JobContainer>, DockerError> {
        let mut labels = vec![format!("{JOB_CLUSTER_LABEL}={}", self.scope.project)];
        if let Some(n) = node {
            labels.push(format!("{JOB_NODE_LABEL}={n}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = timed("list", self.docker.list_containers(Some(opts))).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(JobContainer {
                    id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    running: c.state.is_some_and(|s| {
                        !matches!(
                            s,
                            bollard::models::ContainerSummaryStateEnum::EXITED
                                | bollard::models::ContainerSummaryStateEnum::DEAD
                                | bollard::models::ContainerSummaryStateEnum::CREATED
                        )
                    }),
                })
            })
            .collect())
    }

    /// Kills and removes a job container (its volumes are the node's: never removed).
    pub async fn remove_job(&self, job: &JobContainer) -> Result<(), DockerError> {
        let rm = RemoveContainerOptionsBuilder::new().force(true).build();
        match timed_for(
            "remove",
            &job.name,
            API_TIMEOUT,
            self.docker.remove_container(&job.id, Some(rm)),
        )
        .await
        {
            // 404: already gone, which is what was wanted.
            Err(e) if !e.has_status(404) => Err(e),
            _ => {
                tracing::warn!(job = %job.name, was_running = job.running, "job container removed");
                Ok(())
            }
        }
    }

    /// Removes every job container of this cluster: at start (left by a crashed sidecar) and
    /// at shutdown (a job must not outlive the sidecar that watches it). Returns how many.
    pub async fn remove_all_jobs(&self) -> Result<usize, DockerError> {
        let jobs = self.jobs(None).await?;
        for j in &jobs {
            self.remove_job(j).await?;
        }
        Ok(jobs.len())
    }

    async fn logs(&self, id: &str) -> Result<String, DockerError> {
        let opts = LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut out = String::new();
        let collect = async {
            while let Some(Ok(frame)) = stream.next().await {
                out.push_str(&String::from_utf8_lossy(&frame.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(API_TIMEOUT, collect).await;
        Ok(out)
    }

    /// The cluster's container events from `since` (unix nanoseconds) on. The stream ends when
    /// the daemon connection drops; the caller reconnects with the last `time_nano` seen.
    pub fn events(
        &self,
        since_nanos: Option<i64>,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container".to_string()]);
        filters.insert(
            "label",
            vec![format!("{PROJECT_LABEL}={}", self.scope.project)],
        );
        let mut b = EventsOptionsBuilder::new().filters(&filters);
        let since;
        if let Some(ns) = since_nanos {
            since = format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
            b = b.since(&since);
        }
        let scope = self.scope.clone();
        self.docker.events(Some(b.build())).filter_map(move |r| {
            let scope = scope.clone();
            async move {
                match r {
                    Err(e) => Some(Err(DockerError::Call {
                        operation: "events",
                        container: String::new(),
                        status: status_of(&e),
                        message: e.to_string(),
                    })),
                    Ok(m) => {
                        let actor = m.actor.unwrap_or_default();
                        let attrs = actor.attributes.unwrap_or_default();
                        if !scope.admits(&attrs) {
                            return None;
                        }
                        Some(Ok(ContainerEvent {
                            id: actor.id.unwrap_or_default(),
                            oneoff: is_oneoff(&attrs),
                            service: attrs.get(SERVICE_LABEL)?.clone(),
                            action: m.action.unwrap_or_default(),
                            signal: attrs.get("signal").cloned(),
                            time_nano: m.time_nano.unwrap_or_default(),
                        }))
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_error(e: bollard::errors::Error) -> DockerError {
        DockerError::Call {
            operation: "stop",
            container: "pg-0".into(),
            status: status_of(&e),
            message: e.to_string(),
        }
    }

    #[test]
    fn docker_answers_are_told_apart_by_status_not_text() {
        let not_modified = call_error(bollard::errors::Error::DockerResponseServerError {
            status_code: 304,
            message: String::new(),
        });
        assert!(not_modified.has_status(304));
        // A message that merely mentions a code is not that answer.
        let other = call_error(bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "container is not running (304)".into(),
        });
        assert!(!other.has_status(304) && !other.has_status(409));
        assert!(!DockerError::TimedOut { operation: "kill" }.has_status(409));
    }

    #[test]
    fn an_endpoints_address_and_prefix_give_its_network() {
        let n = |ip: &str, p: i64| network_of(Some(ip), Some(p)).map(|n| n.to_string());
        assert_eq!(n("172.18.0.3", 16).as_deref(), Some("172.18.0.0/16"));
        assert_eq!(n("10.1.2.3", 24).as_deref(), Some("10.1.2.0/24"));
        assert_eq!(n("fd00:1::5", 64).as_deref(), Some("fd00:1::/64"));
        // Host networking or a stopped container: no address.
        assert_eq!(n("", 0), None);
        assert_eq!(network_of(None, Some(16)), None);
        assert_eq!(network_of(Some("172.18.0.3"), None), None);
        assert_eq!(n("172.18.0.3", 33), None);
        assert_eq!(n("172.18.0.3", -1), None);
        assert_eq!(n("not-an-ip", 16), None);
    }

    #[test]
    fn subnets_come_from_every_network_once() {
        let ep = |ip: &str, p: i64| bollard::models::EndpointSettings {
            ip_address: Some(ip.into()),
            ip_prefix_len: Some(p),
            ..Default::default()
        };
        let c = bollard::models::ContainerInspectResponse {
            network_settings: Some(bollard::models::NetworkSettings {
                networks: Some(HashMap::from([
                    ("b_default".to_string(), ep("172.19.0.4", 16)),
                    ("a_backend".to_string(), ep("172.18.0.3", 16)),
                    ("c_same".to_string(), ep("172.18.0.9", 16)),
                    ("host".to_string(), ep("", 0)),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got: Vec<String> = subnets_of(&c).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["172.18.0.0/16", "172.19.0.0/16"]);
    }

    #[test]
    fn one_off_and_job_containers_are_never_nodes() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(is_oneoff(&labels(&[(ONEOFF_LABEL, "True")])));
        assert!(is_oneoff(&labels(&[(JOB_LABEL, "rebuild")])));
        assert!(!is_oneoff(&labels(&[(ONEOFF_LABEL, "False")])));
        assert!(!is_oneoff(&labels(&[(SERVICE_LABEL, "pg-0")])));
        let scope = Scope {
            project: "p".into(),
            label: Some(("cluster".into(), "a".into())),
        };
        assert!(scope.admits(&labels(&[(PROJECT_LABEL, "p"), ("cluster", "a")])));
        assert!(!scope.admits(&labels(&[(PROJECT_LABEL, "p"), ("cluster", "b")])));
        assert!(!scope.admits(&labels(&[(PROJECT_LABEL, "q"), ("cluster", "a")])));
    }
}
