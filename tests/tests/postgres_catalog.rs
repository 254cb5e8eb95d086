//! The real binary on a real PostgreSQL catalog (`--catalog postgresql://`):
//! S3 and jobs work as on the embedded catalog, state lives in the
//! database (a restarted gateway has it all), and while the database is
//! down requests get 503 and the gateway recovers without a restart.

use insitu_catalog::testing::TestPostgres;
use insitu_e2e::{error_code, run_job, unique, Cluster, RawClient};

async fn list(c: &RawClient, bucket: &str, prefix: &str) -> (reqwest::StatusCode, String) {
    let query = [("list-type", "2"), ("prefix", prefix)];
    let r = c
        .send("GET", &format!("/{bucket}"), &query, &[], Vec::new())
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_on_postgresql_serves_s3_and_jobs_and_rides_out_an_outage() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let url = pg.url("postgres");
    let mut cluster =
        Cluster::start_with_args(2, None, &["--catalog", &url]).expect("cluster on PostgreSQL");
    // Nothing went to an embedded catalog.
    assert!(!cluster.data_dir().join("catalog").exists());
    let t = cluster.create_tenant("pgtenant").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("pg");
    c.create_bucket(&bucket).await.expect("bucket");

    for i in 0..12 {
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/dir/k{i:02}"),
                &[],
                &[],
                format!("line {i}\n").into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, body) = list(&c, &bucket, "dir/").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("<Key>").count(), 12, "{body}");

    // A job reads and commits through the same catalog.
    let (status, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "wc -l" }],
            "input_prefix": format!("{bucket}/dir/"),
            "output": format!("{bucket}/out/"),
        }),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["counters"]["outputs"], 12, "{status}");

    // Everything is in the database: a restarted gateway has it.
    cluster.restart().expect("restart");
    let c = RawClient::new(&cluster.endpoint, &t);
    let r = c
        .send("GET", &format!("/{bucket}/dir/k03"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "line 3\n");

    // The database goes away: requests that need it get 503, not a wrong
    // answer, and the gateway stays up.
    pg.stop().expect("stop PostgreSQL");
    let r = c
        .send("PUT", &format!("/{bucket}/during"), &[], &[], b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(&r.text().await.unwrap()), "ServiceUnavailable");
    let (status, _) = list(&c, &bucket, "dir/").await;
    assert_eq!(status, 503);

    // It comes back: the same gateway serves again, and every
    // acknowledged object reads back; the refused PUT left nothing.
    pg.restart().expect("restart PostgreSQL");
    let mut ok = false;
    for _ in 0..50 {
        let r = c
            .send("PUT", &format!("/{bucket}/after"), &[], &[], b"y".to_vec())
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ok, "the gateway recovered without a restart");
    let (status, body) = list(&c, &bucket, "dir/").await;
    assert_eq!(status, 200);
    assert_eq!(body.matches("<Key>").count(), 12, "{body}");
    let r = c
        .send("GET", &format!("/{bucket}/during"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn puts_streaming_through_a_database_outage_lose_no_acknowledged_object() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let url = pg.url("postgres");
    let cluster =
        Cluster::start_with_args(2, None, &["--catalog", &url]).expect("cluster on PostgreSQL");
    let t = cluster.create_tenant("outage").expect("tenant");
    let c = std::sync::Arc::new(RawClient::new(&cluster.endpoint, &t));
    let bucket = unique("outage");
    c.create_bucket(&bucket).await.expect("bucket");

    // Four writers stream PUTs of new keys while the database stops and
    // starts again under them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (c, bucket, stop) = (c.clone(), bucket.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}/k{i:05}");
                let body = format!("{key} body\n").into_bytes();
                let status = match c
                    .send("PUT", &format!("/{bucket}/{key}"), &[], &[], body)
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                results.push((key, status));
                i += 1;
            }
            results
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    pg.stop().expect("stop PostgreSQL");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    pg.restart().expect("restart PostgreSQL");
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut results = Vec::new();
    let mut resumed = false;
    for w in writers {
        let mine = w.await.unwrap();
        // This writer was acknowledged again after its last refusal.
        if let Some(last_refused) = mine.iter().rposition(|(_, s)| *s == 503) {
            resumed |= mine[last_refused..].iter().any(|(_, s)| *s == 200);
        }
        results.extend(mine);
    }
    let acked: Vec<&String> = results
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(k, _)| k)
        .collect();
    let refused = results.iter().filter(|(_, s)| *s == 503).count();
    let other: Vec<&(String, u16)> = results
        .iter()
        .filter(|(_, s)| *s != 200 && *s != 503)
        .collect();
    assert!(other.is_empty(), "only 200 or 503: {other:?}");
    assert!(refused > 0, "some PUTs met the outage");
    assert!(resumed, "writes were acknowledged again after the outage");
    for key in acked {
        let r = c
            .send("GET", &format!("/{bucket}/{key}"), &[], &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{key} was acknowledged");
        assert_eq!(r.text().await.unwrap(), format!("{key} body\n"));
    }
}

/// A job whose tasks finish while the database is down waits for it: each
/// commit is tried again once the database is back, and the job ends with
/// every output exactly once and no error.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_pauses_through_a_database_outage_and_commits_each_output_once() {
    use insitu_e2e::job_cli;
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let url = pg.url("postgres");
    let cluster =
        Cluster::start_with_args(2, None, &["--catalog", &url]).expect("cluster on PostgreSQL");
    let t = cluster.create_tenant("pgjobs").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("pgjob");
    c.create_bucket(&bucket).await.expect("bucket");
    for i in 0..8 {
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/in/k{i}"),
                &[],
                &[],
                format!("line {i}\nmore\n").into_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "sleep 3; wc -l" }],
        "input_prefix": format!("{bucket}/in/"),
        "output": format!("{bucket}/out/"),
    });
    let file = cluster.dir.path().join("outage-spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = job_cli(&cluster, &t, &["run", "--spec", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // The first tasks are running; they finish while the database is down.
    let started = insitu_e2e::wait_until(std::time::Duration::from_secs(60), || {
        let s = job_cli(&cluster, &t, &["status", &id]);
        let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap_or_default();
        v["counters"]["tasks"]["running"].as_u64() > Some(0)
    });
    assert!(started, "no task started");
    pg.stop().expect("stop PostgreSQL");
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    // Meanwhile the jobs API answers 503, and the job has not failed.
    let s = job_cli(&cluster, &t, &["status", &id]);
    assert!(!s.status.success(), "status while the database is down");
    pg.restart().expect("restart PostgreSQL");
    let mut status = serde_json::Value::Null;
    let ended = insitu_e2e::wait_until(std::time::Duration::from_secs(120), || {
        let s = job_cli(&cluster, &t, &["status", &id]);
        status = serde_json::from_slice(&s.stdout).unwrap_or_default();
        status["state"] == "done" || status["state"] == "cancelled"
    });
    assert!(ended, "the job did not end after the outage: {status}");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["counters"]["errors"], 0, "{status}");
    assert_eq!(status["counters"]["outputs"], 8, "{status}");
    let outputs = job_cli(&cluster, &t, &["outputs", &id]);
    let mut lines: Vec<String> = String::from_utf8_lossy(&outputs.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 8, "each output once: {lines:?}");
    for l in &lines {
        let key = l.strip_prefix(&format!("{bucket}/")).unwrap();
        let r = c
            .send("GET", &format!("/{bucket}/{key}"), &[], &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap().trim(), "2");
    }
}
