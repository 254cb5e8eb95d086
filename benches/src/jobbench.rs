//! Job benchmark, run by `benches/run-jobs.sh`. Every figure is measured in
//! one run on this machine, against a baseline from the same run:
//! - a map `wc -l` job over 500 objects of 256 KiB on 3 nodes, against
//!   native `xargs -P2 wc -l` over the very blob files the job read;
//! - the warm per-task overhead: a job of many trivial tasks on one node
//!   with one task slot, minus a job of one task, per extra task;
//! - submit to first task: from the create request until the task's
//!   command starts (it prints the clock), and a one-task job's submit to
//!   done;
//! - the task endpoint: tasks that write 10 named outputs of 1 MiB each
//!   through it (`mpipe`), against the same tasks writing the same bytes
//!   to stdout.
//!
//! - memoized tasks: the `wc -l` job with `memoize`, run once (every task
//!   runs and is remembered) and again (every task reused);
//! - delay scheduling: a job whose inputs all sit on one node of three,
//!   run with the default locality wait and with a wait longer than the
//!   job (every task on that one node), alternately.
//!
//! `jobbench [wc] [per-task] [endpoint] [memo] [skew]` runs only the
//! sections named.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use insitu_e2e::{Cluster, RawClient};
use serde_json::{json, Value};

const OBJECTS: usize = 500;
const OBJECT_BYTES: usize = 256 * 1024;
const TRIVIAL_TASKS: usize = 200;

fn text_object(i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(OBJECT_BYTES);
    let mut n = 0;
    while out.len() < OBJECT_BYTES {
        let line = format!("object {i} line {n} some words to count\n");
        out.extend_from_slice(line.as_bytes());
        n += 1;
    }
    out.truncate(OBJECT_BYTES);
    out
}

async fn upload(
    c: &RawClient,
    bucket: &str,
    prefix: &str,
    n: usize,
    body: fn(usize) -> Vec<u8>,
) -> Result<()> {
    let results: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let r = c
                .send(
                    "PUT",
                    &format!("/{bucket}/{prefix}{i:04}"),
                    &[],
                    &[],
                    body(i),
                )
                .await?;
            if r.status() != 200 {
                bail!("PUT {i}: {}", r.status());
            }
            Ok(())
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Submits a job and waits for it; returns its status and the wall time
/// from the create request to the job being done.
async fn run_job(c: &RawClient, spec: Value) -> Result<(Value, Duration)> {
    insitu_benches::run_job(c, &spec, Duration::from_millis(5)).await
}

fn map_spec(bucket: &str, prefix: &str, out: &str, exec: &str) -> Value {
    json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
        "input_prefix": format!("{bucket}/{prefix}"),
        "output": format!("{bucket}/{out}"),
    })
}

