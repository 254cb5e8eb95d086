//! Object-store benchmark, run by `benches/run.sh`. Every figure is measured
//! in one run on this machine, against a baseline from the same run:
//! - a 1 GiB `dd conv=fsync` against a 256 MiB PUT with a signed payload
//!   (what the aws CLI and boto3 send over plain http: the body's SHA-256
//!   in the signature, checked by the gateway as it streams) and with
//!   `UNSIGNED-PAYLOAD`, and a warm GET;
//! - 4 KiB PUT and GET operations per second at 32 concurrent clients;
//! - the gateway's peak RSS while a 2 GiB object streams in and out.
//!
//! `s3bench small` runs the 4 KiB phases alone, 5 times each, for
//! profiling and for comparing two builds quickly.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use insitu_e2e::{Cluster, RawClient};

const MIB: u64 = 1024 * 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// MiB/s of `dd if=/dev/zero bs=1M count=N conv=fsync` into `dir`.
fn dd_bandwidth(dir: &std::path::Path, mib: u64) -> Result<f64> {
    let target = dir.join("dd.bin");
    let t = Instant::now();
    let st = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fsync")
        .arg("status=none")
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    if !st.success() {
        bail!("dd failed");
    }
    Ok(mib as f64 / secs)
}

/// The bytes every large PUT sends: `size / 1 MiB` copies of one MiB.
fn body_chunks(size: u64) -> impl Iterator<Item = Bytes> {
    let chunk = Bytes::from(vec![0x5au8; MIB as usize]);
    (0..size / MIB).map(move |_| chunk.clone())
}

