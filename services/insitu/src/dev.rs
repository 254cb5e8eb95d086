//! Running the parts: `insitu dev` (gateway + node child processes),
//! `insitu gateway` and `insitu node`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use insitu_gateway::auth::RootCredentials;
use insitu_gateway::limits::MIN_CLUSTER_SECRET_BYTES;
use insitu_gateway::nodes::Liveness;
use insitu_gateway::{Gateway, GatewayConfig};
use insitu_storage_node::http_server::ServerLimits;
use insitu_storage_node::{Node, NodeConfig};
use rand::distributions::Alphanumeric;
use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{NodeArgs, RootArgs};

#[derive(clap::Args)]
pub struct DevArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    #[arg(long, default_value = "./insitu-data")]
    data_dir: PathBuf,
    /// The catalog: `rocksdb:PATH` or `postgresql://user[:pw]@host:port/db`
    /// [default: rocksdb:<data-dir>/catalog].
    #[arg(long, env = "INSITU_CATALOG", hide_env_values = true)]
    catalog: Option<String>,
    /// Number of storage-node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Number of gateway processes, on ports P, P+1, ... of --listen;
    /// above 1 needs a shared (postgresql://) catalog.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// Replicas per object; defaults to min(2, nodes).
    #[arg(long)]
    replicas: Option<usize>,
    /// Serve virtual-hosted-style buckets under this domain.
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// How often each node re-checks every blob's checksums, in seconds.
    #[arg(long, default_value_t = 86_400)]
    node_scrub_secs: u64,
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    tuning: ClusterTuning,
}

/// Cluster behaviour shared by `dev` and `gateway`.
#[derive(clap::Args, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTuning {
    /// Seconds without contact before a node gets no new blobs [default: 5].
    #[arg(long)]
    suspect_after_secs: Option<u64>,
    /// Seconds without contact before a node counts as down and its blobs
    /// are re-replicated elsewhere (the repair grace period) [default: 60].
    #[arg(long)]
    down_after_secs: Option<u64>,
    /// Seconds an unreferenced blob waits before deletion [default: 30].
    #[arg(long)]
    gc_grace_secs: Option<u64>,
    /// Repair copy rate limit in MiB/s [default: 64].
    #[arg(long)]
    repair_mib_per_sec: Option<u64>,
    /// Free space (MiB) every node keeps; fuller nodes get no new blobs [default: 64].
    #[arg(long)]
    reserve_mib: Option<u64>,
    /// How often the gateway polls node health, in milliseconds [default: 1000].
    #[arg(long)]
    health_interval_ms: Option<u64>,
    /// How often every node is swept for orphan blobs, in seconds [default: 600].
    #[arg(long)]
    orphan_sweep_secs: Option<u64>,
    /// Tasks the job supervisor runs at once on each node [default: 4].
    #[arg(long)]
    task_slots: Option<u32>,
    /// Milliseconds a job that can start no map task on a node holding
    /// its input waits before it starts one on another node, the input
    /// copied there (delay scheduling). Short against the tasks' run
    /// time; a wait longer than any job keeps every map task on a holder
    /// [default: 100].
    #[arg(long)]
    locality_wait_ms: Option<u64>,
    /// Most tasks one tenant runs at once across the cluster [default: 0, no cap].
    #[arg(long)]
    tenant_max_tasks: Option<u32>,
    /// Most jobs of one tenant that have not ended [default: 0, no cap].
    #[arg(long)]
    tenant_max_jobs: Option<u32>,
    /// Most memory (MiB) one task may ask for where its tenant's policy
    /// sets no maximum [default: 4096].
    #[arg(long)]
    task_max_memory_mb: Option<u64>,
    /// Most CPUs one task may ask for, likewise [default: 4].
    #[arg(long)]
    task_max_cpus: Option<f64>,
    /// Most scratch space (MiB) one task may ask for, likewise [default: 10240].
    #[arg(long)]
    task_max_disk_mb: Option<u64>,
    /// Most output (MiB) one task may write, likewise [default: 10240].
    #[arg(long)]
    task_max_output_mb: Option<u64>,
    /// Client connections the gateway keeps open at once [default: 4096].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Milliseconds a client has to send a request's head, and that an
    /// idle connection stays open [default: 30000].
    #[arg(long)]
    http_header_timeout_ms: Option<u64>,
    /// Milliseconds a request body may go without data [default: 60000].
    #[arg(long)]
    http_body_idle_ms: Option<u64>,
    /// Seconds a gateway's job and leader leases last unrenewed: when a
    /// gateway dies, others take its jobs and loops after this [default: 10].
    #[arg(long)]
    lease_secs: Option<u64>,
}

