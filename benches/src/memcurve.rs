//! Memory against input count, run by `benches/run-memcurve.sh`: for each
//! count N given (default 10000 and 100000), a fresh cluster of 3 nodes at
//! R=1 stores N objects of 1 byte under one prefix, and a map job `true`
//! runs over the prefix. The gateway's (and each node's) resident memory
//! is sampled every 100 ms: idle after the upload, and at its peak while
//! the job plans and runs. Every 500 ms the gateway's RSS is also read
//! with its catalog's own memory (rocksdb's memtables and block cache,
//! from `/_insitu/v1/metrics`, bounded by their configured sizes), so
//! that what the rest of the gateway holds is seen apart, and jemalloc's
//! own figures (`insitu_allocator_bytes`), which split that rest into the
//! live heap, what the allocator keeps of freed memory, and what lies
//! outside the allocator (thread stacks, code). Prints JSON;
//! record it in docs/PERFORMANCE.md with the machine and the date.
//!
//! `memcurve 10000 100000 1000000` runs the counts named. On a 2-core
//! machine a million inputs take hours (the upload and a million tasks),
//! which is why it is not in the default.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use insitu_benches::{catalog_memory_in, node_pids, rss_mib, run_job};
use insitu_e2e::{Cluster, RawClient};
use serde_json::{json, Value};

/// Requests in flight while uploading.
const UPLOADERS: usize = 32;

/// Peak RSS of each process while `running` is set, sampled every 100 ms.
fn sample_peaks(pids: Vec<u32>, running: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut peaks = vec![0.0f64; pids.len()];
        while running.load(Ordering::Relaxed) {
            for (i, pid) in pids.iter().enumerate() {
                if let Some(r) = rss_mib(*pid) {
                    peaks[i] = peaks[i].max(r);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        peaks
    })
}

/// The gateway's memory as it reports it, in MiB.
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    /// The catalog's caches (rocksdb's memtables and block cache).
    catalog: f64,
    /// What the allocator has handed out and not had back (the caches
    /// included).
    allocated: f64,
    /// What the allocator keeps resident (freed pages not yet returned
    /// included).
    resident: f64,
}

async fn reported(c: &RawClient) -> Option<Reported> {
    let r = c
        .send("GET", "/_insitu/v1/metrics", &[], &[], vec![])
        .await
        .ok()?;
    let text = r.text().await.ok()?;
    let alloc = |kind: &str| {
        let prefix = format!("insitu_allocator_bytes{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / (1024.0 * 1024.0)
    };
    Some(Reported {
        catalog: catalog_memory_in(&text),
        allocated: alloc("allocated"),
        resident: alloc("resident"),
    })
}

async fn upload(c: &RawClient, bucket: &str, n: usize) -> Result<()> {
    let mut results = futures::stream::iter(0..n)
        .map(|i| async move {
            let r = c
                .send(
                    "PUT",
                    &format!("/{bucket}/in/{i:07}"),
                    &[],
                    &[],
                    b"x".to_vec(),
                )
                .await?;
            if r.status() != 200 {
                bail!("PUT {i}: {}", r.status());
            }
            Ok(())
        })
        .buffer_unordered(UPLOADERS);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

async fn one_count(n: usize) -> Result<Value> {
    let cluster = Cluster::start_with(3, Some(1))?;
    let t = cluster.create_tenant("mem")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("memcurve").await?;
    let up = Instant::now();
    upload(&c, "memcurve", n).await?;
    let upload_secs = up.elapsed().as_secs_f64();
    let gw = cluster.gateway_pid().context("gateway pid")?;
    let nodes = node_pids(cluster.dir.path());
    if nodes.len() != 3 {
        bail!("found {} node processes, expected 3", nodes.len());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_gw = rss_mib(gw).context("gateway RSS")?;
    let idle = reported(&c).await.context("the gateway's metrics")?;
    let idle_catalog = idle.catalog;
    let idle_nodes: Vec<f64> = nodes.iter().filter_map(|p| rss_mib(*p)).collect();
    let mut pids = vec![gw];
    pids.extend(&nodes);
    let running = Arc::new(AtomicBool::new(true));
    let sampler = sample_peaks(pids, running.clone());
    let spec = json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "true" }],
        "input_prefix": "memcurve/in/",
        "output": "memcurve/out/",
    });
    // The gateway's RSS beside its catalog's, every 500 ms while the job
    // runs.
    let done = Arc::new(AtomicBool::new(false));
    let watch = async {
        let (mut outside, mut catalog) = (0.0f64, 0.0f64);
        // Peaks of: the live heap outside the catalog's caches; what the
        // allocator keeps beyond the live heap; the RSS beyond what the
        // allocator keeps (stacks, code, rocksdb's own mappings).
        let (mut heap, mut kept, mut beyond) = (0.0f64, 0.0f64, 0.0f64);
        while !done.load(Ordering::Relaxed) {
            if let (Some(rss), Some(r)) = (rss_mib(gw), reported(&c).await) {
                outside = outside.max(rss - r.catalog);
                catalog = catalog.max(r.catalog);
                heap = heap.max(r.allocated - r.catalog);
                kept = kept.max(r.resident - r.allocated);
                beyond = beyond.max(rss - r.resident);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (outside, catalog, heap, kept, beyond)
    };
    let job = async {
        let r = run_job(&c, &spec, Duration::from_millis(500)).await;
        done.store(true, Ordering::Relaxed);
        r
    };
    let (job, (peak_outside_catalog, peak_catalog, peak_heap, peak_kept, peak_beyond)) =
        tokio::join!(job, watch);
    let (status, wall) = job?;
    let job_secs = wall.as_secs_f64();
    running.store(false, Ordering::Relaxed);
    let peaks = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))?;
    let outputs = status["counters"]["outputs"].as_u64().unwrap_or(0);
    if outputs != n as u64 {
        bail!("job of {n} inputs made {outputs} outputs: {status}");
    }
    Ok(json!({
        "inputs": n,
        "upload_seconds": upload_secs,
        "job_seconds": job_secs,
        "gateway_idle_rss_mib": idle_gw,
        "gateway_peak_rss_mib": peaks[0],
        "gateway_growth_mib": peaks[0] - idle_gw,
        "gateway_catalog_idle_mib": idle_catalog,
        "gateway_idle_rss_outside_catalog_mib": idle_gw - idle_catalog,
        "gateway_catalog_peak_mib": peak_catalog,
        "gateway_peak_rss_outside_catalog_mib": peak_outside_catalog,
        "gateway_idle_heap_outside_catalog_mib": idle.allocated - idle.catalog,
        "gateway_peak_heap_outside_catalog_mib": peak_heap,
        "gateway_idle_allocator_kept_mib": idle.resident - idle.allocated,
        "gateway_peak_allocator_kept_mib": peak_kept,
        "gateway_idle_rss_beyond_allocator_mib": idle_gw - idle.resident,
        "gateway_peak_rss_beyond_allocator_mib": peak_beyond,
        "nodes_idle_rss_mib": idle_nodes,
        "nodes_peak_rss_mib": &peaks[1..],
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut counts: Vec<usize> = Vec::new();
    for a in std::env::args().skip(1) {
        counts.push(a.parse().with_context(|| format!("not a count: {a}"))?);
    }
    if counts.is_empty() {
        counts = vec![10_000, 100_000];
    }
    let mut runs = Vec::new();
    for n in counts {
        eprintln!("memcurve: {n} inputs");
        runs.push(one_count(n).await?);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "runs": runs }))?
    );
    Ok(())
}
