//! Map/reduce jobs end to end: the real `insitu` binary, real storage-node
//! processes, tasks in real Docker containers, data uploaded with the aws
//! CLI and jobs driven with `insitu job` and curl.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use futures::StreamExt;

use insitu_e2e::{aws_env, insitu_bin, unique, wait_until, Cluster, RawClient, Tenant};

const MAP_WC: &str =
    "tr -cs 'A-Za-z' '\\n' | grep -v '^$' | sort | uniq -c | awk '{print $2 \"\\t\" $1}'";
const REDUCE_WC: &str = "awk -F'\\t' '{c[$1]+=$2} END {for (w in c) print w \"\\t\" c[w]}' | sort";

/// Runs `insitu job ARGS` as `tenant`, with `stdin` on standard input.
fn job_cli(cluster: &Cluster, tenant: &Tenant, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(insitu_bin());
    cmd.arg("job")
        .args(args)
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &tenant.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &tenant.secret_access_key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("insitu job");
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(s) = stdin {
            pipe.write_all(s.as_bytes()).expect("stdin");
        }
    }
    child.wait_with_output().expect("insitu job output")
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn lines_of(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A deterministic corpus: `n` texts over a vocabulary of made-up words.
fn corpus(n: usize) -> Vec<(String, String)> {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let vocab: Vec<String> = (0..400)
        .map(|_| {
            let len = 3 + (next() % 6) as usize;
            (0..len)
                .map(|_| (b'a' + (next() % 26) as u8) as char)
                .collect()
        })
        .collect();
    (0..n)
        .map(|i| {
            let words = 200 + (next() % 600) as usize;
            let mut text = String::new();
            for w in 0..words {
                let word = &vocab[(next() % 400) as usize];
                if next() % 7 == 0 {
                    text.push_str(&word.to_uppercase()[..1]);
                    text.push_str(&word[1..]);
                } else {
                    text.push_str(word);
                }
                text.push_str(match w % 13 {
                    12 => ".\n",
                    5 => ", ",
                    _ => " ",
                });
            }
            (format!("book-{i:04}.txt"), text)
        })
        .collect()
}

/// The word count the job must produce, computed here.
fn word_count<'a>(texts: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for t in texts {
        for w in t.split(|c: char| !c.is_ascii_alphabetic()) {
            if !w.is_empty() {
                *counts.entry(w.to_string()).or_default() += 1;
            }
        }
    }
    counts
}

fn parse_counts(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .map(|l| {
            let (w, c) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (w.to_string(), c.parse().unwrap())
        })
        .collect()
}