/// Streams a PUT of `size` bytes to `path` with `signed` headers (host
/// excluded) and times it; returns MiB/s.
async fn timed_put(
    c: &RawClient,
    path: &str,
    size: u64,
    signed: &[(String, String)],
) -> Result<f64> {
    let body = futures::stream::iter(body_chunks(size).map(Ok::<_, std::io::Error>));
    let mut req = c
        .http
        .put(format!("{}{path}", c.endpoint))
        .header("content-length", size.to_string())
        .body(reqwest::Body::wrap_stream(body));
    for (k, v) in signed {
        req = req.header(k, v);
    }
    let t = Instant::now();
    let r = req.send().await?;
    let secs = t.elapsed().as_secs_f64();
    if !r.status().is_success() {
        bail!(
            "PUT {path}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    Ok(size as f64 / MIB as f64 / secs)
}

/// Streams `size` bytes to `path` with UNSIGNED-PAYLOAD; returns MiB/s.
async fn put_stream(c: &RawClient, path: &str, size: u64) -> Result<f64> {
    timed_put(c, path, size, &c.unsigned_put_headers(path, size)).await
}

/// PUTs `size` bytes to `path` with the payload signed, as ordinary
/// clients do over http: the body's SHA-256 is computed first (not timed;
/// a client hashes its file before sending), then the body streams.
async fn put_signed(c: &RawClient, path: &str, size: u64) -> Result<f64> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for chunk in body_chunks(size) {
        h.update(&chunk);
    }
    let hash = hex::encode(h.finalize());
    let (host, len) = (c.host(), size.to_string());
    let signed = c.signer.sign(
        "PUT",
        path,
        &[],
        &[("host", &host), ("content-length", &len)],
        &hash,
        chrono::Utc::now(),
    );
    timed_put(c, path, size, &signed.headers).await
}

/// Reads `path` and discards it; returns MiB/s.
async fn get_stream(c: &RawClient, path: &str) -> Result<f64> {
    let t = Instant::now();
    let r = c.send("GET", path, &[], &[], vec![]).await?;
    if !r.status().is_success() {
        bail!("GET {path}: {}", r.status());
    }
    let mut n = 0u64;
    let mut s = r.bytes_stream();
    while let Some(b) = s.next().await {
        n += b?.len() as u64;
    }
    Ok(n as f64 / MIB as f64 / t.elapsed().as_secs_f64())
}

/// Operations per second of `op` at `clients` concurrent clients.
async fn ops_per_sec(
    c: Arc<RawClient>,
    bucket: &str,
    clients: usize,
    dur: Duration,
    put: bool,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (c, done, errors, bucket) =
            (c.clone(), done.clone(), errors.clone(), bucket.to_string());
        tasks.push(tokio::spawn(async move {
            let body = vec![7u8; 4096];
            let mut i = 0u64;
            while start.elapsed() < dur {
                let path = if put {
                    format!("/{bucket}/small/{w}-{i}")
                } else {
                    format!("/{bucket}/small/{w}-{}", i % 50)
                };
                let r = if put {
                    c.send("PUT", &path, &[], &[], body.clone()).await
                } else {
                    c.send("GET", &path, &[], &[], vec![]).await
                };
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let errs = errors.load(Ordering::Relaxed);
    if errs > 0 {
        bail!("{errs} operations failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmHWM")?.parse()?;
    Ok(kib / 1024.0)
}

async fn repair_time() -> Result<(f64, u64, f64)> {
    let mut cluster = Cluster::start_with_args(
        4,
        Some(2),
        &[
            "--down-after-secs",
            "2",
            "--suspect-after-secs",
            "1",
            "--health-interval-ms",
            "200",
            "--repair-mib-per-sec",
            "100000",
        ],
    )?;
    let t = cluster.create_tenant("bench")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("bench").await?;
    for i in 0..32 {
        put_stream(&c, &format!("/bench/part-{i}"), 64 * MIB).await?;
    }
    // The node holding the most data goes down.
    let copies = cluster.blob_copies();
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for nodes in copies.values() {
        for n in nodes {
            *per_node.entry(n.clone()).or_default() += 1;
        }
    }
    let victim = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| id.clone())
        .context("no blobs")?;
    let lost_bytes = per_node[&victim] as u64 * 64 * MIB;
    let start = Instant::now();
    cluster.kill9_node(&victim);
    let live: Vec<String> = per_node.keys().filter(|n| **n != victim).cloned().collect();
    let done = insitu_e2e::wait_until(Duration::from_secs(600), || {
        cluster
            .blob_copies()
            .values()
            .all(|nodes| nodes.iter().filter(|n| live.contains(n)).count() == 2)
    });
    if !done {
        bail!("repair did not finish");
    }
    let secs = start.elapsed().as_secs_f64();
    let copied = cluster.admin(&["nodes"])?["repair"]["bytes_copied"]
        .as_u64()
        .unwrap_or(0);
    if copied < lost_bytes {
        bail!("repair copied {copied} bytes, expected {lost_bytes}");
    }
    // Baseline: one local copy of 1 GiB, synced.
    let src = cluster.data_dir().join("cp-src");
    Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", src.display()),
            "bs=1M",
            "count=1024",
            "conv=fsync",
            "status=none",
        ])
        .status()?;
    let t0 = Instant::now();
    Command::new("cp")
        .arg(&src)
        .arg(cluster.data_dir().join("cp-dst"))
        .status()?;
    Command::new("sync").status()?;
    let cp_secs = t0.elapsed().as_secs_f64();
    let _ = cluster.start_node(&victim, &[]);
    Ok((secs, copied, cp_secs))
}

/// CPU seconds used so far by the gateway, the nodes (together) and this
/// client.
fn cpu_split(gateway: u32, nodes: &[u32]) -> [f64; 3] {
    let cpu = |pid| insitu_benches::cpu_seconds(pid).unwrap_or(0.0);
    [
        cpu(gateway),
        nodes.iter().map(|p| cpu(*p)).sum(),
        cpu(std::process::id()),
    ]
}

/// A fresh cluster (3 nodes, R=1) with a tenant's client and its bucket
/// `bench`, and the pids whose CPU time a phase is split by: the gateway
/// and the nodes. The cluster stops when dropped.
async fn measured_cluster() -> Result<(Cluster, Arc<RawClient>, u32, Vec<u32>)> {
    let cluster = Cluster::start_with(3, Some(1))?;
    let t = cluster.create_tenant("bench")?;
    let c = Arc::new(RawClient::new(&cluster.endpoint, &t));
    c.create_bucket("bench").await?;
    let gateway = cluster.gateway_pid().context("gateway pid")?;
    let nodes = insitu_benches::node_pids(&cluster.data_dir());
    Ok((cluster, c, gateway, nodes))
}

/// `s3bench small`: the 4 KiB phases alone on a fresh cluster, with the CPU
/// time each operation cost the gateway, the nodes and the client (a
/// steadier figure than the rate on a shared machine).
async fn small_only() -> Result<()> {
    // Held to the end: the cluster stops when dropped.
    let (_cluster, c, gateway, nodes) = measured_cluster().await?;
    let dur = Duration::from_secs(5);
    let (mut rates, mut cpu_ms) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..5 {
        for (phase, put) in [(0, true), (1, false)] {
            let (before, t) = (cpu_split(gateway, &nodes), Instant::now());
            let rate = ops_per_sec(c.clone(), "bench", 32, dur, put).await?;
            let ops = rate * t.elapsed().as_secs_f64();
            let after = cpu_split(gateway, &nodes);
            let per_op: Vec<f64> = (0..3).map(|i| (after[i] - before[i]) * 1e3 / ops).collect();
            rates[phase].push(rate);
            cpu_ms[phase].push(per_op);
        }
    }
    let medians = |v: &Vec<Vec<f64>>| -> Vec<f64> {
        (0..3)
            .map(|i| (median(v.iter().map(|r| r[i]).collect()) * 1000.0).round() / 1000.0)
            .collect()
    };
    let result = serde_json::json!({
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "nodes": nodes.len(),
        "put_4kib_ops_s": rates[0].clone(),
        "get_4kib_ops_s": rates[1].clone(),
        "put_4kib_ops_s_median": median(rates[0].clone()),
        "get_4kib_ops_s_median": median(rates[1].clone()),
        "put_cpu_ms_per_op_gateway_nodes_client": medians(&cpu_ms[0]),
        "get_cpu_ms_per_op_gateway_nodes_client": medians(&cpu_ms[1]),
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// `s3bench get`: warm 256 MiB GETs alone on a fresh cluster (3 nodes,
/// R=1), 5 rounds over 3 objects, with the CPU time each GiB cost the
/// gateway, the nodes and the client; with `S3BENCH_PERF=FILE`, a
/// system-wide `perf record` of the GET rounds.
async fn large_get_only() -> Result<()> {
    // Held to the end: the cluster stops when dropped.
    let (_cluster, c, gateway, nodes) = measured_cluster().await?;
    for i in 0..3 {
        put_stream(&c, &format!("/bench/large-{i}"), 256 * MIB).await?;
        get_stream(&c, &format!("/bench/large-{i}")).await?; // warm the page cache
    }
    let _ = Command::new("sync").status();
    let perf = match std::env::var("S3BENCH_PERF") {
        Ok(out) => Some(
            Command::new("perf")
                .args(["record", "-a", "-g", "-F", "999", "-o", &out])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?,
        ),
        Err(_) => None,
    };
    let (mut rates, mut cpu_s_per_gib) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for i in 0..3 {
            let before = cpu_split(gateway, &nodes);
            rates.push(get_stream(&c, &format!("/bench/large-{i}")).await?);
            let after = cpu_split(gateway, &nodes);
            // 256 MiB is a quarter of a GiB.
            let per_gib: Vec<f64> = (0..3).map(|k| (after[k] - before[k]) * 4.0).collect();
            cpu_s_per_gib.push(per_gib);
        }
    }
    if let Some(p) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait_with_output();
    }
    let medians: Vec<f64> = (0..3)
        .map(|k| (median(cpu_s_per_gib.iter().map(|r| r[k]).collect()) * 1000.0).round() / 1000.0)
        .collect();
    let result = serde_json::json!({
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "warm_get_256mib_mib_s": rates.clone(),
        "warm_get_256mib_mib_s_median": median(rates),
        "cpu_s_per_gib_gateway_nodes_client": medians,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("small") => return small_only().await,
        Some("get") => return large_get_only().await,
        _ => {}
    }
    let big_mib: u64 = std::env::var("BENCH_RSS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let cluster = Cluster::start_with(3, Some(1))?;
    let t = cluster.create_tenant("bench")?;
    let c = Arc::new(RawClient::new(&cluster.endpoint, &t));
    c.create_bucket("bench").await?;

    let mut dd = Vec::new();
    let mut put = Vec::new();
    let mut put_unsigned = Vec::new();
    let mut get = Vec::new();
    for i in 0..3 {
        dd.push(dd_bandwidth(&cluster.data_dir(), 1024)?);
        put.push(put_signed(&c, &format!("/bench/large-{i}"), 256 * MIB).await?);
        put_unsigned.push(put_stream(&c, &format!("/bench/unsigned-{i}"), 256 * MIB).await?);
        get_stream(&c, &format!("/bench/large-{i}")).await?; // warm the page cache
        get.push(get_stream(&c, &format!("/bench/large-{i}")).await?);
    }
    let (runs_dd, runs_put, runs_put_unsigned, runs_get) =
        (dd.clone(), put.clone(), put_unsigned.clone(), get.clone());
    let (dd, put, put_unsigned, get) = (median(dd), median(put), median(put_unsigned), median(get));

    // Small objects, 3 runs each, medians (after the large writes above
    // have been written back, so that their flush does not slow these).
    let _ = Command::new("sync").status();
    let dur = Duration::from_secs(5);
    let (mut put_ops_runs, mut get_ops_runs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        put_ops_runs.push(ops_per_sec(c.clone(), "bench", 32, dur, true).await?);
        get_ops_runs.push(ops_per_sec(c.clone(), "bench", 32, dur, false).await?);
    }
    let runs = serde_json::json!({
        "dd_1gib_mib_s": runs_dd,
        "put_signed_mib_s": runs_put,
        "put_unsigned_mib_s": runs_put_unsigned,
        "warm_get_mib_s": runs_get,
        "put_4kib_ops_s": put_ops_runs.clone(),
        "get_4kib_ops_s": get_ops_runs.clone(),
    });
    let (put_ops, get_ops) = (median(put_ops_runs), median(get_ops_runs));

    let pid = cluster.gateway_pid().context("gateway pid")?;
    let rss_before = peak_rss_mib(pid)?;
    let big_put = put_stream(&c, "/bench/huge", big_mib * MIB).await?;
    let big_get = get_stream(&c, "/bench/huge").await?;
    let rss_peak = peak_rss_mib(pid)?;

    drop(cluster);

    // Replication: the same large PUT and GET at R=2 against R=1 above.
    let cluster2 = Cluster::start_with(3, Some(2))?;
    let t2 = cluster2.create_tenant("bench")?;
    let c2 = Arc::new(RawClient::new(&cluster2.endpoint, &t2));
    c2.create_bucket("bench").await?;
    let mut put_r2 = Vec::new();
    let mut get_r2 = Vec::new();
    for i in 0..3 {
        put_r2.push(put_stream(&c2, &format!("/bench/large-{i}"), 256 * MIB).await?);
        get_stream(&c2, &format!("/bench/large-{i}")).await?;
        get_r2.push(get_stream(&c2, &format!("/bench/large-{i}")).await?);
    }
    let (put_r2, get_r2) = (median(put_r2), median(get_r2));
    drop(cluster2);

    // Repair: time to re-replicate 1 GiB after a node loss (4 nodes, R=2),
    // against copying 1 GiB with `cp` + sync on the same disk.
    let (repair_secs, repaired_bytes, cp_secs) = repair_time().await?;

    let result = serde_json::json!({
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "dd_1gib_conv_fsync_mib_s": dd,
        "put_256mib_r1_signed_mib_s": put,
        "put_signed_vs_dd": put / dd,
        "put_256mib_r1_unsigned_mib_s": put_unsigned,
        "put_unsigned_vs_dd": put_unsigned / dd,
        "runs": runs,
        "warm_get_256mib_mib_s": get,
        "put_4kib_ops_s_32_clients": put_ops,
        "get_4kib_ops_s_32_clients": get_ops,
        "big_object_mib": big_mib,
        "big_put_mib_s": big_put,
        "big_get_mib_s": big_get,
        "gateway_peak_rss_mib_before_big": rss_before,
        "gateway_peak_rss_mib": rss_peak,
        "put_256mib_r2_mib_s": put_r2,
        "warm_get_256mib_r2_mib_s": get_r2,
        "put_r2_vs_r1": put_r2 / put,
        "repair_1gib_secs": repair_secs,
        "repair_bytes_copied": repaired_bytes,
        "repair_mib_s": repaired_bytes as f64 / MIB as f64 / repair_secs,
        "cp_1gib_sync_secs": cp_secs,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