impl ClusterTuning {
    fn or(self, file: ClusterTuning) -> ClusterTuning {
        ClusterTuning {
            suspect_after_secs: self.suspect_after_secs.or(file.suspect_after_secs),
            down_after_secs: self.down_after_secs.or(file.down_after_secs),
            gc_grace_secs: self.gc_grace_secs.or(file.gc_grace_secs),
            repair_mib_per_sec: self.repair_mib_per_sec.or(file.repair_mib_per_sec),
            reserve_mib: self.reserve_mib.or(file.reserve_mib),
            health_interval_ms: self.health_interval_ms.or(file.health_interval_ms),
            orphan_sweep_secs: self.orphan_sweep_secs.or(file.orphan_sweep_secs),
            task_slots: self.task_slots.or(file.task_slots),
            locality_wait_ms: self.locality_wait_ms.or(file.locality_wait_ms),
            tenant_max_tasks: self.tenant_max_tasks.or(file.tenant_max_tasks),
            tenant_max_jobs: self.tenant_max_jobs.or(file.tenant_max_jobs),
            task_max_memory_mb: self.task_max_memory_mb.or(file.task_max_memory_mb),
            task_max_cpus: self.task_max_cpus.or(file.task_max_cpus),
            task_max_disk_mb: self.task_max_disk_mb.or(file.task_max_disk_mb),
            task_max_output_mb: self.task_max_output_mb.or(file.task_max_output_mb),
            max_connections: self.max_connections.or(file.max_connections),
            http_header_timeout_ms: self.http_header_timeout_ms.or(file.http_header_timeout_ms),
            http_body_idle_ms: self.http_body_idle_ms.or(file.http_body_idle_ms),
            lease_secs: self.lease_secs.or(file.lease_secs),
        }
    }
}

impl ClusterTuning {
    /// The same tuning as flags, for a child gateway.
    fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! flags {
            ($($name:literal => $value:expr),* $(,)?) => {
                $(if let Some(v) = $value {
                    out.push(concat!("--", $name).to_string());
                    out.push(v.to_string());
                })*
            };
        }
        let t = self;
        flags! {
            "suspect-after-secs" => t.suspect_after_secs,
            "down-after-secs" => t.down_after_secs,
            "gc-grace-secs" => t.gc_grace_secs,
            "repair-mib-per-sec" => t.repair_mib_per_sec,
            "reserve-mib" => t.reserve_mib,
            "health-interval-ms" => t.health_interval_ms,
            "orphan-sweep-secs" => t.orphan_sweep_secs,
            "task-slots" => t.task_slots,
            "locality-wait-ms" => t.locality_wait_ms,
            "tenant-max-tasks" => t.tenant_max_tasks,
            "tenant-max-jobs" => t.tenant_max_jobs,
            "task-max-memory-mb" => t.task_max_memory_mb,
            "task-max-cpus" => t.task_max_cpus,
            "task-max-disk-mb" => t.task_max_disk_mb,
            "task-max-output-mb" => t.task_max_output_mb,
            "max-connections" => t.max_connections,
            "http-header-timeout-ms" => t.http_header_timeout_ms,
            "http-body-idle-ms" => t.http_body_idle_ms,
            "lease-secs" => t.lease_secs,
        }
        out
    }
}

/// The embedded catalog under the data directory.
fn default_catalog(data_dir: &Path) -> String {
    format!("rocksdb:{}", data_dir.join("catalog").display())
}

