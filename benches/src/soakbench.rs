//! Soak test, run by `benches/run-soak.sh` (not in CI: it takes half an
//! hour). A cluster of two `insitu dev` nodes and one node started apart
//! (`s1`), two replicas, under mixed S3 traffic from many clients (small
//! and large PUTs, GETs that check every byte, multipart uploads, lists
//! and deletes) and a job every minute, while `s1` is killed with
//! `kill -9` and restarted every few minutes.
//!
//! It checks what the soak is for, and prints a JSON report:
//! - nothing acknowledged is lost: every GET of an acknowledged key, during
//!   the run and in a full sweep at the end, returns its exact bytes (a
//!   503 while a node is down is counted, not failed; a 404 or wrong bytes
//!   is a loss);
//! - every job ends `done` with one correct output per input;
//! - gateway and (never killed) node RSS stay flat: the median of the
//!   samples in the last third of the run against the first third, after
//!   a warm-up.
//!
//! `SOAK_SECS` (default 1800), `SOAK_KILL_EVERY_SECS` (default 180),
//! `SOAK_CLIENTS` (default 12).

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use insitu_benches::rss_mib;
use insitu_e2e::{content_for, insitu_bin, unique, Cluster, RawClient, Tenant};
use rand::{Rng, SeedableRng};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// Live keys a client keeps; past it, it deletes one of its own.
const LIVE_KEYS: usize = 150;
const JOB_INPUTS: usize = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Counts {
    puts: AtomicU64,
    large_puts: AtomicU64,
    multipart: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    /// 5xx and connection errors, expected while a node is down.
    transient: AtomicU64,
    /// A 404 or wrong bytes for an acknowledged key, or a list missing one.
    lost: AtomicU64,
    jobs_done: AtomicU64,
    jobs_failed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A key made by a client, with its size at the end (`content_for` gives
/// its bytes).
fn key(w: usize, kind: &str, i: u64, size: usize) -> String {
    format!("c{w}/{kind}{i}-{size}")
}

/// One client's loop until `until`; returns the keys it holds acknowledged
/// (key → size).
async fn client(
    w: usize,
    c: Arc<RawClient>,
    bucket: String,
    until: Instant,
    n: Arc<Counts>,
) -> HashMap<String, usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
    let mut acked: HashMap<String, usize> = HashMap::new();
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let roll: u32 = rng.gen_range(0..100);
        let own: Vec<&String> = acked.keys().collect();
        let pick = (!own.is_empty()).then(|| own[rng.gen_range(0..own.len())].clone());
        if acked.len() > LIVE_KEYS || (roll >= 90 && pick.is_some()) {
            let Some(k) = pick else { continue };
            // Uncertain from the moment it is sent: never checked again.
            acked.remove(&k);
            match c
                .send("DELETE", &format!("/{bucket}/{k}"), &[], &[], Vec::new())
                .await
            {
                Ok(r) if r.status().as_u16() == 204 => bump(&n.deletes),
                _ => bump(&n.transient),
            }
        } else if roll < 40 {
            let size = rng.gen_range(1..=64 * KIB);
            let k = key(w, "s", i, size);
            if put(&c, &bucket, &k, size, &n).await {
                bump(&n.puts);
                acked.insert(k, size);
            }
        } else if roll < 45 {
            let size = rng.gen_range(8 * MIB..=32 * MIB);
            let k = key(w, "l", i, size);
            if put(&c, &bucket, &k, size, &n).await {
                bump(&n.large_puts);
                acked.insert(k, size);
            }
        } else if roll < 48 {
            let size = 2 * 5 * MIB + rng.gen_range(1..=MIB);
            let k = key(w, "m", i, size);
            if multipart(&c, &bucket, &k, size).await.is_ok() {
                bump(&n.multipart);
                acked.insert(k, size);
            } else {
                bump(&n.transient);
            }
        } else if roll < 80 {
            let Some(k) = pick else { continue };
            let size = acked[&k];
            check(&c, &bucket, &k, size, &n).await;
        } else {
            list(&c, &bucket, w, &acked, &n).await;
        }
    }
    acked
}

