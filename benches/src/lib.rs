//! What more than one benchmark needs: reading a process's memory and the
//! gateway's catalog memory, and running a job to its end over the jobs
//! API.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use insitu_e2e::RawClient;
use serde_json::Value;

/// Resident set of a process, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The storage-node processes of the cluster whose data is under `dir`.
pub fn node_pids(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("node") && args.iter().any(|a| a.contains(&dir))
        {
            pids.push(pid);
        }
    }
    pids
}

/// CPU time (user and system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports these in USER_HZ, 100 on every platform it runs on.
    Some((utime + stime) / 100.0)
}

/// The sum of `insitu_catalog_memory_bytes` in a gateway's metrics text,
/// MiB.
pub fn catalog_memory_in(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("insitu_catalog_memory_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        / (1024.0 * 1024.0)
}

/// Submits a job and waits for it, polling every `poll`; returns its
/// final status and the wall time from the create request until it was
/// seen done. A job that ends with errors or cancelled is an error.
pub async fn run_job(c: &RawClient, spec: &Value, poll: Duration) -> Result<(Value, Duration)> {
    let t = Instant::now();
    let r = c
        .send(
            "POST",
            "/_insitu/v1/jobs",
            &[],
            &[],
            spec.to_string().into_bytes(),
        )
        .await?;
    if r.status() != 201 {
        bail!("create job: {} {}", r.status(), r.text().await?);
    }
    let created: Value = r.json().await?;
    let id = created["id"].as_str().context("job id")?.to_string();
    loop {
        let s: Value = c
            .send("GET", &format!("/_insitu/v1/jobs/{id}"), &[], &[], vec![])
            .await?
            .json()
            .await?;
        match s["state"].as_str() {
            Some("done") => {
                let wall = t.elapsed();
                if s["counters"]["errors"] != 0 {
                    bail!("job had errors: {s}");
                }
                return Ok((s, wall));
            }
            Some("cancelled") => bail!("job cancelled: {s}"),
            _ => tokio::time::sleep(poll).await,
        }
    }
}