#[allow(clippy::too_many_arguments)]
fn gateway_config(
    listen: SocketAddr,
    catalog: String,
    domain: Option<String>,
    region: String,
    replicas: usize,
    root: RootCredentials,
    cluster_secret: String,
    advertise: Option<String>,
    t: &ClusterTuning,
) -> GatewayConfig {
    let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
    GatewayConfig {
        listen,
        catalog,
        domain,
        region,
        replicas,
        root,
        cluster_secret,
        gc_grace: secs(t.gc_grace_secs, 30),
        liveness: Liveness {
            suspect_after: secs(t.suspect_after_secs, 5),
            down_after: secs(t.down_after_secs, 60),
        },
        reserve_bytes: t.reserve_mib.unwrap_or(64) * 1024 * 1024,
        health_interval: Duration::from_millis(t.health_interval_ms.unwrap_or(1000)),
        repair_bytes_per_sec: t.repair_mib_per_sec.unwrap_or(64) * 1024 * 1024,
        orphan_sweep_interval: secs(t.orphan_sweep_secs, 600),
        task_slots: t.task_slots.unwrap_or(4).max(1),
        locality_wait: Duration::from_millis(t.locality_wait_ms.unwrap_or(100)),
        tenant_max_tasks: t.tenant_max_tasks.unwrap_or(0),
        tenant_max_jobs: t.tenant_max_jobs.unwrap_or(0),
        task_maxima: {
            let d = insitu_jobs::TaskMaxima::default();
            insitu_jobs::TaskMaxima {
                memory_mb: t.task_max_memory_mb.unwrap_or(d.memory_mb),
                cpus: t.task_max_cpus.unwrap_or(d.cpus),
                disk_mb: t.task_max_disk_mb.unwrap_or(d.disk_mb),
                output_mb: t.task_max_output_mb.unwrap_or(d.output_mb),
            }
        },
        server: {
            let d = ServerLimits::default();
            let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
            ServerLimits {
                max_connections: t.max_connections.unwrap_or(d.max_connections),
                header_timeout: ms(t.http_header_timeout_ms, d.header_timeout),
                body_idle_timeout: ms(t.http_body_idle_ms, d.body_idle_timeout),
            }
        },
        lease_timeout: secs(t.lease_secs, 10).max(Duration::from_secs(1)),
        advertise,
        advertise_loopback: false,
    }
}

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// A TOML file with any of the flags below (snake_case keys, `nodes` as
    /// a table of id = URL); flags and environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// [default: 127.0.0.1:9000]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// [default: ./insitu-data/gateway]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The catalog: `rocksdb:PATH` or `postgresql://user[:pw]@host:port/db`
    /// [default: rocksdb:<data-dir>/catalog].
    #[arg(long, env = "INSITU_CATALOG", hide_env_values = true)]
    catalog: Option<String>,
    /// A storage node known up front, as `ID=URL`; nodes started with
    /// `--gateway` register themselves instead.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Replicas per object [default: 2].
    #[arg(long)]
    replicas: Option<usize>,
    #[arg(long)]
    domain: Option<String>,
    /// [default: us-east-1]
    #[arg(long)]
    region: Option<String>,
    #[arg(long, env = "INSITU_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// The URL other gateways reach this one at [default: http://LISTEN].
    #[arg(long)]
    advertise: Option<String>,
    /// Exit when standard input closes (set by `insitu dev --gateways`).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// Advertise 127.0.0.1 when listening on a wildcard address (set by
    /// `insitu dev --gateways`, whose peers are all on this machine).
    #[arg(long, hide = true)]
    advertise_loopback: bool,
    #[command(flatten)]
    root: RootArgs,
    #[command(flatten)]
    tuning: ClusterTuning,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    catalog: Option<String>,
    #[serde(default)]
    nodes: std::collections::BTreeMap<String, String>,
    replicas: Option<usize>,
    domain: Option<String>,
    region: Option<String>,
    cluster_secret: Option<String>,
    root_access_key: Option<String>,
    root_secret_key: Option<String>,
    #[serde(flatten)]
    tuning: ClusterTuning,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    cluster_secret: Option<String>,
    capacity_bytes: Option<u64>,
    heartbeat_ms: Option<u64>,
    scrub_secs: Option<u64>,
    task_tools: Option<PathBuf>,
}