/// Uploads files with the aws CLI, as a user would.
fn aws_upload(cluster: &Cluster, tenant: &Tenant, dir: &Path, dest: &str) {
    let mut cmd = Command::new("aws");
    aws_env(&mut cmd, &cluster.endpoint, tenant, cluster.dir.path()).unwrap();
    let out = cmd
        .args(["s3", "cp", "--recursive", "--only-show-errors"])
        .arg(dir)
        .arg(dest)
        .output()
        .expect("aws CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn get_text(c: &RawClient, loc: &str) -> String {
    let r = c
        .send("GET", &format!("/{loc}"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {loc}");
    r.text().await.unwrap()
}

fn write_corpus(dir: &Path, texts: &[(String, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in texts {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wordcount_runs_next_to_the_data_and_matches_a_local_count() {
    let cluster = Cluster::start_with(3, Some(2)).expect("cluster");
    let t = cluster.create_tenant("words").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("corpus");
    c.create_bucket(&bucket).await.unwrap();
    let texts = corpus(220);
    let dir = cluster.dir.path().join("corpus");
    write_corpus(&dir, &texts);
    aws_upload(&cluster, &t, &dir, &format!("s3://{bucket}/books/"));
    let total_bytes: u64 = texts.iter().map(|(_, t)| t.len() as u64).sum();
    let expected = word_count(texts.iter().map(|(_, t)| t.as_str()));

    // The corpus is spread over all three nodes.
    let copies = cluster.blob_copies();
    let nodes: BTreeSet<&String> = copies.values().flatten().collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");

    // One reducer.
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--input",
            &format!("s3://{bucket}/books/"),
            "--output",
            &format!("s3://{bucket}/wc1/"),
            "--map",
            MAP_WC,
            "--reduce",
            REDUCE_WC,
            "--watch",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json_of(&out);
    assert_eq!(status["state"], "done");
    assert_eq!(status["counters"]["inputs"], 220);
    assert_eq!(status["counters"]["errors"], 0);
    assert_eq!(status["phases"][0]["tasks"]["done"], 220);
    // Locality: every map task read its input from its own node's disk.
    // (A node runs a task only on a blob it holds: it answers "not here"
    // otherwise, so a task that ran at all ran next to its input.)
    assert_eq!(status["phases"][0]["bytes_local"], total_bytes);
    assert_eq!(status["phases"][0]["bytes_remote"], 0);
    // Progress per phase (plain lines: stderr is not a terminal here).
    let watched = String::from_utf8_lossy(&out.stderr);
    assert!(
        watched.contains("phase 0 map   : 220/220 done"),
        "{watched}"
    );
    assert!(watched.contains("phase 1 reduce: 1/1 done"), "{watched}");
    let id = status["id"].as_str().unwrap().to_string();
    let outputs = lines_of(&job_cli(&cluster, &t, &["outputs", &id], None));
    assert_eq!(outputs, [format!("{bucket}/wc1/reduce.0")]);
    let single = parse_counts(&get_text(&c, &outputs[0]).await);
    assert_eq!(single, expected);

    // Lists are complete and paginated.
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("limit", "100")];
        if let Some(a) = &after {
            q.push(("after", a.as_str()));
        }
        let page: serde_json::Value = c
            .send(
                "GET",
                &format!("/_insitu/v1/jobs/{id}/inputs"),
                &q,
                &[],
                vec![],
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for i in page["inputs"].as_array().unwrap() {
            assert!(seen.insert(i["input"].as_str().unwrap().to_string()));
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (220, 3));

    // Three reducers, partitioned by key: the same counts, each word in
    // exactly one output.
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--input",
            &format!("s3://{bucket}/books/"),
            "--output",
            &format!("s3://{bucket}/wc3/"),
            "--map",
            MAP_WC,
            "--reduce",
            REDUCE_WC,
            "--reducers",
            "3",
            "--partition",
            "key",
        ],
        None,
    );
    assert!(out.status.success());
    let id = lines_of(&out)[0].clone();
    let wait = job_cli(&cluster, &t, &["wait", &id], None);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let outputs = lines_of(&job_cli(&cluster, &t, &["outputs", &id], None));
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    let mut union = BTreeMap::new();
    for o in &outputs {
        let part = parse_counts(&get_text(&c, o).await);
        assert!(!part.is_empty(), "{o} got words");
        for (w, n) in part {
            assert!(
                union.insert(w.clone(), n).is_none(),
                "{w} is in two outputs"
            );
        }
    }
    assert_eq!(union, single);

    // Intermediate outputs are gone once the job is done; the results stay.
    let listing = c
        .send(
            "GET",
            &format!("/{bucket}"),
            &[("list-type", "2"), ("prefix", "_insitu/")],
            &[],
            vec![],
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("<Key>"), "{listing}");
    let jobs = lines_of(&job_cli(&cluster, &t, &["list"], None));
    assert_eq!(jobs.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_are_recorded_as_errors_and_the_rest_completes() {
    let cluster = Cluster::start_with(3, Some(2)).expect("cluster");
    let t = cluster.create_tenant("errs").expect("tenant");
    let other = cluster.create_tenant("other").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let oc = RawClient::new(&cluster.endpoint, &other);
    let bucket = unique("data");
    c.create_bucket(&bucket).await.unwrap();
    let private = unique("private");
    oc.create_bucket(&private).await.unwrap();
    let r = oc
        .send(
            "PUT",
            &format!("/{private}/secret.txt"),
            &[],
            &[],
            b"secret\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut inputs = Vec::new();
    for i in 0..12 {
        let body = if i % 4 == 0 {
            "bad line\n"
        } else {
            "good\nline\n"
        };
        let key = format!("in/{i:02}.txt");
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/{key}"),
                &[],
                &[],
                body.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        inputs.push(format!("{bucket}/{key}"));
    }
    inputs.push(format!("{bucket}/in/missing.txt"));
    inputs.push(format!("{private}/secret.txt"));
    let map = "if grep -q bad; then echo \"cannot use $INSITU_INPUT_KEY\" >&2; exit 3; fi; wc -l < \"$INSITU_INPUT_FILE\"";
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/out/"),
            "--map",
            map,
            "--watch",
        ],
        Some(&inputs.join("\n")),
    );
    assert_eq!(out.status.code(), Some(1), "errors make the job fail");
    let status = json_of(&out);
    let id = status["id"].as_str().unwrap().to_string();
    assert_eq!(status["counters"]["inputs"], 14);
    assert_eq!(status["counters"]["outputs"], 9);
    assert_eq!(status["counters"]["errors"], 5);
    assert_eq!(
        status["counters"]["retries"], 0,
        "user failures are not retried"
    );

    let errors: Vec<serde_json::Value> = lines_of(&job_cli(&cluster, &t, &["errors", &id], None))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_code = |code: &str| -> Vec<&serde_json::Value> {
        errors.iter().filter(|e| e["code"] == code).collect()
    };
    let user = by_code("UserTaskError");
    assert_eq!(user.len(), 3, "{errors:?}");
    for e in &user {
        let input = e["input"].as_str().unwrap();
        assert!(e["message"].as_str().unwrap().contains("status 3"), "{e}");
        let stderr = get_text(&c, e["stderr"].as_str().unwrap()).await;
        let key = input.split_once('/').unwrap().1;
        assert_eq!(stderr, format!("cannot use {key}\n"));
    }
    assert_eq!(by_code("ResourceNotFoundError").len(), 1, "{errors:?}");
    assert_eq!(
        by_code("ResourceNotFoundError")[0]["input"],
        format!("{bucket}/in/missing.txt")
    );
    assert_eq!(by_code("AccessDeniedError").len(), 1, "{errors:?}");
    let failures = lines_of(&job_cli(&cluster, &t, &["failures", &id], None));
    assert_eq!(failures.len(), 5);
    // The good inputs' outputs are there, named after their inputs.
    let outputs = lines_of(&job_cli(&cluster, &t, &["outputs", &id], None));
    assert_eq!(outputs.len(), 9);
    for o in &outputs {
        assert!(o.starts_with(&format!("{bucket}/out/{bucket}/in/")), "{o}");
        assert_eq!(get_text(&c, o).await, "2\n");
    }

    // An image that cannot be found.
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/img/"),
            "--image",
            "127.0.0.1:9/no/such-image:1",
            "--map",
            "cat",
            "--watch",
        ],
        Some(&inputs[1]),
    );
    assert_eq!(out.status.code(), Some(1));
    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let errors = lines_of(&job_cli(&cluster, &t, &["errors", &id], None));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("ImageNotFoundError"), "{errors:?}");

    // The API itself, with curl --aws-sigv4: a bad spec gets a precise
    // JSON error, another tenant's output bucket is refused.
    let curl = |method: &str, path: &str, body: &str| -> (u16, serde_json::Value) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
            ])
            .arg(format!("{}:{}", t.access_key_id, t.secret_access_key))
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
            ])
            .arg(format!("{}{path}", cluster.endpoint))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(json).unwrap_or_default(),
        )
    };
    let (code, body) = curl(
        "POST",
        "/_insitu/v1/jobs",
        r#"{"phases":[{"type":"map","image":"x","exec":"cat","memory_mb":1}],"inputs":["abc/k"],"output":"abc/o/"}"#,
    );
    assert_eq!(code, 400);
    assert_eq!(body["code"], "InvalidArgumentError");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("phases[0].memory_mb"),
        "{body}"
    );
    let spec = format!(
        r#"{{"phases":[{{"type":"map","image":"insitu-test/busybox:latest","exec":"cat"}}],"inputs":["{bucket}/in/01.txt"],"output":"{private}/o/"}}"#
    );
    let (code, body) = curl("POST", "/_insitu/v1/jobs", &spec);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["code"], "AccessDeniedError");
    let (code, body) = curl("GET", "/_insitu/v1/jobs/nosuchjob", "");
    assert_eq!(code, 404);
    assert_eq!(body["code"], "ResourceNotFoundError");
    let (code, body) = curl("GET", "/_insitu/v1/jobs?limit=1", "");
    assert_eq!(code, 200);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert!(body["next"].is_string(), "{body}");
    let (code, _) = curl("GET", "/_insitu/v1/openapi.json", "");
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_job_stops_and_its_containers_go() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("cancel").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("slow");
    c.create_bucket(&bucket).await.unwrap();
    let mut inputs = String::new();
    for i in 0..6 {
        let key = format!("k{i}");
        c.send(
            "PUT",
            &format!("/{bucket}/{key}"),
            &[],
            &[],
            b"x\n".to_vec(),
        )
        .await
        .unwrap();
        inputs.push_str(&format!("{bucket}/{key}\n"));
    }
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/o/"),
            "--map",
            "sleep 60",
        ],
        Some(&inputs),
    );
    assert!(out.status.success());
    let id = lines_of(&out)[0].clone();
    let containers = || {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=insitu.job={id}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = json_of(&job_cli(&cluster, &t, &["status", &id], None));
            s["counters"]["tasks"]["running"].as_u64().unwrap_or(0) > 0
        }),
        "tasks started"
    );
    assert!(
        wait_until(Duration::from_secs(30), || containers() > 0),
        "the job's container is up"
    );
    let out = job_cli(&cluster, &t, &["cancel", &id], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["state"], "cancelled");
    let wait = job_cli(&cluster, &t, &["wait", &id], None);
    assert_eq!(wait.status.code(), Some(1), "wait reports a cancelled job");
    assert!(
        wait_until(Duration::from_secs(30), || containers() == 0),
        "the job's containers were destroyed"
    );
    let errors = lines_of(&job_cli(&cluster, &t, &["errors", &id], None));
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.contains("JobCancelledError")),
        "{errors:?}"
    );
    let status = json_of(&job_cli(&cluster, &t, &["status", &id], None));
    assert_eq!(status["counters"]["outputs"], 0);
    // A cancelled job takes no more input.
    let out = job_cli(&cluster, &t, &["cancel", &id], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("InvalidJobStateError"));
}

