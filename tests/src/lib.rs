//! Test harness: starts the real `insitu` binary as a cluster of processes
//! and hands out tenants. Every end-to-end test goes through it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub mod sign;

pub const ROOT_KEY: &str = "INSITUTESTROOT";
pub const ROOT_SECRET: &str = "insitu-test-root-secret-0123456789";

/// Path of the `insitu` binary built by cargo for this workspace.
pub fn insitu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("INSITU_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("insitu")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Tenant {
    pub tenant: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub nodes: usize,
    pub replicas: Option<usize>,
    pub extra_args: Vec<String>,
    child: Option<Child>,
    /// Nodes started by the test itself (`insitu node`), killed on drop.
    extra_nodes: Vec<Child>,
    /// What `insitu dev` said when it was ready (endpoints, gateway pids).
    pub ready: serde_json::Value,
    /// The throwaway PostgreSQL of a cluster started with
    /// `INSITU_E2E_CATALOG=postgresql` (see [`Cluster::start_with_args`]).
    pub postgres: Option<insitu_catalog::testing::TestPostgres>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique within this test process, usable in bucket names.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{}-{n}", std::process::id())
}

impl Cluster {
    pub fn start(nodes: usize) -> Result<Self> {
        Self::start_with(nodes, None)
    }

    pub fn start_with(nodes: usize, replicas: Option<usize>) -> Result<Self> {
        Self::start_with_args(nodes, replicas, &[])
    }