fn read_config<T: serde::de::DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Reads a secret kept in the data dir, creating it on first start, so a
/// restarted cluster keeps its credentials. Only the owner may read it
/// (0600), in a data directory only the owner may enter (0700).
fn persistent_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(s) = std::fs::read_to_string(path) {
        // Written by an earlier version with the default mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        return Ok(s.trim().to_string());
    }
    let s = make();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(s.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(s)
}

/// Creates a data directory (and its parents) that only its owner may
/// enter. An existing one is left as it is (it may be a shared path), with
/// a warning if others may enter it: the secrets in it are 0600 anyway.
fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(dir = %path.display(), "the data directory is open to other users; consider chmod 700");
        }
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

/// The cluster secret, refused when missing or too short to be one: an
/// empty variable (an unset compose variable, say) would otherwise open
/// the internal plane to anyone.
fn cluster_secret(given: Option<String>) -> Result<String> {
    let secret = given.ok_or_else(|| anyhow!("a cluster secret is needed: set INSITU_CLUSTER_SECRET, --cluster-secret or cluster_secret in the config file"))?;
    if secret.trim().len() < MIN_CLUSTER_SECRET_BYTES {
        bail!(
            "the cluster secret must have at least {MIN_CLUSTER_SECRET_BYTES} characters (it has {}); generate one with `openssl rand -hex 32`",
            secret.trim().len()
        );
    }
    Ok(secret)
}

fn root_credentials(args: &RootArgs, data_dir: &Path) -> Result<(RootCredentials, bool)> {
    if let (Some(ak), Some(sk)) = (&args.root_access_key, &args.root_secret_key) {
        return Ok((
            RootCredentials {
                access_key_id: ak.clone(),
                secret_access_key: sk.clone(),
            },
            false,
        ));
    }
    let path = data_dir.join("root-credentials");
    let existed = path.exists();
    let text = persistent_secret(&path, || {
        format!(
            "{}\n{}",
            format!("INROOT{}", random_string(14)).to_ascii_uppercase(),
            random_string(40)
        )
    })?;
    let mut lines = text.lines();
    let (Some(ak), Some(sk)) = (lines.next(), lines.next()) else {
        bail!(
            "{} is malformed; delete it to generate new root credentials",
            path.display()
        );
    };
    Ok((
        RootCredentials {
            access_key_id: ak.to_string(),
            secret_access_key: sk.to_string(),
        },
        !existed,
    ))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

struct NodeProcess {
    id: String,
    addr: String,
    child: Child,
}

/// Starts one storage node as a child process and waits for its address.
async fn spawn_node(
    id: &str,
    data_dir: &Path,
    secret: &str,
    gateways: &[String],
    scrub_secs: u64,
) -> Result<NodeProcess> {
    let exe = std::env::current_exe().context("cannot find the insitu executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--id")
        .arg(id)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0");
    for g in gateways {
        cmd.arg("--gateway").arg(g);
    }
    let mut child = cmd
        .arg("--exit-with-parent")
        .arg("--scrub-secs")
        .arg(scrub_secs.to_string())
        .env("INSITU_CLUSTER_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start storage node {id}"))?;
    let ready = ready_line(&mut child, &format!("storage node {id}")).await?;
    let addr = ready["url"]
        .as_str()
        .ok_or_else(|| anyhow!("node {id} did not report its address"))?;
    Ok(NodeProcess {
        id: id.to_string(),
        addr: addr.to_string(),
        child,
    })
}

