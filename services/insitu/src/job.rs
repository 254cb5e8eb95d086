//! `insitu job ...`: submit and follow map/reduce jobs through the jobs API,
//! with the tenant's own keys.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::job_watch::{stderr_tail, Watch};
use crate::signed_client::SignedClient;

#[derive(Args)]
pub struct JobArgs {
    /// Gateway endpoint.
    #[arg(
        long,
        env = "INSITU_ENDPOINT",
        default_value = "http://127.0.0.1:9000",
        global = true
    )]
    endpoint: String,
    /// The tenant's access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true, global = true)]
    access_key: Option<String>,
    /// The tenant's secret access key.
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true,
        global = true
    )]
    secret_key: Option<String>,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job: from a JSON spec file, or from --map/--reduce flags.
    /// Without --input, input keys (`bucket/key` or `s3://bucket/key`) are
    /// read from standard input, one per line. Prints the job id, or with
    /// --watch, follows the job and prints its final status.
    Run(Box<RunArgs>),
    /// Print a job's status and counters as JSON.
    Status { id: String },
    /// List your jobs, oldest first, as JSON lines.
    List,
    /// Print a job's output objects, one `bucket/key` per line.
    Outputs { id: String },
    /// Print a job's errors as JSON lines; a failed task's carries
    /// `stderr_tail`, the last lines of its saved stderr.
    Errors { id: String },
    /// Print what the job's running tasks write to stderr, each line
    /// labelled `[task input]` when the job has several tasks.
    Logs {
        id: String,
        /// Go on as the tasks write, until the job ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only this task's lines (its id in the job).
        #[arg(long)]
        task: Option<String>,
        /// Only this phase's tasks.
        #[arg(long)]
        phase: Option<u32>,
    },
    /// Print the inputs whose task failed, one per line.
    Failures { id: String },
    /// Cancel a job.
    Cancel { id: String },
    /// Wait for a job to end; exits non-zero if it had errors or was
    /// cancelled.
    Wait {
        id: String,
        /// Show a live progress bar on standard error.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A JSON job spec (as in the jobs API); the flags below add to it.
    #[arg(long)]
    spec: Option<std::path::PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// A map phase's command, run by /bin/sh -c (repeat for more phases).
    #[arg(long = "map")]
    maps: Vec<String>,
    /// The final reduce phase's command.
    #[arg(long)]
    reduce: Option<String>,
    /// Reducers in the reduce phase.
    #[arg(long, default_value_t = 1)]
    reducers: u32,
    /// Route lines to reducers by their first tab-separated field
    /// (`key`), or whole outputs by name (`object`).
    #[arg(long)]
    partition: Option<String>,
    /// Image every phase runs in.
    #[arg(long, default_value = "insitu-test/busybox:latest")]
    image: String,
    #[arg(long)]
    memory_mb: Option<u64>,
    #[arg(long)]
    timeout_s: Option<u64>,
    /// Every object under this `s3://bucket/prefix` is an input.
    #[arg(long)]
    input: Option<String>,
    /// Where outputs go: `s3://bucket/prefix/`.
    #[arg(long)]
    output: Option<String>,
    /// Reuse the outputs of earlier tasks with the same fingerprint
    /// instead of running the last map phase's tasks again.
    #[arg(long)]
    memoize: bool,
    /// Follow the job with a live progress bar, then print its status.
    #[arg(long)]
    watch: bool,
}

fn strip_s3(s: &str) -> String {
    s.trim()
        .strip_prefix("s3://")
        .unwrap_or(s.trim())
        .to_string()
}

/// Turns an API error body into the one-line message the CLI prints.
fn check(status: u16, body: Value) -> Result<Value> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let code = body.get("code").and_then(|c| c.as_str()).unwrap_or("Error");
    let message = body
        .get("message")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string());
    bail!("{code}: {message}")
}