    /// Starts a cluster with extra `insitu dev` arguments. With
    /// `INSITU_E2E_CATALOG=postgresql` in the environment, and no
    /// `--catalog` among the arguments, the cluster's catalog is a
    /// throwaway PostgreSQL of its own: so the same suites run on both
    /// backends.
    pub fn start_with_args(nodes: usize, replicas: Option<usize>, args: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("insitu-e2e").tempdir()?;
        let mut extra_args: Vec<String> = args.iter().map(ToString::to_string).collect();
        let mut postgres = None;
        let wants_pg = std::env::var("INSITU_E2E_CATALOG").is_ok_and(|v| v == "postgresql");
        if wants_pg && !args.contains(&"--catalog") {
            let pg = insitu_catalog::testing::TestPostgres::start().map_err(|e| anyhow!(e))?;
            extra_args.push("--catalog".into());
            extra_args.push(pg.url("postgres"));
            postgres = Some(pg);
        }
        let mut c = Cluster {
            dir,
            endpoint: String::new(),
            nodes,
            replicas,
            extra_args,
            child: None,
            extra_nodes: Vec::new(),
            ready: serde_json::Value::Null,
            postgres,
        };
        c.launch(None)?;
        Ok(c)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `insitu dev`; with `port`, on that port (restarts keep the
    /// endpoint so clients can reconnect).
    fn launch(&mut self, port: Option<u16>) -> Result<()> {
        let bin = insitu_bin();
        if !bin.exists() {
            bail!(
                "{} does not exist; run `cargo build -p insitu` first (scripts/test does)",
                bin.display()
            );
        }
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let mut cmd = Command::new(&bin);
        cmd.arg("dev")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--nodes")
            .arg(self.nodes.to_string())
            .env("INSITU_ROOT_ACCESS_KEY", ROOT_KEY)
            .env("INSITU_ROOT_SECRET_KEY", ROOT_SECRET)
            .env(
                "INSITU_LOG",
                std::env::var("INSITU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(r) = self.replicas {
            cmd.arg("--replicas").arg(r.to_string());
        }
        cmd.args(&self.extra_args);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("insitu dev did not become ready"))?;
        let ready: serde_json::Value = serde_json::from_str(&line)?;
        self.endpoint = ready["endpoint"]
            .as_str()
            .ok_or_else(|| anyhow!("no endpoint in {line}"))?
            .to_string();
        self.ready = ready;
        self.child = Some(child);
        Ok(())
    }

    /// Every gateway's endpoint (`insitu dev --gateways N`), in port order.
    pub fn endpoints(&self) -> Vec<String> {
        match self.ready["endpoints"].as_array() {
            Some(list) => list
                .iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect(),
            None => vec![self.endpoint.clone()],
        }
    }

    /// kill -9 one of the gateways of `insitu dev --gateways N`.
    pub fn kill9_gateway(&self, i: usize) {
        if let Some(pid) = self.ready["gateway_pids"][i].as_u64() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }

    /// Process id of the gateway (`insitu dev` itself).
    pub fn gateway_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// kill -9 the gateway; its nodes notice their closed stdin and exit.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Wait for the orphaned nodes to exit so their ports and files are free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && node_processes(&self.data_dir()) > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 every storage node process of this cluster.
    pub fn kill9_nodes(&self) {
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg(format!("data-dir {}/nodes/", self.data_dir().display()))
            .status();
    }

    pub fn restart(&mut self) -> Result<()> {
        let port = self.port();
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch(Some(port)) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Creates a tenant through the real CLI, as an operator would.
    pub fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let out = Command::new(insitu_bin())
            .args([
                "admin",
                "--endpoint",
                &self.endpoint,
                "tenant",
                "create",
                name,
            ])
            .env("INSITU_ROOT_ACCESS_KEY", ROOT_KEY)
            .env("INSITU_ROOT_SECRET_KEY", ROOT_SECRET)
            .output()?;
        if !out.status.success() {
            bail!(
                "tenant create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Number of files under the nodes' temp dirs (in-flight or leaked writes).
    pub fn temp_files(&self) -> usize {
        count_files(&self.data_dir().join("nodes"), "tmp")
    }

    /// Every blob file on every node: (path, size).
    pub fn blob_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        walk(&self.data_dir().join("nodes"), &mut |p| {
            if p.components().any(|c| c.as_os_str() == "blobs") && p.extension().is_none() {
                if let Ok(m) = std::fs::metadata(p) {
                    out.push((p.to_path_buf(), m.len()));
                }
            }
        });
        out
    }
}

impl Cluster {
    /// Blob id → ids of the nodes whose disks hold a copy, read off the
    /// node directories.
    pub fn blob_copies(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let nodes = self.data_dir().join("nodes");
        for (path, _) in self.blob_files() {
            let Ok(rel) = path.strip_prefix(&nodes) else {
                continue;
            };
            let node = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.entry(id).or_default().push(node);
        }
        out
    }

    /// The secret nodes share with the gateway.
    pub fn cluster_secret(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(self.data_dir().join("cluster-secret"))?
                .trim()
                .to_string(),
        )
    }

    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.data_dir().join("nodes").join(id)
    }

    /// kill -9 one storage node.
    pub fn kill9_node(&self, id: &str) {
        let pattern = format!("--id {id} --data-dir {}", self.node_dir(id).display());
        let _ = Command::new("pkill")
            .arg("-9")
            .arg("-f")
            .arg("--")
            .arg(&pattern)
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let alive = Command::new("pgrep")
                .arg("-f")
                .arg("--")
                .arg(&pattern)
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `insitu node` for `id` that registers with this cluster's
    /// gateway by heartbeat; `args` are extra flags.
    pub fn start_node(&mut self, id: &str, args: &[&str]) -> Result<()> {
        let mut child = Command::new(insitu_bin())
            .args(["node", "--id", id, "--data-dir"])
            .arg(self.node_dir(id))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--gateway",
                &self.endpoint,
                "--heartbeat-ms",
                "200",
            ])
            .args(args)
            .env("INSITU_CLUSTER_SECRET", self.cluster_secret()?)
            .env(
                "INSITU_LOG",
                std::env::var("INSITU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().ok_or_else(|| anyhow!("node {id} exited"))??;
        std::thread::spawn(move || for _ in lines {});
        if !first.contains("listening") {
            bail!("node {id} said {first}");
        }
        self.extra_nodes.push(child);
        Ok(())
    }

    /// Runs `insitu admin ARGS` as root and parses its JSON output.
    pub fn admin(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = Command::new(insitu_bin())
            .args(["admin", "--endpoint", &self.endpoint])
            .args(args)
            .env("INSITU_ROOT_ACCESS_KEY", ROOT_KEY)
            .env("INSITU_ROOT_SECRET_KEY", ROOT_SECRET)
            .output()?;
        if !out.status.success() {
            bail!("admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The state the gateway reports for a node.
    pub fn node_state(&self, id: &str) -> Option<String> {
        let report = self.admin(&["nodes"]).ok()?;
        report["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id)
            .and_then(|n| n["state"].as_str().map(str::to_string))
    }
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.extra_nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill9();
        // A node killed for a test is not restarted to reap its task
        // containers; a job cut short at the end of a test leaves its own.
        // Nothing may outlive the test: containers, then scratch mounts.
        let nodes = self.data_dir().join("nodes");
        if let Ok(entries) = std::fs::read_dir(&nodes) {
            for e in entries.flatten() {
                let tasks = e.path().join("tasks");
                let root = std::fs::canonicalize(&tasks).unwrap_or(tasks);
                let ids = Command::new("docker")
                    .args(["ps", "-aq", "--filter"])
                    .arg(format!("label=insitu.root={}", root.display()))
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(["rm", "-f"])
                        .args(&ids)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let data = self.data_dir();
        let data = std::fs::canonicalize(&data).unwrap_or(data);
        for line in mounts.lines() {
            if let Some(point) = line.split_whitespace().nth(1) {
                if point.starts_with(&*data.to_string_lossy()) {
                    let _ = Command::new("umount").args(["-l", point]).status();
                }
            }
        }
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

fn count_files(root: &Path, dir_name: &str) -> usize {
    let mut n = 0;
    walk(root, &mut |p| {
        if p.parent()
            .and_then(|d| d.file_name())
            .is_some_and(|d| d == dir_name)
        {
            n += 1;
        }
    });
    n
}

fn node_processes(data_dir: &Path) -> usize {
    Command::new("pgrep")
        .arg("-f")
        .arg(format!("data-dir {}/nodes/", data_dir.display()))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

/// Runs a command with a clean AWS environment for `tenant`.
pub fn aws_env(
    cmd: &mut Command,
    endpoint: &str,
    tenant: &Tenant,
    config_dir: &Path,
) -> Result<()> {
    let config = config_dir.join("aws-config");
    std::fs::write(
        &config,
        "[default]\nregion = us-east-1\ns3 =\n    signature_version = s3v4\n    addressing_style = path\n",
    )?;
    cmd.env("AWS_ACCESS_KEY_ID", &tenant.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &tenant.secret_access_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &config)
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            config_dir.join("no-credentials"),
        )
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
    Ok(())
}

/// Raw signed HTTP requests, for the cases a polite SDK never sends.
pub struct RawClient {
    pub endpoint: String,
    pub signer: sign::Signer,
    pub http: reqwest::Client,
}

impl RawClient {
    pub fn new(endpoint: &str, tenant: &Tenant) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            signer: sign::Signer::new(&tenant.access_key_id, &tenant.secret_access_key),
            http: reqwest::Client::new(),
        }
    }

    pub fn host(&self) -> String {
        self.endpoint.trim_start_matches("http://").to_string()
    }

    /// Sends a request signed now, with the body's real SHA-256.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let hash = sign::sha256_hex(&body);
        self.send_signed(
            method,
            path,
            query,
            headers,
            body,
            &hash,
            chrono::Utc::now(),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn send_signed(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
        payload_hash: &str,
        time: chrono::DateTime<chrono::Utc>,
    ) -> Result<reqwest::Response> {
        let host = self.host();
        let mut all: Vec<(&str, &str)> = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        let signed = self
            .signer
            .sign(method, path, query, &all, payload_hash, time);
        // Encode the query as SigV4 does (%20, not '+'), not as a form.
        let query_string: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", sign::encode(k, false), sign::encode(v, false)))
            .collect();
        let mut url = format!("{}{}", self.endpoint, encode_path(path));
        if !query_string.is_empty() {
            url.push('?');
            url.push_str(&query_string.join("&"));
        }
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes())?, url)
            .body(body);
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        Ok(req.send().await?)
    }

    /// Signed headers (host excluded) for an `UNSIGNED-PAYLOAD` PUT of
    /// `content_length` bytes, signed now.
    pub fn unsigned_put_headers(&self, path: &str, content_length: u64) -> Vec<(String, String)> {
        let host = self.host();
        let len = content_length.to_string();
        self.signer
            .sign(
                "PUT",
                path,
                &[],
                &[("host", &host), ("content-length", &len)],
                "UNSIGNED-PAYLOAD",
                chrono::Utc::now(),
            )
            .headers
    }

    /// Opens a raw connection and sends the signed head of an
    /// `UNSIGNED-PAYLOAD` PUT declaring `content_length` bytes, so a test can
    /// send the body piecemeal, or not at all.
    pub async fn start_raw_put(
        &self,
        path: &str,
        content_length: u64,
    ) -> Result<tokio::net::TcpStream> {
        use tokio::io::AsyncWriteExt;
        let host = self.host();
        let len = content_length.to_string();
        let signed_headers = self.unsigned_put_headers(path, content_length);
        let mut stream = tokio::net::TcpStream::connect(&host).await?;
        let mut head = format!(
            "PUT {} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len}\r\n",
            encode_path(path)
        );
        for (k, v) in &signed_headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        Ok(stream)
    }

    /// A signed GET of `path` on the jobs API, answered 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.send("GET", path, &[], &[], Vec::new()).await?;
        if r.status() != 200 {
            bail!("GET {path}: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json().await?)
    }

    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let r = self
            .send("PUT", &format!("/{name}"), &[], &[], Vec::new())
            .await?;
        if !r.status().is_success() {
            bail!(
                "create bucket {name}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The usual start of a test: a cluster of `nodes` storage nodes, a tenant,
/// a raw client for it, and a fresh bucket.
pub async fn cluster_with_bucket(
    nodes: usize,
    tenant: &str,
    prefix: &str,
) -> (Cluster, Tenant, RawClient, String) {
    let cluster = Cluster::start(nodes).expect("cluster");
    let t = cluster.create_tenant(tenant).expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique(prefix);
    c.create_bucket(&bucket).await.expect("bucket");
    (cluster, t, c, bucket)
}

/// Deterministic content for a key, so any object found after a crash or a
/// failure can be checked, acknowledged or not.
pub fn content_for(key: &str, size: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..size)
        .map(|i| (seed.wrapping_add(i as u32).wrapping_mul(2654435761) >> 11) as u8)
        .collect()
}

/// The size encoded as the last `-N` of a key made by the tests.
pub fn size_in_key(key: &str) -> usize {
    key.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Percent-encodes a path the way SigV4 canonicalises it.
pub fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-_.~/".contains(c) {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The S3 error code in an XML error body.
pub fn error_code(body: &str) -> String {
    body.split("<Code>")
        .nth(1)
        .and_then(|s| s.split("</Code>").next())
        .unwrap_or("")
        .to_string()
}

/// Runs `insitu job ARGS` as `tenant` against `cluster`.
pub fn job_cli(cluster: &Cluster, tenant: &Tenant, args: &[&str]) -> std::process::Output {
    Command::new(insitu_bin())
        .arg("job")
        .args(args)
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &tenant.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &tenant.secret_access_key)
        .output()
        .expect("insitu job")
}

/// Submits a job spec (`insitu job run`, without waiting): its id.
pub fn submit_job(cluster: &Cluster, tenant: &Tenant, spec: &serde_json::Value) -> String {
    let file = cluster.dir.path().join(format!("{}.json", unique("spec")));
    std::fs::write(&file, spec.to_string()).expect("spec file");
    let file = file.to_string_lossy().into_owned();
    let out = job_cli(cluster, tenant, &["run", "--spec", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v["id"].as_str().unwrap_or_default().to_string(),
        Err(_) => text.trim().to_string(),
    }
}

/// Runs a job spec to its end (`insitu job run --watch`): its final
/// status and its error records.
pub fn run_job(
    cluster: &Cluster,
    tenant: &Tenant,
    spec: &serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let file = cluster.dir.path().join(format!("{}.json", unique("spec")));
    std::fs::write(&file, spec.to_string()).expect("spec file");
    let file = file.to_string_lossy().into_owned();
    let out = job_cli(cluster, tenant, &["run", "--watch", "--spec", &file]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("job run: {}", String::from_utf8_lossy(&out.stderr));
    });
    let id = status["id"].as_str().expect("a job id").to_string();
    let errors = job_cli(cluster, tenant, &["errors", &id]);
    let errors = String::from_utf8_lossy(&errors.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (status, errors)
}

/// Whether Docker here has gVisor's `runsc` runtime (scripts/setup
/// registers it); tests of it say so and pass where it is missing.
pub fn gvisor_installed() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("runsc"))
        .unwrap_or(false)
}