pub async fn run_dev(args: DevArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.gateways == 0 {
        bail!("--gateways must be at least 1");
    }
    let shared = args
        .catalog
        .as_deref()
        .is_some_and(|c| c.starts_with("postgresql://") || c.starts_with("postgres://"));
    if args.gateways > 1 && !shared {
        bail!("--gateways {} needs a shared catalog: give --catalog postgresql://user@host:port/db (the embedded rocksdb catalog serves one gateway)", args.gateways);
    }
    let replicas = args.replicas.unwrap_or(args.nodes.min(2));
    if replicas == 0 || replicas > args.nodes {
        bail!("--replicas must be between 1 and --nodes ({})", args.nodes);
    }
    if shared {
        // A database that cannot be reached (or holds a newer schema) fails
        // the start before anything is written to the data directory.
        if let Some(url) = args.catalog.as_deref() {
            insitu_catalog::open(url, 1)
                .await
                .map_err(|e| anyhow!("catalog: {e}"))?;
        }
    }
    private_dir(&args.data_dir)?;
    let (root, generated) = root_credentials(&args.root, &args.data_dir)?;
    let secret = persistent_secret(&args.data_dir.join("cluster-secret"), || random_string(48))?;
    let mut tuning = args.tuning.clone();
    // A laptop cluster collects garbage quickly.
    tuning.gc_grace_secs = tuning.gc_grace_secs.or(Some(5));
    let catalog = args
        .catalog
        .clone()
        .unwrap_or_else(|| default_catalog(&args.data_dir));
    if args.gateways > 1 {
        return run_dev_gateways(&args, catalog, root, generated, secret, replicas, &tuning).await;
    }
    let mut config = gateway_config(
        args.listen,
        catalog,
        args.domain,
        args.region,
        replicas,
        root.clone(),
        secret.clone(),
        None,
        &tuning,
    );
    // Every peer of a dev cluster is on this machine.
    config.advertise_loopback = true;
    let gateway = Gateway::open(config).await?;
    let listener = gateway.bind().await?;
    let endpoint = format!("http://{}", listener.local_addr()?);

    let mut children = Vec::new();
    for i in 0..args.nodes {
        let id = format!("node-{i}");
        let dir = args.data_dir.join("nodes").join(&id);
        let gateways = [endpoint.clone()];
        children.push(spawn_node(&id, &dir, &secret, &gateways, args.node_scrub_secs).await?);
    }
    for n in &children {
        gateway.register_node(&n.id, &n.addr).await?;
    }
    if generated {
        eprintln!(
            "insitu: generated root credentials (kept in {}):",
            args.data_dir.join("root-credentials").display()
        );
        eprintln!("  INSITU_ROOT_ACCESS_KEY={}", root.access_key_id);
        eprintln!("  INSITU_ROOT_SECRET_KEY={}", root.secret_access_key);
    }
    eprintln!(
        "insitu: S3 endpoint {endpoint} with {} storage nodes, {replicas} replica(s) per object",
        args.nodes
    );
    // One machine-readable line on stdout, for scripts and tests.
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "endpoint": endpoint, "nodes": args.nodes, "replicas": replicas, "cluster_secret_file": args.data_dir.join("cluster-secret") })
    );

    let result = gateway.serve(listener, shutdown_signal()).await;
    tracing::info!("stopping storage nodes");
    stop_children(children.into_iter().map(|n| n.child).collect()).await;
    result.map_err(Into::into)
}

/// Asks children to stop by closing their stdin (they finish in-flight
/// writes), and kills those that take longer than 10 s.
async fn stop_children(children: Vec<Child>) {
    for mut child in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Reads a child's first stdout line, its "ready" JSON, within 30 s.
async fn ready_line(child: &mut Child, what: &str) -> Result<serde_json::Value> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{what} has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| anyhow!("{what} did not start within 30 s"))??
        .ok_or_else(|| anyhow!("{what} exited during start-up"))?;
    serde_json::from_str(&line).with_context(|| format!("{what} said {line:?}"))
}

