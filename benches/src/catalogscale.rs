//! Catalog lookups against the catalog's size, run by
//! `benches/run-catalogscale.sh`: the embedded rocksdb catalog, opened
//! directly (no gateway, no HTTP), is filled with N object records under
//! one bucket, and then read back by random key from 4 concurrent tasks for
//! 10 s, three times; then read again the same way while a sweep runs
//! beside the readers, as the gateway's orphan sweep does: every blob's
//! owner looked up in blob-id order (`owned_blob`, two point reads each).
//! Each count gets a fresh catalog. It shows whether a
//! point lookup stays as cheap when the catalog's files outgrow its block
//! cache, which is what a job over a million inputs does to the gateway.
//!
//! `catalogscale 100000 1000000` runs the counts named (those are the
//! default). Prints JSON; record it in docs/PERFORMANCE.md with the machine
//! and the date, and with the baseline of the same run: the lookup rate of
//! the smallest count, whose files fit in the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use insitu_catalog::{Acl, BlobRef, CannedAcl, Catalog, ObjectHeaders, ObjectRecord};
use rand::Rng;
use serde_json::json;

/// Writes in flight while filling (the catalog syncs its log per write, and
/// concurrent writes share a sync).
const WRITERS: usize = 64;
/// Concurrent readers while measuring.
const READERS: usize = 4;
const RUNS: usize = 3;
const RUN: Duration = Duration::from_secs(10);

fn key(i: u64) -> String {
    format!("inputs/part-{i:09}")
}

fn record(i: u64) -> ObjectRecord {
    ObjectRecord {
        size: 1,
        etag: format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        last_modified_ms: insitu_catalog::now_ms(),
        owner: "bench".into(),
        headers: ObjectHeaders::default(),
        acl: Acl::Canned(CannedAcl::Private),
        blob: BlobRef {
            id: blob_id(i),
            size: 1,
            replicas: vec!["node-0".into()],
        },
        parts_count: 0,
        part_sizes: vec![],
        upload_id: None,
        checksum: None,
    }
}

fn blob_id(i: u64) -> String {
    format!("{:032x}", i.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Random point lookups per second over `n` keys for `RUN`.
async fn lookups(cat: &Arc<dyn Catalog>, n: u64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let (cat, done) = (cat.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN {
                let i = rand::thread_rng().gen_range(0..n);
                match cat.get_object("bench", &key(i)).await {
                    Ok(Some(_)) => done.fetch_add(1, Ordering::Relaxed),
                    other => bail!("lookup of {i}: {other:?}"),
                };
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn one(n: u64) -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let cat = insitu_catalog::open(&format!("rocksdb:{}", dir.path().display()), 1).await?;
    cat.create_tenant("bench").await?;
    cat.create_bucket("bench", "bench", Acl::Canned(CannedAcl::Private))
        .await?;
    let t = Instant::now();
    let mut puts = futures::stream::iter(0..n)
        .map(|i| {
            let cat = cat.clone();
            async move { cat.put_object("bench", &key(i), &record(i)).await }
        })
        .buffer_unordered(WRITERS);
    while let Some(r) = puts.next().await {
        r?;
    }
    let fill = t.elapsed().as_secs_f64();
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        rates.push(lookups(&cat, n).await?);
    }
    // The sweep: blob ids in order, as a node lists them.
    let mut ids: Vec<String> = (0..n).map(blob_id).collect();
    ids.sort();
    let sweeping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swept = Arc::new(AtomicU64::new(0));
    let sweep = {
        let (cat, sweeping, swept) = (cat.clone(), sweeping.clone(), swept.clone());
        tokio::spawn(async move {
            for id in ids.iter().cycle() {
                if !sweeping.load(Ordering::Relaxed) {
                    break;
                }
                if cat.owned_blob(id).await?.is_none() {
                    bail!("blob {id} has no owner");
                }
                swept.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let t = Instant::now();
    let mut under_sweep = Vec::new();
    for _ in 0..RUNS {
        under_sweep.push(lookups(&cat, n).await?);
    }
    sweeping.store(false, Ordering::Relaxed);
    sweep.await??;
    let sweep_rate = swept.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    let memory: serde_json::Map<String, serde_json::Value> = cat
        .memory_usage()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v / (1024 * 1024))))
        .collect();
    Ok(json!({
        "objects": n,
        "fill_s": (fill * 10.0).round() / 10.0,
        "lookups_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "lookups_per_s_median": median(rates).round(),
        "lookups_per_s_under_sweep": under_sweep.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "lookups_per_s_under_sweep_median": median(under_sweep).round(),
        "sweep_blobs_per_s": sweep_rate.round(),
        "catalog_memory_mib": memory,
        "files_mib": dir_mib(dir.path()),
    }))
}

fn dir_mib(dir: &std::path::Path) -> u64 {
    let total: u64 = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    total / (1024 * 1024)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut counts: Vec<u64> = Vec::new();
    for a in std::env::args().skip(1) {
        counts.push(a.parse()?);
    }
    if counts.is_empty() {
        counts = vec![100_000, 1_000_000];
    }
    let mut out = Vec::new();
    for n in counts {
        let r = one(n).await?;
        eprintln!("{r}");
        out.push(r);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
