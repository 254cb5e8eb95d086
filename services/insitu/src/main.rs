//! The `insitu` command: `dev` (a whole cluster on one machine), `gateway`,
//! `node`, and `admin` (tenants, keys, nodes).

mod admin;
mod dev;
mod job;
mod job_watch;
mod signed_client;

/// jemalloc rather than glibc malloc, for every allocation in the process
/// (the workspace enables `unprefixed_malloc_on_supported_platforms`, so
/// rocksdb's C++ code uses it too): with glibc's per-thread arenas holding
/// freed memory, a long-running gateway's RSS crept up under steady load
/// (docs/PERFORMANCE.md, soak runs).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own figures, for the gateway's metrics
/// (`insitu_allocator_bytes`): `allocated` is what the program holds,
/// rocksdb's caches included; `resident` what the allocator keeps in
/// memory for it, freed pages not yet returned included; `retained`
/// address space kept unmapped for reuse. Zero when a figure cannot be
/// read.
fn allocator_stats() -> Vec<(&'static str, u64)> {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    vec![
        ("allocated", stats::allocated::read().unwrap_or(0) as u64),
        ("active", stats::active::read().unwrap_or(0) as u64),
        ("resident", stats::resident::read().unwrap_or(0) as u64),
        ("metadata", stats::metadata::read().unwrap_or(0) as u64),
        ("retained", stats::retained::read().unwrap_or(0) as u64),
    ]
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "insitu",
    version,
    about = "An S3 object store that runs map/reduce tasks next to the data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
pub struct RootArgs {
    /// Root access key id.
    #[arg(long, env = "INSITU_ROOT_ACCESS_KEY", hide_env_values = true)]
    pub root_access_key: Option<String>,
    /// Root secret access key.
    #[arg(long, env = "INSITU_ROOT_SECRET_KEY", hide_env_values = true)]
    pub root_secret_key: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway and N storage-node processes on this machine.
    Dev(dev::DevArgs),
    /// Run a gateway in front of storage nodes given with --node.
    Gateway(dev::GatewayArgs),
    /// Run one storage node.
    Node(NodeArgs),
    /// Administer a running cluster (tenants, keys, nodes).
    Admin(admin::AdminArgs),
    /// Run and follow map/reduce jobs (with a tenant's keys).
    Job(job::JobArgs),
}

#[derive(clap::Args, Default)]
pub struct NodeArgs {
    /// A TOML file with any of the flags below (snake_case keys); flags and
    /// environment variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Permanent node id; object records name replicas by it.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9100].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// URL the gateway should use to reach this node [default: http://<listen>].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Gateway URL to register with by heartbeat; repeat it for several
    /// gateways (the node beats to the first that answers).
    #[arg(long = "gateway")]
    pub gateway: Vec<String>,
    /// Shared secret between the gateway and its nodes.
    #[arg(long, env = "INSITU_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Most bytes this node will store (below the filesystem's size).
    #[arg(long)]
    pub capacity_bytes: Option<u64>,
    /// Heartbeat period in milliseconds [default: 1000].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Re-check every blob's checksums this often, in seconds [default: 86400; 0 disables].
    #[arg(long)]
    pub scrub_secs: Option<u64>,
    /// The task tools' directory (`insitu-task`, `mget`, `mls`; built by
    /// scripts/build-task-tools), mounted read-only into every task
    /// container with its S3 endpoint [default: `task-tools` beside this
    /// binary or in its parent directory, if there].
    #[arg(long, env = "INSITU_TASK_TOOLS")]
    pub task_tools: Option<PathBuf>,
    /// Exit when standard input closes: `insitu dev` holds it open, so its
    /// nodes stop with it even if it is killed.
    #[arg(long)]
    pub exit_with_parent: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INSITU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    insitu_gateway::admin_api::set_allocator_probe(allocator_stats);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("insitu: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(a) => dev::run_dev(a).await.map(|()| 0),
            Command::Gateway(a) => dev::run_gateway(a).await.map(|()| 0),
            Command::Node(a) => dev::run_node(a).await.map(|()| 0),
            Command::Admin(a) => admin::run(a).await.map(|()| 0),
            Command::Job(a) => job::run(a).await,
        }
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("insitu: {e:#}");
            ExitCode::FAILURE
        }
    }
}