/// `insitu dev --gateways N`: N gateway processes on one shared catalog,
/// on consecutive ports, and nodes that beat to any of them. Killing one
/// gateway is a real fault: the others take its jobs and loops.
async fn run_dev_gateways(
    args: &DevArgs,
    catalog: String,
    root: RootCredentials,
    generated: bool,
    secret: String,
    replicas: usize,
    tuning: &ClusterTuning,
) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the insitu executable")?;
    let mut gateways = Vec::new();
    let mut endpoints = Vec::new();
    let mut pids = Vec::new();
    for i in 0..args.gateways {
        // Port 0: each gateway on a free port of its own.
        let port = match args.listen.port() {
            0 => 0,
            p => p.checked_add(i as u16).ok_or_else(|| {
                anyhow!(
                    "--listen port {p} leaves no room for {} gateways",
                    args.gateways
                )
            })?,
        };
        let listen = SocketAddr::new(args.listen.ip(), port);
        let dir = args.data_dir.join("gateways").join(format!("gw-{i}"));
        private_dir(&dir)?;
        let mut cmd = Command::new(&exe);
        cmd.arg("gateway")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(&dir)
            .arg("--replicas")
            .arg(replicas.to_string())
            .arg("--region")
            .arg(&args.region)
            .arg("--exit-with-parent")
            .arg("--advertise-loopback")
            .args(tuning.to_args());
        if let Some(d) = &args.domain {
            cmd.arg("--domain").arg(d);
        }
        // Secrets by environment, never on a command line others can read.
        let mut child = cmd
            .env("INSITU_CATALOG", &catalog)
            .env("INSITU_CLUSTER_SECRET", &secret)
            .env("INSITU_ROOT_ACCESS_KEY", &root.access_key_id)
            .env("INSITU_ROOT_SECRET_KEY", &root.secret_access_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start gateway {i}"))?;
        let ready = ready_line(&mut child, &format!("gateway {i}")).await?;
        let endpoint = ready["endpoint"]
            .as_str()
            .ok_or_else(|| anyhow!("gateway {i} did not report its endpoint"))?
            .to_string();
        pids.push(child.id());
        endpoints.push(endpoint);
        gateways.push(child);
    }
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let id = format!("node-{i}");
        let dir = args.data_dir.join("nodes").join(&id);
        nodes.push(spawn_node(&id, &dir, &secret, &endpoints, args.node_scrub_secs).await?);
    }
    for endpoint in &endpoints {
        wait_for_nodes(endpoint, args.nodes).await?;
    }
    if generated {
        eprintln!(
            "insitu: generated root credentials (kept in {}):",
            args.data_dir.join("root-credentials").display()
        );
        eprintln!("  INSITU_ROOT_ACCESS_KEY={}", root.access_key_id);
        eprintln!("  INSITU_ROOT_SECRET_KEY={}", root.secret_access_key);
    }
    eprintln!(
        "insitu: S3 endpoints {} with {} storage nodes, {replicas} replica(s) per object",
        endpoints.join(" "),
        args.nodes
    );
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "endpoint": endpoints[0], "endpoints": endpoints, "gateway_pids": pids, "nodes": args.nodes, "replicas": replicas, "cluster_secret_file": args.data_dir.join("cluster-secret") })
    );
    shutdown_signal().await;
    tracing::info!("stopping gateways and storage nodes");
    stop_children(gateways).await;
    stop_children(nodes.into_iter().map(|n| n.child).collect()).await;
    Ok(())
}

