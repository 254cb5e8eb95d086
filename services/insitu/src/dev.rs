//! Running the parts: `insitu dev` (gateway + node child processes),
//! `insitu gateway` and `insitu node`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use insitu_gateway::auth::RootCredentials;
use insitu_gateway::{Gateway, GatewayConfig};
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
    /// Number of storage-node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Replicas per object; defaults to min(2, nodes).
    #[arg(long)]
    replicas: Option<usize>,
    /// Serve virtual-hosted-style buckets under this domain.
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[command(flatten)]
    root: RootArgs,
}

#[derive(clap::Args)]
pub struct GatewayArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    #[arg(long, default_value = "./insitu-data/gateway")]
    data_dir: PathBuf,
    /// A storage node as `ID=URL`, e.g. `node-0=http://10.0.0.5:9100`.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    #[arg(long)]
    domain: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, env = "INSITU_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: String,
    #[command(flatten)]
    root: RootArgs,
}

fn random_string(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Reads a secret kept in the data dir, creating it on first start, so a
/// restarted cluster keeps its credentials.
fn persistent_secret(path: &Path, make: impl FnOnce() -> String) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        return Ok(s.trim().to_string());
    }
    let s = make();
    std::fs::write(path, &s).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(s)
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
async fn spawn_node(id: &str, data_dir: &Path, secret: &str) -> Result<NodeProcess> {
    let exe = std::env::current_exe().context("cannot find the insitu executable")?;
    let mut child = Command::new(exe)
        .arg("node")
        .arg("--id")
        .arg(id)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--exit-with-parent")
        .env("INSITU_CLUSTER_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start storage node {id}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("node {id} has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| anyhow!("storage node {id} did not start within 30 s"))??
        .ok_or_else(|| anyhow!("storage node {id} exited during start-up"))?;
    let ready: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("node {id} said {line:?}"))?;
    let addr = ready["addr"]
        .as_str()
        .ok_or_else(|| anyhow!("node {id} did not report its address"))?;
    Ok(NodeProcess {
        id: id.to_string(),
        addr: format!("http://{addr}"),
        child,
    })
}

pub async fn run_dev(args: DevArgs) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let replicas = args.replicas.unwrap_or(args.nodes.min(2));
    if replicas == 0 || replicas > args.nodes {
        bail!("--replicas must be between 1 and --nodes ({})", args.nodes);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let (root, generated) = root_credentials(&args.root, &args.data_dir)?;
    let secret = persistent_secret(&args.data_dir.join("cluster-secret"), || random_string(48))?;

    let mut children = Vec::new();
    for i in 0..args.nodes {
        let id = format!("node-{i}");
        let dir = args.data_dir.join("nodes").join(&id);
        children.push(spawn_node(&id, &dir, &secret).await?);
    }
    let gateway = Gateway::open(GatewayConfig {
        listen: args.listen,
        catalog_dir: args.data_dir.join("catalog"),
        domain: args.domain,
        region: args.region,
        replicas,
        root: root.clone(),
        cluster_secret: secret,
        gc_grace: Duration::from_secs(5),
    })?;
    for n in &children {
        gateway.register_node(&n.id, &n.addr)?;
    }
    let listener = gateway.bind().await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
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
        serde_json::json!({ "event": "ready", "endpoint": endpoint, "nodes": args.nodes, "replicas": replicas })
    );

    let result = gateway.serve(listener, shutdown_signal()).await;
    tracing::info!("stopping storage nodes");
    for mut n in children {
        // Closing stdin asks the node to stop; it finishes in-flight writes.
        drop(n.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), n.child.wait())
            .await
            .is_err()
        {
            let _ = n.child.kill().await;
        }
    }
    result.map_err(Into::into)
}

pub async fn run_gateway(args: GatewayArgs) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let (root, generated) = root_credentials(&args.root, &args.data_dir)?;
    let gateway = Gateway::open(GatewayConfig {
        listen: args.listen,
        catalog_dir: args.data_dir.join("catalog"),
        domain: args.domain,
        region: args.region,
        replicas: args.replicas,
        root: root.clone(),
        cluster_secret: args.cluster_secret,
        gc_grace: Duration::from_secs(30),
    })?;
    for spec in &args.nodes {
        let (id, url) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--node takes ID=URL, got {spec:?}"))?;
        gateway.register_node(id, url)?;
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
        .serve(listener, shutdown_signal())
        .await
        .map_err(Into::into)
}

pub async fn run_node(args: NodeArgs) -> Result<()> {
    let node = Node::bind(NodeConfig {
        node_id: args.id.clone(),
        data_dir: args.data_dir,
        listen: args.listen,
        cluster_secret: args.cluster_secret,
    })
    .await?;
    let addr = node.local_addr()?;
    println!(
        "{}",
        serde_json::json!({ "event": "listening", "node_id": args.id, "addr": addr.to_string() })
    );
    let exit_with_parent = args.exit_with_parent;
    let stop = async move {
        if exit_with_parent {
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
        } else {
            shutdown_signal().await;
        }
    };
    node.serve(stop).await.map_err(Into::into)
}