pub async fn run(args: JobArgs) -> Result<i32> {
    let (Some(ak), Some(sk)) = (args.access_key, args.secret_key) else {
        bail!("credentials are needed: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or pass --access-key/--secret-key");
    };
    let client = SignedClient::new(&args.endpoint, &ak, &sk);
    let mut out = std::io::stdout().lock();
    match args.command {
        JobCommand::Run(r) => return submit(&client, *r).await,
        JobCommand::Status { id } => {
            let (s, b) = client
                .call("GET", &format!("/_insitu/v1/jobs/{id}"), None)
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&check(s, b)?)?)?;
        }
        JobCommand::List => {
            for_each_page(&client, "/_insitu/v1/jobs", "jobs", |j| {
                writeln!(out, "{j}")?;
                Ok(())
            })
            .await?;
        }
        JobCommand::Outputs { id } => {
            let path = format!("/_insitu/v1/jobs/{id}/outputs");
            for_each_page(&client, &path, "outputs", |o| {
                writeln!(out, "{}", o["object"].as_str().unwrap_or_default())?;
                Ok(())
            })
            .await?;
        }
        JobCommand::Errors { id } => {
            // Each error with the last lines of its task's stderr, when
            // one was saved.
            let path = format!("/_insitu/v1/jobs/{id}/errors");
            let mut errors = Vec::new();
            for_each_page(&client, &path, "errors", |e| {
                errors.push(e.clone());
                Ok(())
            })
            .await?;
            for mut e in errors {
                let tail = stderr_tail(&client, &e).await;
                if !tail.is_empty() {
                    e["stderr_tail"] = json!(tail);
                }
                writeln!(out, "{e}")?;
            }
        }
        JobCommand::Logs {
            id,
            follow,
            task,
            phase,
        } => {
            let mut query = vec![format!("follow={follow}")];
            if let Some(t) = task {
                query.push(format!(
                    "task={}",
                    percent_encoding::utf8_percent_encode(&t, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
            if let Some(p) = phase {
                query.push(format!("phase={p}"));
            }
            let path = format!("/_insitu/v1/jobs/{id}/logs?{}", query.join("&"));
            let mut resp = client.send("GET", &path, None, &[]).await?;
            let status = resp.status().as_u16();
            if status != 200 {
                let text = resp.text().await?;
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                check(status, body)?;
                bail!("the gateway answered {status}");
            }
            while let Some(chunk) = resp
                .chunk()
                .await
                .context("the gateway stopped sending the logs")?
            {
                out.write_all(&chunk)?;
                out.flush()?;
            }
        }
        JobCommand::Failures { id } => {
            let path = format!("/_insitu/v1/jobs/{id}/failures");
            for_each_page(&client, &path, "failures", |e| {
                writeln!(out, "{}", e["input"].as_str().unwrap_or_default())?;
                Ok(())
            })
            .await?;
        }
        JobCommand::Cancel { id } => {
            let (s, b) = client
                .call("POST", &format!("/_insitu/v1/jobs/{id}/cancel"), None)
                .await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&check(s, b)?)?)?;
        }
        JobCommand::Wait { id, watch } => return wait(&client, &id, watch).await,
    }
    Ok(0)
}

/// Calls `f` on every item of a paginated list.
pub(crate) async fn for_each_page(
    client: &SignedClient,
    path: &str,
    field: &str,
    mut f: impl FnMut(&Value) -> Result<()>,
) -> Result<()> {
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{path}?after={a}"),
            None => path.to_string(),
        };
        let (s, b) = client.call("GET", &url, None).await?;
        let page = check(s, b)?;
        for item in page[field].as_array().into_iter().flatten() {
            f(item)?;
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(()),
        }
    }
}