async fn put(c: &RawClient, bucket: &str, k: &str, size: usize, n: &Counts) -> bool {
    let body = content_for(k, size);
    match c
        .send("PUT", &format!("/{bucket}/{k}"), &[], &[], body)
        .await
    {
        Ok(r) if r.status().is_success() => true,
        _ => {
            bump(&n.transient);
            false
        }
    }
}

/// GETs an acknowledged key and checks its bytes.
async fn check(c: &RawClient, bucket: &str, k: &str, size: usize, n: &Counts) {
    match c
        .send("GET", &format!("/{bucket}/{k}"), &[], &[], Vec::new())
        .await
    {
        Ok(r) if r.status().is_success() => match r.bytes().await {
            Ok(b) if b[..] == content_for(k, size)[..] => bump(&n.gets),
            Ok(b) => {
                eprintln!("soak: LOST {k}: {} bytes, not its {size}", b.len());
                bump(&n.lost);
            }
            Err(_) => bump(&n.transient),
        },
        Ok(r) if r.status().as_u16() == 404 => {
            eprintln!("soak: LOST {k}: 404");
            bump(&n.lost);
        }
        _ => bump(&n.transient),
    }
}

/// Lists the client's prefix: every key it holds acknowledged is there.
async fn list(c: &RawClient, bucket: &str, w: usize, acked: &HashMap<String, usize>, n: &Counts) {
    let prefix = format!("c{w}/");
    let mut seen = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("list-type", "2"), ("prefix", prefix.as_str())];
        if let Some(t) = &token {
            q.push(("continuation-token", t.as_str()));
        }
        let text = match c
            .send("GET", &format!("/{bucket}"), &q, &[], Vec::new())
            .await
        {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => {
                bump(&n.transient);
                return;
            }
        };
        for part in text.split("<Key>").skip(1) {
            if let Some(k) = part.split("</Key>").next() {
                seen.insert(k.to_string());
            }
        }
        token = text
            .split("<NextContinuationToken>")
            .nth(1)
            .and_then(|s| s.split("</NextContinuationToken>").next())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    bump(&n.lists);
    for k in acked.keys() {
        if !seen.contains(k) {
            eprintln!("soak: LOST {k}: not listed");
            bump(&n.lost);
        }
    }
}

/// A three-part upload of `size` bytes (two 5 MiB parts and the rest).
async fn multipart(c: &RawClient, bucket: &str, k: &str, size: usize) -> Result<()> {
    let path = format!("/{bucket}/{k}");
    let r = c
        .send("POST", &path, &[("uploads", "")], &[], Vec::new())
        .await?;
    if !r.status().is_success() {
        bail!("create: {}", r.status());
    }
    let text = r.text().await?;
    let id = text
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .ok_or_else(|| anyhow!("no upload id"))?
        .to_string();
    let body = content_for(k, size);
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (p, chunk) in body.chunks(5 * MIB).enumerate() {
        let num = (p + 1).to_string();
        let r = c
            .send(
                "PUT",
                &path,
                &[("partNumber", &num), ("uploadId", &id)],
                &[],
                chunk.to_vec(),
            )
            .await?;
        if !r.status().is_success() {
            bail!("part {num}: {}", r.status());
        }
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("no etag"))?
            .to_string();
        xml.push_str(&format!(
            "<Part><PartNumber>{num}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    let r = c
        .send("POST", &path, &[("uploadId", &id)], &[], xml.into_bytes())
        .await?;
    let ok = r.status().is_success();
    let text = r.text().await?;
    // A 200 whose body is an error is a failed completion.
    if !ok || text.contains("<Error>") {
        bail!("complete: {text}");
    }
    Ok(())
}

/// Runs one `wc -l` job over the job inputs through the CLI and checks
/// its outputs.
fn job(endpoint: &str, t: &Tenant, bucket: &str, round: u64, dir: &std::path::Path) -> Result<()> {
    let inputs: Vec<String> = (0..JOB_INPUTS)
        .map(|i| format!("{bucket}/jobin/{i}"))
        .collect();
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "wc -l" }],
        "inputs": inputs,
        "output": format!("{bucket}/jobout/{round}/"),
    });
    let file = dir.join(format!("soak-job-{round}.json"));
    std::fs::write(&file, spec.to_string())?;
    let out = Command::new(insitu_bin())
        .args(["job", "run", "--watch", "--spec"])
        .arg(&file)
        .env("INSITU_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key)
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| anyhow!("job run: {}", String::from_utf8_lossy(&out.stderr)))?;
    if status["state"] != "done" || status["counters"]["outputs"] != JOB_INPUTS {
        bail!("job {round}: {status}");
    }
    Ok(())
}