/// Seconds for a shell pipeline, best of three (warm page cache).
fn native(script: &str) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let st = Command::new("sh").arg("-c").arg(script).status()?;
        if !st.success() {
            bail!("{script} failed");
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut report = serde_json::Map::new();
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let run = |section: &str| wanted.is_empty() || wanted.iter().any(|w| w == section);
    if run("wc") {
        wc_l(&mut report).await?;
    }
    if run("per-task") {
        per_task(&mut report).await?;
    }
    if run("endpoint") {
        endpoint(&mut report).await?;
    }
    if run("memo") {
        memo(&mut report).await?;
    }
    if run("skew") {
        skew(&mut report).await?;
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Inputs, task length and runs of each kind in the skew section.
const SKEW_INPUTS: usize = 24;
const SKEW_TASK: &str = "sleep 0.3; wc -l";
const SKEW_RUNS: usize = 3;

/// Section 5, delay scheduling: every input is uploaded while the cluster
/// has one node, then two more join, so each input has its one replica on
/// the first (4 slots for 24 tasks of 0.3 s). The job runs with the
/// default wait (`--locality-wait-ms 100`: the other nodes' 8 slots take
/// tasks, each on a copy of its input) and with a wait longer than the
/// job (all on the one node), each in its own cluster, alternately.
async fn skew(report: &mut serde_json::Map<String, Value>) -> Result<()> {
    let mut runs: std::collections::BTreeMap<&str, Vec<Value>> = Default::default();
    for round in 0..SKEW_RUNS {
        for (name, wait) in [("local_only", "600000"), ("delay_100ms", "100")] {
            let mut cluster = Cluster::start_with_args(1, Some(1), &["--locality-wait-ms", wait])?;
            let t = cluster.create_tenant("bench")?;
            let c = RawClient::new(&cluster.endpoint, &t);
            c.create_bucket("skew").await?;
            upload(&c, "skew", "in/", SKEW_INPUTS, |i| {
                format!("{i}\n").repeat(1000).into_bytes()
            })
            .await?;
            for n in 1..3 {
                cluster.start_node(&format!("joined-{round}-{n}"), &[])?;
            }
            // Warm the image on every node (and wait until both have
            // joined): a job over an input with no bytes may run anywhere.
            c.send("PUT", "/skew/empty", &[], &[], Vec::new()).await?;
            let warm = json!({
                "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "true" }],
                "inputs": vec!["skew/empty"; 12],
                "output": "skew/warm/",
            });
            tokio::time::sleep(Duration::from_secs(2)).await;
            run_job(&c, warm).await?;
            let (status, wall) = run_job(&c, map_spec("skew", "in/", "out/", SKEW_TASK)).await?;
            runs.entry(name).or_default().push(json!({
                "seconds": wall.as_secs_f64(),
                "bytes_local": status["phases"][0]["bytes_local"],
                "bytes_remote": status["phases"][0]["bytes_remote"],
            }));
        }
    }
    let summary: serde_json::Map<String, Value> = runs
        .into_iter()
        .map(|(name, r)| {
            let secs: Vec<f64> = r.iter().filter_map(|x| x["seconds"].as_f64()).collect();
            (
                name.to_string(),
                json!({ "median_seconds": median(secs), "runs": r }),
            )
        })
        .collect();
    report.insert(
        "skew_24_tasks_of_0.3s_on_one_node_of_3".into(),
        Value::Object(summary),
    );
    Ok(())
}

/// Named outputs per task, and their size, in the endpoint section.
const NAMED_OUTPUTS: usize = 10;
const NAMED_OUTPUT_BYTES: usize = 1 << 20;
/// Tasks per job, and jobs of each kind, in the endpoint section.
const ENDPOINT_TASKS: usize = 4;
const ENDPOINT_RUNS: usize = 5;

/// Section 3, the cost of the task endpoint: each task writes 10 outputs of 1 MiB
/// through it, or the same 10 MiB to stdout; one node, R=1, so neither
/// side replicates. Medians of 5 jobs of each kind, run alternately.
async fn endpoint(report: &mut serde_json::Map<String, Value>) -> Result<()> {
    let cluster = Cluster::start_with(1, Some(1))?;
    let t = cluster.create_tenant("bench")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("endpoint").await?;
    upload(&c, "endpoint", "in/", ENDPOINT_TASKS, |i| {
        format!("{i}\n").into_bytes()
    })
    .await?;
    let chunk = format!("head -c {NAMED_OUTPUT_BYTES} /dev/zero");
    let stdout_exec = format!("cat >/dev/null; for i in $(seq {NAMED_OUTPUTS}); do {chunk}; done");
    let named_exec =
        format!("cat >/dev/null; for i in $(seq {NAMED_OUTPUTS}); do {chunk} | mpipe part$i; done");
    run_job(&c, map_spec("endpoint", "in/", "warm/", &named_exec)).await?;
    let (mut to_stdout, mut named) = (Vec::new(), Vec::new());
    for i in 0..ENDPOINT_RUNS {
        let (_, wall) = run_job(
            &c,
            map_spec("endpoint", "in/", &format!("s{i}/"), &stdout_exec),
        )
        .await?;
        to_stdout.push(wall.as_secs_f64());
        let (status, wall) = run_job(
            &c,
            map_spec("endpoint", "in/", &format!("n{i}/"), &named_exec),
        )
        .await?;
        let outputs = status["counters"]["outputs"].as_u64().unwrap_or(0);
        if outputs < (ENDPOINT_TASKS * NAMED_OUTPUTS) as u64 {
            bail!("a named-output job listed {outputs} outputs: {status}");
        }
        named.push(wall.as_secs_f64());
    }
    let (s, n) = (median(to_stdout.clone()), median(named.clone()));
    let mib = (ENDPOINT_TASKS * NAMED_OUTPUTS * NAMED_OUTPUT_BYTES) as f64 / (1 << 20) as f64;
    report.insert(
        "endpoint_10x1MiB".into(),
        json!({
            "tasks_per_job": ENDPOINT_TASKS,
            "mib_per_job": mib,
            "stdout_job_seconds": { "median": s, "runs": to_stdout },
            "named_job_seconds": { "median": n, "runs": named },
            "ratio_named_vs_stdout": n / s,
            "extra_ms_per_named_output": (n - s) * 1000.0 / (ENDPOINT_TASKS * NAMED_OUTPUTS) as f64,
        }),
    );
    Ok(())
}

/// Section 1, wc -l over 500 x 256 KiB on 3 nodes (R=1: each object's one blob
/// file is what both sides read).
async fn wc_l(report: &mut serde_json::Map<String, Value>) -> Result<()> {
    let cluster = Cluster::start_with(3, Some(1))?;
    let t = cluster.create_tenant("bench")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("jobbench").await?;
    upload(&c, "jobbench", "data/", OBJECTS, text_object).await?;
    let files: Vec<String> = cluster
        .blob_files()
        .into_iter()
        .filter(|(_, size)| *size == OBJECT_BYTES as u64)
        .map(|(p, _)| p.display().to_string())
        .collect();
    if files.len() != OBJECTS {
        bail!("expected {OBJECTS} blob files, found {}", files.len());
    }
    let list = cluster.dir.path().join("files.txt");
    std::fs::write(&list, files.join("\n"))?;
    let xargs = native(&format!("xargs -P2 wc -l < {} > /dev/null", list.display()))?;
    let xargs_n1 = native(&format!(
        "xargs -n1 -P2 wc -l < {} > /dev/null",
        list.display()
    ))?;
    // Warm the image and the engine once, then measure.
    run_job(&c, map_spec("jobbench", "data/000", "warm/", "wc -l")).await?;
    // JOBBENCH_PERF=FILE: a system-wide `perf record` of this job alone.
    let perf = match std::env::var("JOBBENCH_PERF") {
        Ok(out) => {
            let p = std::process::Command::new("perf")
                .args(["record", "-a", "-g", "-F", "999", "-o", &out])
                .spawn()?;
            // perf records before the job is submitted.
            tokio::time::sleep(std::time::Duration::from_millis(700)).await;
            Some(p)
        }
        Err(_) => None,
    };
    let (status, wall) = run_job(&c, map_spec("jobbench", "data/", "wc/", "wc -l")).await?;
    if let Some(mut p) = perf {
        std::process::Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status()?;
        p.wait()?;
    }
    let job_secs = wall.as_secs_f64();
    report.insert(
        "wc_l_500x256KiB".into(),
        json!({
            "job_seconds": job_secs,
            "native_xargs_P2_seconds": xargs,
            "native_xargs_n1_P2_seconds": xargs_n1,
            "ratio_vs_xargs_P2": job_secs / xargs,
            "ratio_vs_xargs_n1_P2": job_secs / xargs_n1,
            "target_ratio": 3.0,
            "map_bytes_local": status["phases"][0]["bytes_local"],
            "map_bytes_remote": status["phases"][0]["bytes_remote"],
        }),
    );
    Ok(())
}

/// Section 2, warm per-task overhead and submit-to-first-task, on one node with
/// one task slot so tasks run one after another.
async fn per_task(report: &mut serde_json::Map<String, Value>) -> Result<()> {
    let cluster = Cluster::start_with_args(1, Some(1), &["--task-slots", "1"])?;
    let t = cluster.create_tenant("bench")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("tiny").await?;
    upload(&c, "tiny", "t/", TRIVIAL_TASKS, |i| {
        format!("{i}\n").into_bytes()
    })
    .await?;
    run_job(&c, map_spec("tiny", "t/0000", "warm/", "true")).await?;
    let mut singles = Vec::new();
    for i in 0..5 {
        let (_, wall) =
            run_job(&c, map_spec("tiny", "t/0001", &format!("one{i}/"), "true")).await?;
        singles.push(wall.as_secs_f64());
    }
    singles.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let single = singles[singles.len() / 2];
    // Submit to first task: the task writes the kernel's uptime (10 ms
    // steps; a container shares the host's) when its command starts; the
    // same clock read just before the create request.
    let uptime = || -> Result<f64> {
        let text = std::fs::read_to_string("/proc/uptime")?;
        Ok(text.split_whitespace().next().unwrap_or("").parse()?)
    };
    let mut firsts = Vec::new();
    for i in 0..5 {
        let before = uptime()?;
        let (s, _) = run_job(
            &c,
            map_spec("tiny", "t/0001", &format!("first{i}/"), "cat /proc/uptime"),
        )
        .await?;
        let id = s["id"].as_str().unwrap_or_default();
        let outs: Value = c
            .send(
                "GET",
                &format!("/_insitu/v1/jobs/{id}/outputs"),
                &[],
                &[],
                vec![],
            )
            .await?
            .json()
            .await?;
        let object = outs["outputs"][0]["object"].as_str().unwrap_or_default();
        let text = c
            .send("GET", &format!("/{object}"), &[], &[], vec![])
            .await?
            .text()
            .await?;
        let started: f64 = match text.split_whitespace().next().map(str::parse) {
            Some(Ok(v)) => v,
            _ => bail!("the first task wrote {text:?}"),
        };
        firsts.push(started - before);
    }
    let first_task = median(firsts.clone());
    let (_, many) = run_job(&c, map_spec("tiny", "t/", "many/", "true")).await?;
    let per_task_ms = (many.as_secs_f64() - single) * 1000.0 / (TRIVIAL_TASKS - 1) as f64;
    let exec_ms = native(&format!(
        "for i in $(seq {TRIVIAL_TASKS}); do /bin/sh -c true; done"
    ))? * 1000.0
        / TRIVIAL_TASKS as f64;
    report.insert(
        "per_task".into(),
        json!({
            "tasks": TRIVIAL_TASKS,
            "job_seconds": many.as_secs_f64(),
            "overhead_ms_per_task": per_task_ms,
            "native_sh_c_true_ms": exec_ms,
            "target_overhead_ms": 15.0,
        }),
    );
    report.insert(
        "submit_to_done_one_task".into(),
        json!({ "median_seconds": single, "runs": singles }),
    );
    report.insert(
        "submit_to_first_task".into(),
        json!({ "median_seconds": first_task, "runs": firsts, "target_seconds": 0.1 }),
    );
    Ok(())
}

/// Runs of each kind in the memo section.
const MEMO_RUNS: usize = 3;

/// Section 4, memoized tasks: the `wc -l` job over 500 objects with
/// `memoize` into a fresh output place (every task runs and is
/// remembered), then again into the same place (every task reused, no
/// container work), alternated; medians.
async fn memo(report: &mut serde_json::Map<String, Value>) -> Result<()> {
    let cluster = Cluster::start_with(3, Some(1))?;
    let t = cluster.create_tenant("bench")?;
    let c = RawClient::new(&cluster.endpoint, &t);
    c.create_bucket("memobench").await?;
    upload(&c, "memobench", "data/", OBJECTS, text_object).await?;
    run_job(&c, map_spec("memobench", "data/000", "warm/", "wc -l")).await?;
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for i in 0..MEMO_RUNS {
        let mut spec = map_spec("memobench", "data/", &format!("memo{i}/"), "wc -l");
        spec["memoize"] = json!(true);
        let (s, wall) = run_job(&c, spec.clone()).await?;
        if s["phases"][0]["tasks"]["memoized"] != 0 {
            bail!("a first run reused tasks: {s}");
        }
        first.push(wall.as_secs_f64());
        let (s, wall) = run_job(&c, spec).await?;
        if s["phases"][0]["tasks"]["memoized"] != OBJECTS {
            bail!("a second run did not reuse every task: {s}");
        }
        again.push(wall.as_secs_f64());
    }
    let (f, a) = (median(first.clone()), median(again.clone()));
    report.insert(
        "memo_wc_l_500x256KiB".into(),
        json!({
            "first_run_seconds": { "median": f, "runs": first },
            "memoized_run_seconds": { "median": a, "runs": again },
            "ratio_memoized_vs_first": a / f,
        }),
    );
    Ok(())
}
