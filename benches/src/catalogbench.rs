//! Catalog benchmark, run by `benches/run-catalog.sh`: the same small- and
//! large-object load against three control planes, measured in one run on
//! this machine, each figure the median of three runs:
//! - the embedded rocksdb catalog with one gateway (the baseline);
//! - PostgreSQL with one gateway;
//! - PostgreSQL with two gateways (`insitu dev --gateways 2`), the clients
//!   spread over both.
//!
//! Every request is signed with its payload's SHA-256 over plain http, as
//! ordinary SDK clients send it. Figures: 4 KiB PUT and GET operations per
//! second at 32 concurrent clients, and the rate of a 256 MiB PUT.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use insitu_catalog::testing::TestPostgres;
use insitu_e2e::{Cluster, RawClient};

const MIB: usize = 1024 * 1024;
const CLIENTS: usize = 32;
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 4 KiB operations per second for `dur`, client `w` on endpoint
/// `w % clients.len()`; `round` keeps each run's keys apart.
async fn ops(clients: &[Arc<RawClient>], round: usize, dur: Duration, put: bool) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let c = clients[w % clients.len()].clone();
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let body = vec![7u8; 4096];
            let mut i = 0u64;
            while start.elapsed() < dur {
                let path = if put {
                    format!("/bench/r{round}/{w}-{i}")
                } else {
                    format!("/bench/r0/{w}-{}", i % 50)
                };
                let method = if put { "PUT" } else { "GET" };
                let sent = if put { body.clone() } else { Vec::new() };
                match c.send(method, &path, &[], &[], sent).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} operations failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// One signed 256 MiB PUT; MiB/s.
async fn big_put(c: &RawClient, path: &str) -> Result<f64> {
    let body = vec![0x5au8; 256 * MIB];
    let t = Instant::now();
    let r = c.send("PUT", path, &[], &[], body).await?;
    let secs = t.elapsed().as_secs_f64();
    if !r.status().is_success() {
        bail!("PUT {path}: {}", r.status());
    }
    Ok(256.0 / secs)
}

async fn measure(cluster: &Cluster) -> Result<serde_json::Value> {
    let t = cluster.create_tenant("bench")?;
    let clients: Vec<Arc<RawClient>> = cluster
        .endpoints()
        .iter()
        .map(|e| Arc::new(RawClient::new(e, &t)))
        .collect();
    clients[0].create_bucket("bench").await?;
    let dur = Duration::from_secs(5);
    let (mut puts, mut gets, mut bigs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..RUNS {
        puts.push(ops(&clients, round, dur, true).await?);
        gets.push(ops(&clients, round, dur, false).await?);
        let c = &clients[round % clients.len()];
        bigs.push(big_put(c, &format!("/bench/big-{round}")).await?);
    }
    Ok(serde_json::json!({
        "gateways": clients.len(),
        "put_4kib_ops_s": median(puts.clone()),
        "get_4kib_ops_s": median(gets.clone()),
        "put_256mib_mib_s": median(bigs.clone()),
        "runs": { "put_4kib_ops_s": puts, "get_4kib_ops_s": gets, "put_256mib_mib_s": bigs },
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let rocks = {
        let cluster = Cluster::start_with_args(3, Some(1), &[])?;
        measure(&cluster).await?
    };
    let pg = TestPostgres::start().map_err(anyhow::Error::msg)?;
    let url = pg.url("postgres");
    let pg1 = {
        let cluster = Cluster::start_with_args(3, Some(1), &["--catalog", &url])?;
        measure(&cluster).await?
    };
    let pg_b = TestPostgres::start().map_err(anyhow::Error::msg)?;
    let url_b = pg_b.url("postgres");
    let pg2 = {
        let args = ["--catalog", url_b.as_str(), "--gateways", "2"];
        let cluster = Cluster::start_with_args(3, Some(1), &args)?;
        measure(&cluster).await?
    };
    let ratio = |v: &serde_json::Value, k: &str| {
        v[k].as_f64().unwrap_or(0.0) / rocks[k].as_f64().unwrap_or(f64::NAN)
    };
    let result = serde_json::json!({
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "clients": CLIENTS,
        "rocksdb_1_gateway": rocks,
        "postgresql_1_gateway": pg1,
        "postgresql_2_gateways": pg2,
        "vs_rocksdb": {
            "postgresql_1_gateway": {
                "put_4kib": ratio(&pg1, "put_4kib_ops_s"),
                "get_4kib": ratio(&pg1, "get_4kib_ops_s"),
                "put_256mib": ratio(&pg1, "put_256mib_mib_s"),
            },
            "postgresql_2_gateways": {
                "put_4kib": ratio(&pg2, "put_4kib_ops_s"),
                "get_4kib": ratio(&pg2, "get_4kib_ops_s"),
                "put_256mib": ratio(&pg2, "put_256mib_mib_s"),
            },
        },
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