/// The sum of `insitu_catalog_memory_bytes` in the gateway's metrics, MiB
/// (0 if they cannot be read).
async fn catalog_memory_mib(url: &str) -> f64 {
    let Ok(r) = reqwest::get(url).await else {
        return 0.0;
    };
    insitu_benches::catalog_memory_in(&r.text().await.unwrap_or_default())
}

fn pid_of(pattern: &str) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "--", pattern])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A client whose requests give up after two minutes (a hung request is
/// counted, not waited for forever).
fn patient_client(endpoint: &str, t: &Tenant) -> Result<RawClient> {
    let mut c = RawClient::new(endpoint, t);
    c.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    Ok(c)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (first third, last third) medians of the samples after the warm-up.
fn drift(samples: &[f64]) -> (f64, f64) {
    let third = samples.len() / 3;
    (
        median(samples[..third].to_vec()),
        median(samples[samples.len() - third..].to_vec()),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let secs = env_u64("SOAK_SECS", 1800);
    let kill_every = env_u64("SOAK_KILL_EVERY_SECS", 180);
    let clients = env_u64("SOAK_CLIENTS", 12) as usize;
    let mut cluster = Cluster::start_with(2, Some(2))?;
    cluster.start_node("s1", &[])?;
    let t = cluster.create_tenant("soak")?;
    let bucket = unique("soak");
    let c0 = Arc::new(patient_client(&cluster.endpoint, &t)?);
    c0.create_bucket(&bucket).await?;
    for i in 0..JOB_INPUTS {
        let body = "line\n".repeat(100 + i);
        let r = c0
            .send(
                "PUT",
                &format!("/{bucket}/jobin/{i}"),
                &[],
                &[],
                body.into(),
            )
            .await?;
        if !r.status().is_success() {
            bail!("job input: {}", r.status());
        }
    }
    let gateway = cluster.gateway_pid().ok_or_else(|| anyhow!("no gateway"))?;
    let steady_nodes: Vec<(String, u32)> = ["node-0", "node-1"]
        .iter()
        .filter_map(|id| {
            let pattern = format!("--id {id} --data-dir {}", cluster.node_dir(id).display());
            pid_of(&pattern).map(|p| (id.to_string(), p))
        })
        .collect();
    if steady_nodes.is_empty() {
        bail!("cannot find the dev nodes' processes");
    }
    let n = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut workers = Vec::new();
    for w in 0..clients {
        let c = Arc::new(patient_client(&cluster.endpoint, &t)?);
        workers.push(tokio::spawn(client(w, c, bucket.clone(), until, n.clone())));
    }
    // Jobs, one after another, a minute apart.
    let jobs = {
        let (endpoint, t, bucket, n) = (
            cluster.endpoint.clone(),
            t.clone(),
            bucket.clone(),
            n.clone(),
        );
        let dir = cluster.dir.path().to_path_buf();
        std::thread::spawn(move || {
            let mut round = 0;
            while Instant::now() < until {
                round += 1;
                match job(&endpoint, &t, &bucket, round, &dir) {
                    Ok(()) => bump(&n.jobs_done),
                    Err(e) => {
                        eprintln!("soak: job failed: {e}");
                        bump(&n.jobs_failed);
                    }
                }
                std::thread::sleep(Duration::from_secs(60));
            }
        })
    };
    // Kills, restarts and RSS samples, from here.
    let warm_up = Duration::from_secs((secs / 6).min(300));
    let mut gateway_rss = Vec::new();
    // What the embedded catalog holds (rocksdb's cache and buffers), from
    // the gateway's metrics, sampled with its RSS: the rest is the
    // gateway's own.
    let mut catalog_mem = Vec::new();
    let metrics_url = format!("{}/_insitu/v1/metrics", cluster.endpoint);
    let mut node_rss: HashMap<String, Vec<f64>> = HashMap::new();
    let mut kills = 0;
    let mut next_kill = start + Duration::from_secs(kill_every);
    let mut next_sample = start + warm_up;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = Instant::now();
        if now >= next_kill {
            cluster.kill9_node("s1");
            kills += 1;
            eprintln!(
                "soak: killed s1 ({kills}) at {} s",
                start.elapsed().as_secs()
            );
            tokio::time::sleep(Duration::from_secs(20)).await;
            cluster.start_node("s1", &[])?;
            next_kill = now + Duration::from_secs(kill_every);
        }
        if now >= next_sample {
            if let Some(r) = rss_mib(gateway) {
                gateway_rss.push(r);
                catalog_mem.push(catalog_memory_mib(&metrics_url).await);
            }
            for (id, pid) in &steady_nodes {
                if let Some(r) = rss_mib(*pid) {
                    node_rss.entry(id.clone()).or_default().push(r);
                }
            }
            next_sample = now + Duration::from_secs(15);
        }
    }
    let mut acked: Vec<HashMap<String, usize>> = Vec::new();
    for w in workers {
        acked.push(w.await?);
    }
    let _ = jobs.join();
    // The final sweep, once the killed node is back and caught up.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let swept_before = n.lost.load(Ordering::Relaxed);
    let mut swept = 0;
    for (w, keys) in acked.iter().enumerate() {
        let c = patient_client(&cluster.endpoint, &t)?;
        for (k, size) in keys {
            check(&c, &bucket, k, *size, &n).await;
            swept += 1;
        }
        list(&c, &bucket, w, keys, &n).await;
    }
    let (g0, g1) = drift(&gateway_rss);
    let (c0, c1) = drift(&catalog_mem);
    let own: Vec<f64> = gateway_rss
        .iter()
        .zip(&catalog_mem)
        .map(|(r, c)| r - c)
        .collect();
    let (o0, o1) = drift(&own);
    let nodes: serde_json::Map<String, serde_json::Value> = node_rss
        .iter()
        .map(|(id, s)| {
            let (a, b) = drift(s);
            (
                id.clone(),
                serde_json::json!({ "first_third_mib": a, "last_third_mib": b }),
            )
        })
        .collect();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "seconds": secs,
        "clients": clients,
        "node_kills": kills,
        "ops": {
            "small_puts": load(&n.puts), "large_puts": load(&n.large_puts),
            "multipart": load(&n.multipart), "gets_checked": load(&n.gets),
            "lists_checked": load(&n.lists), "deletes": load(&n.deletes),
            "transient_errors": load(&n.transient),
        },
        "jobs": { "done": load(&n.jobs_done), "failed": load(&n.jobs_failed) },
        "final_sweep": { "keys": swept, "lost": load(&n.lost) - swept_before },
        "lost_total": load(&n.lost),
        "rss": {
            "samples": gateway_rss.len(),
            "gateway_series_mib": gateway_rss.iter().step_by(4).map(|r| r.round()).collect::<Vec<_>>(),
            "gateway": { "first_third_mib": g0, "last_third_mib": g1 },
            "gateway_catalog_series_mib": catalog_mem.iter().step_by(4).map(|r| r.round()).collect::<Vec<_>>(),
            "gateway_catalog": { "first_third_mib": c0, "last_third_mib": c1 },
            "gateway_without_catalog": { "first_third_mib": o0, "last_third_mib": o1 },
            "nodes": nodes,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if load(&n.lost) > 0 || load(&n.jobs_failed) > 0 {
        bail!("the soak lost acknowledged data or failed a job");
    }
    Ok(())
}