/// Inputs whose map output is `wc -c`, with a pause so the job is still
/// running when something is killed.
async fn slow_job_inputs(c: &RawClient, bucket: &str, n: usize) -> Vec<(String, usize)> {
    let mut inputs = Vec::new();
    for i in 0..n {
        let key = format!("in/{i:03}");
        let body = vec![b'z'; 1000 + i * 37];
        let r = c
            .send("PUT", &format!("/{bucket}/{key}"), &[], &[], body.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        inputs.push((format!("{bucket}/{key}"), body.len()));
    }
    inputs
}

/// Submits a map job over `keys` (given on stdin) with outputs under
/// `bucket/o/`; its id.
fn submit_map(cluster: &Cluster, t: &Tenant, bucket: &str, exec: &str, keys: &[&str]) -> String {
    let out = job_cli(
        cluster,
        t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/o/"),
            "--map",
            exec,
        ],
        Some(&keys.join("\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines_of(&out)[0].clone()
}

async fn check_exact_outputs(
    cluster: &Cluster,
    t: &Tenant,
    c: &RawClient,
    bucket: &str,
    id: &str,
    inputs: &[(String, usize)],
) {
    let outputs = lines_of(&job_cli(cluster, t, &["outputs", id], None));
    let unique_outputs: BTreeSet<&String> = outputs.iter().collect();
    assert_eq!(
        outputs.len(),
        inputs.len(),
        "each output listed exactly once"
    );
    assert_eq!(unique_outputs.len(), inputs.len());
    for (input, size) in inputs {
        let loc = format!("{bucket}/o/{input}");
        assert!(unique_outputs.contains(&loc), "{loc} missing");
        assert_eq!(get_text(c, &loc).await.trim(), size.to_string());
    }
    // Nothing else was written under the output prefix.
    let listing = c
        .send(
            "GET",
            &format!("/{bucket}"),
            &[("list-type", "2"), ("prefix", "o/")],
            &[],
            vec![],
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(listing.matches("<Key>").count(), inputs.len(), "{listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_a_gateway_kill9_with_each_output_committed_once() {
    let mut cluster =
        Cluster::start_with_args(3, Some(2), &["--task-slots", "1"]).expect("cluster");
    let t = cluster.create_tenant("crash").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("crash");
    c.create_bucket(&bucket).await.unwrap();
    let inputs = slow_job_inputs(&c, &bucket, 40).await;
    let keys: Vec<&str> = inputs.iter().map(|(k, _)| k.as_str()).collect();
    let id = submit_map(&cluster, &t, &bucket, "sleep 0.2; wc -c", &keys);
    // A second job over the same inputs with a reducer that counts what it
    // was fed: a map output fed twice would show.
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/r/"),
            "--map",
            "sleep 0.2; wc -c",
            "--reduce",
            "awk '{s += $1; n++} END {print n, s}'",
        ],
        Some(&keys.join("\n")),
    );
    assert!(out.status.success());
    let reduce_id = lines_of(&out)[0].clone();
    assert!(wait_until(Duration::from_secs(60), || {
        let s = json_of(&job_cli(&cluster, &t, &["status", &id], None));
        s["counters"]["tasks"]["done"].as_u64().unwrap_or(0) >= 8
    }));
    cluster.kill9();
    cluster.restart().expect("restart");
    let wait = job_cli(&cluster, &t, &["wait", &reduce_id], None);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let total: usize = inputs.iter().map(|(_, n)| n).sum();
    assert_eq!(
        get_text(&c, &format!("{bucket}/r/reduce.0")).await,
        format!("40 {total}\n"),
        "every map output reached the reducer once"
    );
    let wait = job_cli(&cluster, &t, &["wait", &id], None);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let status = json_of(&wait);
    assert_eq!(status["counters"]["outputs"], 40);
    assert_eq!(status["counters"]["errors"], 0);
    check_exact_outputs(&cluster, &t, &c, &bucket, &id, &inputs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_on_a_killed_node_rerun_on_another_replica_holder() {
    let cluster = Cluster::start_with_args(
        4,
        Some(2),
        &[
            "--task-slots",
            "2",
            "--suspect-after-secs",
            "1",
            "--down-after-secs",
            "30",
        ],
    )
    .expect("cluster");
    let t = cluster.create_tenant("nodeloss").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("loss");
    c.create_bucket(&bucket).await.unwrap();
    let inputs = slow_job_inputs(&c, &bucket, 40).await;
    let keys: Vec<&str> = inputs.iter().map(|(k, _)| k.as_str()).collect();
    let id = submit_map(&cluster, &t, &bucket, "sleep 1; wc -c", &keys);
    // Every node is busy (2 slots each) once 8 tasks run.
    assert!(wait_until(Duration::from_secs(60), || {
        let s = json_of(&job_cli(&cluster, &t, &["status", &id], None));
        s["counters"]["tasks"]["running"].as_u64().unwrap_or(0) >= 8
    }));
    cluster.kill9_node("node-1");
    let wait = job_cli(&cluster, &t, &["wait", &id], None);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let status = json_of(&wait);
    assert_eq!(status["counters"]["errors"], 0);
    assert!(
        status["counters"]["retries"].as_u64().unwrap() >= 1,
        "the killed node's tasks were retried: {status}"
    );
    check_exact_outputs(&cluster, &t, &c, &bucket, &id, &inputs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reducers_get_input_while_maps_still_run() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("pipe").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("pipe");
    c.create_bucket(&bucket).await.unwrap();
    let mut inputs = String::new();
    for i in 0..6 {
        let key = format!("in/{i}");
        c.send(
            "PUT",
            &format!("/{bucket}/{key}"),
            &[],
            &[],
            format!("line {i}\n").into_bytes(),
        )
        .await
        .unwrap();
        inputs.push_str(&format!("{bucket}/{key}\n"));
    }
    // One straggling map task; the reducer notes when its first line
    // arrived and when its input ended (host uptime, seen through /proc).
    let map = "if [ \"$INSITU_INPUT_KEY\" = in/5 ]; then sleep 4; fi; cat";
    let reduce = "read first; a=$(cut -d' ' -f1 /proc/uptime); n=$(wc -l); b=$(cut -d' ' -f1 /proc/uptime); echo \"$a $b $((n + 1))\"";
    let out = job_cli(
        &cluster,
        &t,
        &[
            "run",
            "--output",
            &format!("s3://{bucket}/o/"),
            "--map",
            map,
            "--reduce",
            reduce,
            "--watch",
        ],
        Some(&inputs),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json_of(&out);
    let outputs = lines_of(&job_cli(
        &cluster,
        &t,
        &["outputs", status["id"].as_str().unwrap()],
        None,
    ));
    assert_eq!(outputs, [format!("{bucket}/o/reduce.0")]);
    let text = get_text(&c, &outputs[0]).await;
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f[2], 6.0, "the reducer got every line: {text}");
    assert!(
        f[1] - f[0] >= 2.5,
        "the first line reached the reducer while a map still ran: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_stored_as_an_object_runs_on_every_node() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("airgap").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("airgap");
    c.create_bucket(&bucket).await.unwrap();
    // An image that exists only as an object: tagged, saved, untagged.
    let tag = format!("insitu-test/objimg:{}", unique("t"));
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    docker(&["tag", "insitu-test/busybox:latest", &tag]);
    let tar = cluster.dir.path().join("image.tar");
    docker(&["save", "-o", tar.to_str().unwrap(), &tag]);
    docker(&["rmi", &tag]);
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/images/tool.tar"),
            &[],
            &[],
            std::fs::read(&tar).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut inputs = Vec::new();
    for i in 0..8 {
        let key = format!("in/{i}");
        c.send(
            "PUT",
            &format!("/{bucket}/{key}"),
            &[],
            &[],
            b"x\n".to_vec(),
        )
        .await
        .unwrap();
        inputs.push(format!("{bucket}/{key}"));
    }
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": { "object": format!("{bucket}/images/tool.tar") }, "exec": "wc -l" }],
        "inputs": inputs,
        "output": format!("{bucket}/o/"),
    });
    let spec_file = cluster.dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = job_cli(
        &cluster,
        &t,
        &["run", "--spec", spec_file.to_str().unwrap(), "--watch"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = json_of(&out);
    assert_eq!(status["counters"]["outputs"], 8);
    // Inputs live on both nodes, so the image was copied to the node that
    // did not hold it, and loaded there.
    let copies = cluster.blob_copies();
    let nodes: BTreeSet<&String> = copies.values().flatten().collect();
    assert_eq!(nodes.len(), 2);
    for o in lines_of(&job_cli(
        &cluster,
        &t,
        &["outputs", status["id"].as_str().unwrap()],
        None,
    )) {
        assert_eq!(get_text(&c, &o).await, "1\n");
    }
    // The tarball's own tag was not left on the nodes for others to use.
    let inspect = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "{tag} was left tagged");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_job_is_not_starved_by_another_tenants_big_one() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let a = cluster.create_tenant("big").expect("tenant");
    let b = cluster.create_tenant("small").expect("tenant");
    let ca = RawClient::new(&cluster.endpoint, &a);
    let cb = RawClient::new(&cluster.endpoint, &b);
    let (ba, bb) = (unique("big"), unique("small"));
    ca.create_bucket(&ba).await.unwrap();
    cb.create_bucket(&bb).await.unwrap();
    let puts = futures::stream::iter(0..2000)
        .map(|i| {
            let (ca, ba) = (&ca, &ba);
            async move {
                let r = ca
                    .send(
                        "PUT",
                        &format!("/{ba}/in/{i:04}"),
                        &[],
                        &[],
                        b"x\n".to_vec(),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    puts.await;
    for i in 0..10 {
        cb.send("PUT", &format!("/{bb}/in/{i}"), &[], &[], b"y\n".to_vec())
            .await
            .unwrap();
    }
    let run = |t: &Tenant, bucket: &str| {
        let out = job_cli(
            &cluster,
            t,
            &[
                "run",
                "--input",
                &format!("s3://{bucket}/in/"),
                "--output",
                &format!("s3://{bucket}/o/"),
                "--map",
                "sleep 0.05; cat",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines_of(&out)[0].clone()
    };
    let big = run(&a, &ba);
    // Tenant A's job fills every slot before B arrives.
    assert!(wait_until(Duration::from_secs(60), || {
        let s = json_of(&job_cli(&cluster, &a, &["status", &big], None));
        s["counters"]["tasks"]["done"].as_u64().unwrap_or(0) >= 50
    }));
    let small = run(&b, &bb);
    let wait = job_cli(&cluster, &b, &["wait", &small], None);
    assert!(
        wait.status.success(),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
    let big_status = json_of(&job_cli(&cluster, &a, &["status", &big], None));
    let big_done = big_status["counters"]["tasks"]["done"].as_u64().unwrap();
    assert!(
        big_done < 1000,
        "B's 10 tasks finished while A had done {big_done} of 2000"
    );
    assert_eq!(big_status["state"], "running");
    // A's queued tasks say why they wait.
    let waiting = &big_status["waiting"];
    assert!(waiting.is_object(), "{big_status}");
    job_cli(&cluster, &a, &["cancel", &big], None);
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_tasks_say_why_they_wait() {
    let cluster = Cluster::start_with_args(
        2,
        Some(1),
        &["--task-slots", "1", "--suspect-after-secs", "1"],
    )
    .expect("cluster");
    let a = cluster.create_tenant("waitera").expect("tenant");
    let b = cluster.create_tenant("waiterb").expect("tenant");
    let (ca, cb) = (
        RawClient::new(&cluster.endpoint, &a),
        RawClient::new(&cluster.endpoint, &b),
    );
    let (ba, bb) = (unique("waita"), unique("waitb"));
    ca.create_bucket(&ba).await.unwrap();
    cb.create_bucket(&bb).await.unwrap();
    let ia = slow_job_inputs(&ca, &ba, 16).await;
    // Only A's inputs are stored yet.
    let copies = cluster.blob_copies();
    assert!(
        copies
            .values()
            .any(|nodes| nodes == &["node-1".to_string()]),
        "some input of A lives only on node-1: {copies:?}"
    );
    let ib = slow_job_inputs(&cb, &bb, 4).await;
    let keys = |i: &[(String, usize)]| i.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let (ka, kb) = (keys(&ia), keys(&ib));
    let ka: Vec<&str> = ka.iter().map(String::as_str).collect();
    let kb: Vec<&str> = kb.iter().map(String::as_str).collect();
    let status = |t: &Tenant, id: &str| json_of(&job_cli(&cluster, t, &["status", id], None));
    // A fills both nodes' slots; once B queues too, A's queued tasks wait
    // behind B's share.
    let big = submit_map(&cluster, &a, &ba, "sleep 3; wc -c", &ka);
    assert!(wait_until(Duration::from_secs(30), || {
        status(&a, &big)["counters"]["tasks"]["running"].as_u64() == Some(2)
    }));
    let small = submit_map(&cluster, &b, &bb, "sleep 3; wc -c", &kb);
    let mut seen = serde_json::Value::Null;
    let shared = wait_until(Duration::from_secs(30), || {
        seen = status(&a, &big);
        seen["waiting"]["tenant_share"].as_u64().unwrap_or(0) > 0
    });
    assert!(shared, "A's tasks never waited behind B's share: {seen}");
    job_cli(&cluster, &a, &["cancel", &big], None);
    job_cli(&cluster, &b, &["cancel", &small], None);

    // With the only holder of its inputs down, a job's tasks say so.
    cluster.kill9_node("node-1");
    let stranded = submit_map(&cluster, &a, &ba, "wc -c", &ka);
    let mut seen = serde_json::Value::Null;
    let said = wait_until(Duration::from_secs(30), || {
        seen = status(&a, &stranded);
        seen["waiting"]["no_live_replica"].as_u64().unwrap_or(0) > 0
    });
    assert!(said, "no task said its replica's node is down: {seen}");
    // The progress line says it in words.
    let mut watch = Command::new(insitu_bin())
        .args(["job", "wait", &stranded, "--watch"])
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &a.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &a.secret_access_key)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("insitu job wait");
    let (lines, seen) = std::sync::mpsc::channel();
    let stderr = watch.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !said
        .last()
        .is_some_and(|l: &String| l.contains("with no replica's node up"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => panic!("the progress line never said why: {said:?}"),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    job_cli(&cluster, &a, &["cancel", &stranded], None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_task_shows_its_last_stderr_lines_and_each_phase_its_progress() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("stderr").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("stderr");
    c.create_bucket(&b).await.unwrap();
    for k in ["good", "bad"] {
        let r = c
            .send(
                "PUT",
                &format!("/{b}/in/{k}"),
                &[],
                &[],
                k.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let map = "x=$(cat); if [ \"$x\" = bad ]; then \
               for i in 1 2 3 4 5 6 7; do echo \"line $i of the trouble\" >&2; done; exit 3; fi; echo ok";
    let spec = serde_json::json!({
        "phases": [
            { "type": "map", "image": "insitu-test/busybox:latest", "exec": map },
            { "type": "reduce", "image": "insitu-test/busybox:latest", "exec": "cat" } ],
        "inputs": [format!("{b}/in/good"), format!("{b}/in/bad")],
        "output": format!("{b}/out/"),
    });
    let file = cluster.dir.path().join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = job_cli(
        &cluster,
        &t,
        &["run", "--watch", "--spec", file.to_str().unwrap()],
        None,
    );
    assert!(!out.status.success(), "a job with an error exits non-zero");
    let watched = String::from_utf8_lossy(&out.stderr);
    // Off a terminal: plain lines, one per phase when it changes.
    assert!(watched.contains("phase 0 map"), "{watched}");
    assert!(watched.contains("phase 1 reduce"), "{watched}");
    // The failure at once, with the last five lines of its stderr.
    assert!(watched.contains("UserTaskError"), "{watched}");
    assert!(watched.contains(&format!("input {b}/in/bad")), "{watched}");
    for i in 3..=7 {
        assert!(
            watched.contains(&format!("  | line {i} of the trouble")),
            "{watched}"
        );
    }
    assert!(!watched.contains("line 2 of the trouble"), "{watched}");

    let id = json_of(&out)["id"].as_str().unwrap().to_string();
    let errors = lines_of(&job_cli(&cluster, &t, &["errors", &id], None));
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e: serde_json::Value = serde_json::from_str(&errors[0]).unwrap();
    let tail: Vec<String> = (3..=7)
        .map(|i| format!("line {i} of the trouble"))
        .collect();
    assert_eq!(e["stderr_tail"], serde_json::json!(tail), "{e}");
}

/// Delay scheduling end to end: two nodes, one slot each, one replica.
/// A sleeping job takes the one slot of the node holding an object; a
/// second job over the same object then runs its task on the other node,
/// on a copy of the input, once its locality wait (5 ms here) is over,
/// and counts the input as remote bytes. With a wait longer than the
/// test, the second job waits for the holder instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_map_task_runs_away_from_its_busy_holder_after_the_locality_wait() {
    for (wait, away) in [("5", true), ("600000", false)] {
        let cluster = Cluster::start_with_args(
            2,
            Some(1),
            &["--task-slots", "1", "--locality-wait-ms", wait],
        )
        .expect("cluster");
        let t = cluster.create_tenant("away").expect("tenant");
        let c = RawClient::new(&cluster.endpoint, &t);
        let bucket = unique("away");
        c.create_bucket(&bucket).await.unwrap();
        let body = b"one\ntwo\nthree\n".to_vec();
        let put = c
            .send("PUT", &format!("/{bucket}/in"), &[], &[], body.clone())
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        let input = format!("{bucket}/in\n");
        let run = |out: &str, map: &str| {
            let out = job_cli(
                &cluster,
                &t,
                &[
                    "run",
                    "--output",
                    &format!("s3://{bucket}/{out}/"),
                    "--map",
                    map,
                ],
                Some(&input),
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            lines_of(&out)[0].clone()
        };
        let sleeper = run("slept", "sleep 30");
        assert!(
            wait_until(Duration::from_secs(30), || {
                let s = json_of(&job_cli(&cluster, &t, &["status", &sleeper], None));
                s["counters"]["tasks"]["running"].as_u64().unwrap_or(0) > 0
            }),
            "the sleeper started"
        );
        let counter = run("counted", "wc -l");
        let status = || json_of(&job_cli(&cluster, &t, &["status", &counter], None));
        if away {
            assert!(
                wait_until(Duration::from_secs(20), || status()["state"] == "done"),
                "the second job ran while the holder's slot was taken: {}",
                status()
            );
            let s = status();
            assert_eq!(s["counters"]["errors"], 0, "{s}");
            assert_eq!(s["phases"][0]["bytes_remote"], body.len() as u64, "{s}");
            assert_eq!(s["phases"][0]["bytes_local"], 0, "{s}");
            let outputs = lines_of(&job_cli(&cluster, &t, &["outputs", &counter], None));
            assert_eq!(outputs.len(), 1, "{outputs:?}");
            assert_eq!(get_text(&c, &outputs[0]).await.trim(), "3");
            let sleeping = json_of(&job_cli(&cluster, &t, &["status", &sleeper], None));
            assert_eq!(sleeping["state"], "running", "{sleeping}");
        } else {
            std::thread::sleep(Duration::from_secs(3));
            let s = status();
            assert_eq!(s["state"], "running", "{s}");
            assert_eq!(
                s["counters"]["tasks"]["running"], 0,
                "it waits for the holder: {s}"
            );
        }
        for id in [&sleeper, &counter] {
            let _ = job_cli(&cluster, &t, &["cancel", id], None);
        }
    }
}