/// Waits until a gateway counts `count` nodes as up (they register by
/// heartbeat, and every gateway learns them through the catalog).
async fn wait_for_nodes(endpoint: &str, count: usize) -> Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{endpoint}/_insitu/v1/metrics");
    for _ in 0..300 {
        if let Ok(r) = http.get(&url).send().await {
            if let Ok(text) = r.text().await {
                let up = text
                    .lines()
                    .filter(|l| l.starts_with("insitu_node_up{") && l.ends_with(" 1"))
                    .count();
                if up >= count {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the storage nodes did not come up at {endpoint} within 30 s")
}

pub async fn run_gateway(args: GatewayArgs) -> Result<()> {
    let file: GatewayFile = read_config(args.config.as_deref())?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./insitu-data/gateway"));
    let root_args = RootArgs {
        root_access_key: args.root.root_access_key.or(file.root_access_key),
        root_secret_key: args.root.root_secret_key.or(file.root_secret_key),
    };
    let catalog = args
        .catalog
        .or(file.catalog)
        .unwrap_or_else(|| default_catalog(&data_dir));
    let shared = catalog.starts_with("postgresql://") || catalog.starts_with("postgres://");
    let given = root_args.root_access_key.is_some() && root_args.root_secret_key.is_some();
    if shared && !given {
        // Keys of its own would let its peers check none of the calls it
        // forwards to them.
        bail!("a gateway on a shared catalog needs the cluster's root keys: give the same --root-access-key and --root-secret-key (or INSITU_ROOT_ACCESS_KEY / INSITU_ROOT_SECRET_KEY) to every gateway");
    }
    private_dir(&data_dir)?;
    let (root, generated) = root_credentials(&root_args, &data_dir)?;
    let secret = cluster_secret(args.cluster_secret.or(file.cluster_secret))?;
    let replicas = args.replicas.or(file.replicas).unwrap_or(2);
    if replicas == 0 {
        bail!("replicas must be at least 1");
    }
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9000)));
    let region = args
        .region
        .or(file.region)
        .unwrap_or_else(|| "us-east-1".to_string());
    let tuning = args.tuning.or(file.tuning);
    let mut config = gateway_config(
        listen,
        catalog,
        args.domain.or(file.domain),
        region,
        replicas,
        root.clone(),
        secret,
        args.advertise.or(file.advertise),
        &tuning,
    );
    config.advertise_loopback = args.advertise_loopback;
    let gateway = Gateway::open(config).await?;
    let mut nodes: Vec<(String, String)> = file.nodes.into_iter().collect();
    for spec in &args.nodes {
        let (id, url) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--node takes ID=URL, got {spec:?}"))?;
        nodes.push((id.to_string(), url.to_string()));
    }
    for (id, url) in nodes {
        gateway.register_node(&id, &url).await?;
    }
    let listener = gateway.bind().await?;
    if generated {
        eprintln!("insitu: generated root credentials: INSITU_ROOT_ACCESS_KEY={} INSITU_ROOT_SECRET_KEY={}", root.access_key_id, root.secret_access_key);
    }
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "endpoint": format!("http://{}", listener.local_addr()?) })
    );
    gateway
        .serve(listener, stop_signal(args.exit_with_parent))
        .await
        .map_err(Into::into)
}

/// A stop signal, or with `exit_with_parent` also the end of stdin (the
/// parent `insitu dev` holds it open, so children stop with it even if it
/// is killed).
async fn stop_signal(exit_with_parent: bool) {
    if !exit_with_parent {
        return shutdown_signal().await;
    }
    let stdin_closed = async {
        let mut buf = [0u8; 64];
        let mut stdin = tokio::io::stdin();
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = stdin_closed => {}
    }
}

/// `task-tools` beside the binary, or in its parent directory (where
/// scripts/build-task-tools puts it for `target/{debug,release}/insitu`).
fn default_task_tools() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("task-tools"), dir.parent()?.join("task-tools")]
        .into_iter()
        .find(|d| d.join("insitu-task").is_file())
}

pub async fn run_node(args: NodeArgs) -> Result<()> {
    let file: NodeFile = read_config(args.config.as_deref())?;
    let id = args
        .id
        .or(file.id)
        .ok_or_else(|| anyhow!("a node id is needed: --id or id in the config file"))?;
    let data_dir = args.data_dir.or(file.data_dir).ok_or_else(|| {
        anyhow!("a data directory is needed: --data-dir or data_dir in the config file")
    })?;
    let cluster_secret = cluster_secret(args.cluster_secret.or(file.cluster_secret))?;
    private_dir(&data_dir)?;
    let scrub = args.scrub_secs.or(file.scrub_secs).unwrap_or(86_400);
    let node = Node::bind(NodeConfig {
        node_id: id.clone(),
        data_dir,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9100))),
        advertise: args.advertise.or(file.advertise),
        gateways: if args.gateway.is_empty() {
            file.gateway.into_iter().chain(file.gateways).collect()
        } else {
            args.gateway
        },
        cluster_secret,
        capacity_bytes: args.capacity_bytes.or(file.capacity_bytes),
        heartbeat_interval: Duration::from_millis(
            args.heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(1000)
                .max(50),
        ),
        scrub_interval: (scrub > 0).then(|| Duration::from_secs(scrub)),
        server: Default::default(),
        task_tools: args
            .task_tools
            .or(file.task_tools)
            .or_else(default_task_tools),
    })
    .await?;
    let addr = node.local_addr()?;
    println!(
        "{}",
        serde_json::json!({ "event": "listening", "node_id": id, "addr": addr.to_string(), "url": node.advertised_url() })
    );
    node.serve(stop_signal(args.exit_with_parent))
        .await
        .map_err(Into::into)
}