fn build_spec(r: &RunArgs) -> Result<Value> {
    let mut spec = match &r.spec {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read the spec {}", path.display()))?;
            serde_json::from_slice::<Value>(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => json!({ "phases": [] }),
    };
    let phase = |kind: &str, exec: &str| {
        let mut p = json!({ "type": kind, "image": r.image, "exec": exec });
        if let Some(m) = r.memory_mb {
            p["memory_mb"] = json!(m);
        }
        if let Some(t) = r.timeout_s {
            p["timeout_s"] = json!(t);
        }
        p
    };
    let Some(phases) = spec["phases"].as_array_mut() else {
        bail!("the spec's phases must be a list");
    };
    for m in &r.maps {
        phases.push(phase("map", m));
    }
    if let Some(reduce) = &r.reduce {
        let mut p = phase("reduce", reduce);
        p["count"] = json!(r.reducers);
        if let Some(part) = &r.partition {
            p["partition"] = json!(part);
        }
        phases.push(p);
    }
    if phases.is_empty() {
        bail!("give a --spec file or at least one --map or --reduce");
    }
    if let Some(n) = &r.name {
        spec["name"] = json!(n);
    }
    if let Some(i) = &r.input {
        spec["input_prefix"] = json!(strip_s3(i));
    }
    if let Some(o) = &r.output {
        spec["output"] = json!(strip_s3(o));
    }
    if r.memoize {
        spec["memoize"] = json!(true);
    }
    if spec.get("output").is_none() {
        bail!("give --output s3://bucket/prefix/");
    }
    Ok(spec)
}

async fn submit(client: &SignedClient, r: RunArgs) -> Result<i32> {
    let mut spec = build_spec(&r)?;
    let from_stdin = spec.get("input_prefix").is_none()
        && spec
            .get("inputs")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && !spec["input_open"].as_bool().unwrap_or(false);
    if from_stdin {
        spec["input_open"] = json!(true);
    }
    let (s, b) = client.call("POST", "/_insitu/v1/jobs", Some(spec)).await?;
    let job = check(s, b)?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if from_stdin {
        let stdin = std::io::stdin();
        let mut batch = Vec::new();
        for line in stdin.lock().lines() {
            let line = line.context("reading input keys from standard input")?;
            if line.trim().is_empty() {
                continue;
            }
            batch.push(strip_s3(&line));
            if batch.len() == 5000 {
                add_inputs(client, &id, std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            add_inputs(client, &id, batch).await?;
        }
        let (s, b) = client
            .call("POST", &format!("/_insitu/v1/jobs/{id}/inputs/end"), None)
            .await?;
        check(s, b)?;
    }
    if r.watch {
        return wait(client, &id, true).await;
    }
    println!("{id}");
    Ok(0)
}

async fn add_inputs(client: &SignedClient, id: &str, inputs: Vec<String>) -> Result<()> {
    let (s, b) = client
        .call(
            "POST",
            &format!("/_insitu/v1/jobs/{id}/inputs"),
            Some(json!({ "inputs": inputs })),
        )
        .await?;
    check(s, b).map(|_| ())
}

async fn wait(client: &SignedClient, id: &str, watch: bool) -> Result<i32> {
    let mut view = watch.then(|| Watch::new(std::io::stderr().is_terminal()));
    let status = loop {
        let (s, b) = client
            .call("GET", &format!("/_insitu/v1/jobs/{id}"), None)
            .await?;
        let status = check(s, b)?;
        if let Some(v) = &mut view {
            v.update(&status);
            v.show_new_errors(client, id, &status).await?;
        }
        if matches!(status["state"].as_str(), Some("done" | "cancelled")) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if let Some(v) = &view {
        v.finish();
    }
    println!("{}", serde_json::to_string_pretty(&status)?);
    let errors = status["counters"]["errors"].as_u64().unwrap_or(0);
    if status["state"] == "cancelled" {
        eprintln!("insitu: job {id} was cancelled");
        return Ok(1);
    }
    if errors > 0 {
        eprintln!("insitu: job {id} finished with {errors} error(s); see `insitu job errors {id}`");
        return Ok(1);
    }
    Ok(0)
}
