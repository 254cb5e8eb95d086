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
