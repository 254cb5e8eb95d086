//! Several gateways on one PostgreSQL catalog (`insitu dev --gateways 2`),
//! each its own process: what one writes the other serves at once,
//! concurrent overwrites through both leave one winner and no leaked blob,
//! a job survives `kill -9` of the gateway driving it, and the repair loop
//! moves to a live gateway when its leader dies.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use insitu_catalog::testing::TestPostgres;
use insitu_e2e::{insitu_bin, unique, wait_until, Cluster, RawClient, Tenant};

fn two_gateways(pg: &TestPostgres, nodes: usize, extra: &[&str]) -> Cluster {
    let url = pg.url("postgres");
    let mut args = vec!["--catalog", &url, "--gateways", "2", "--lease-secs", "3"];
    args.extend_from_slice(extra);
    let c = Cluster::start_with_args(nodes, Some(2), &args).expect("two gateways on PostgreSQL");
    assert_eq!(c.endpoints().len(), 2, "{}", c.ready);
    c
}

async fn get(c: &RawClient, path: &str) -> (u16, Vec<u8>, String) {
    let r = c.send("GET", path, &[], &[], Vec::new()).await.unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, r.bytes().await.unwrap().to_vec(), etag)
}

async fn keys(c: &RawClient, bucket: &str) -> Vec<String> {
    let r = c
        .send(
            "GET",
            &format!("/{bucket}"),
            &[("list-type", "2")],
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(String::from)
        .collect()
}

async fn metrics(endpoint: &str) -> String {
    match reqwest::get(format!("{endpoint}/_insitu/v1/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A value from the metrics text, if present.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn what_one_gateway_writes_the_other_serves_and_overwrites_leave_one_winner() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let cluster = two_gateways(&pg, 3, &["--gc-grace-secs", "1"]);
    let ends = cluster.endpoints();
    let t = cluster.create_tenant("twogw").expect("tenant");
    let a = RawClient::new(&ends[0], &t);
    let b = RawClient::new(&ends[1], &t);
    let bucket = unique("ryw");
    a.create_bucket(&bucket).await.expect("bucket through A");

    // Read-your-writes across gateways: each PUT through A is served by B
    // at once, byte for byte, and listed.
    let sizes = [0usize, 1, 4096, 1 << 20, (3 << 20) + 7];
    for (i, size) in sizes.iter().enumerate() {
        let body: Vec<u8> = (0..*size).map(|j| (j * 31 + i) as u8).collect();
        let path = format!("/{bucket}/obj-{i}");
        let r = a.send("PUT", &path, &[], &[], body.clone()).await.unwrap();
        assert_eq!(r.status(), 200);
        let (status, got, _) = get(&b, &path).await;
        assert_eq!(status, 200, "GET through B right after PUT through A");
        assert_eq!(got, body, "object {i} through B");
        let listed = keys(&b, &bucket).await;
        assert!(listed.contains(&format!("obj-{i}")), "{listed:?}");
    }

    // Concurrent overwrites of one key through both gateways.
    let hot = format!("/{bucket}/hot");
    let writer = |c: RawClient, tag: &'static str| {
        let hot = hot.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for round in 0..12 {
                let body = format!("{tag}-{round}-{}", "x".repeat(round * 100)).into_bytes();
                let r = c.send("PUT", &hot, &[], &[], body.clone()).await.unwrap();
                assert_eq!(r.status(), 200);
                written.push(body);
            }
            written
        })
    };
    let (wa, wb) = tokio::join!(
        writer(RawClient::new(&ends[0], &t), "A"),
        writer(RawClient::new(&ends[1], &t), "B")
    );
    let (wa, wb) = (wa.unwrap(), wb.unwrap());
    let (sa, body_a, etag_a) = get(&a, &hot).await;
    let (sb, body_b, etag_b) = get(&b, &hot).await;
    assert_eq!((sa, sb), (200, 200));
    assert_eq!(body_a, body_b, "both gateways serve the same winner");
    assert_eq!(etag_a, etag_b);
    // The winner is the last write of one of the two writers.
    assert!(
        Some(&body_a) == wa.last() || Some(&body_a) == wb.last(),
        "the visible version is the last write of A or of B"
    );
    let listed = keys(&a, &bucket).await;
    assert_eq!(listed.iter().filter(|k| *k == "hot").count(), 1);

    // After GC, exactly the visible objects' blobs remain, 2 copies each:
    // no loser's blob leaked, whichever gateway led GC.
    let objects = sizes.len() + 1;
    let settled = wait_until(Duration::from_secs(60), || {
        let copies = cluster.blob_copies();
        copies.len() == objects && copies.values().all(|n| n.len() == 2)
    });
    assert!(
        settled,
        "blobs left after GC: {:?} (expected {objects} with 2 copies)",
        cluster.blob_copies()
    );
}

fn job_spec(bucket: &str) -> serde_json::Value {
    serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "sleep 4; wc -l" }],
        "input_prefix": format!("{bucket}/in/"),
        "output": format!("{bucket}/out/"),
    })
}

async fn job_status(c: &RawClient, id: &str) -> Option<serde_json::Value> {
    let r = c
        .send(
            "GET",
            &format!("/_insitu/v1/jobs/{id}"),
            &[],
            &[],
            Vec::new(),
        )
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.json().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_survives_kill_9_of_the_gateway_that_drives_it() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let cluster = two_gateways(&pg, 2, &["--task-slots", "2"]);
    let ends = cluster.endpoints();
    let t = cluster.create_tenant("takeover").expect("tenant");
    let a = RawClient::new(&ends[0], &t);
    let b = RawClient::new(&ends[1], &t);
    let bucket = unique("takeover");
    a.create_bucket(&bucket).await.expect("bucket");
    let inputs = 6;
    for i in 0..inputs {
        let body = "line\n".repeat(i + 1).into_bytes();
        let r = a
            .send("PUT", &format!("/{bucket}/in/k{i}"), &[], &[], body)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Created through A, which drives it (no other gateway has fewer jobs).
    let r = a
        .send(
            "POST",
            "/_insitu/v1/jobs",
            &[],
            &[("content-type", "application/json")],
            job_spec(&bucket).to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    // Tasks run on A's watch...
    let mut running = false;
    for _ in 0..200 {
        let s = job_status(&a, &id).await.unwrap_or_default();
        if s["counters"]["tasks"]["running"].as_u64().unwrap_or(0) > 0 {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(running, "tasks started on gateway A");
    // ...when A is killed outright.
    cluster.kill9_gateway(0);

    // B takes the job over once A's lease (3 s) runs out, and ends it.
    let mut last = serde_json::Value::Null;
    let finished = {
        let mut done = false;
        for _ in 0..600 {
            if let Some(s) = job_status(&b, &id).await {
                done = s["state"] == "done";
                last = s;
                if done {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        done
    };
    assert!(finished, "the job ended through B: {last}");
    assert_eq!(last["counters"]["outputs"], inputs, "{last}");
    assert_eq!(last["counters"]["errors"], 0, "{last}");
    assert!(
        last["counters"]["retries"].as_u64().unwrap_or(0) >= 1,
        "the tasks cut off by the kill count as retries: {last}"
    );

    // Each output exactly once, and right.
    let page: serde_json::Value = b
        .send(
            "GET",
            &format!("/_insitu/v1/jobs/{id}/outputs"),
            &[],
            &[],
            Vec::new(),
        )
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let outputs = page["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), inputs, "{page}");
    let tasks: BTreeSet<&str> = outputs.iter().filter_map(|o| o["task"].as_str()).collect();
    assert_eq!(tasks.len(), inputs, "one output per task: {page}");
    let mut counts = BTreeSet::new();
    for o in outputs {
        let object = o["object"].as_str().unwrap();
        let (status, body, _) = get(&b, &format!("/{object}")).await;
        assert_eq!(status, 200, "{object}");
        counts.insert(String::from_utf8_lossy(&body).trim().to_string());
    }
    let expected: BTreeSet<String> = (1..=inputs).map(|n| n.to_string()).collect();
    assert_eq!(counts, expected, "every input counted once");
    let listed = keys(&b, &bucket).await;
    let out_keys = listed.iter().filter(|k| k.starts_with("out/")).count();
    assert_eq!(out_keys, inputs, "no duplicate output objects: {listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_keeps_running_when_its_leader_gateway_is_killed() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let cluster = two_gateways(
        &pg,
        3,
        &["--down-after-secs", "4", "--suspect-after-secs", "2"],
    );
    let ends = cluster.endpoints();
    // Exactly one gateway leads repair.
    let mut leader = None;
    for _ in 0..100 {
        let m0 = metrics(&ends[0]).await;
        let m1 = metrics(&ends[1]).await;
        let l0 = metric(&m0, "insitu_gateway_leader{role=\"repair\"}");
        let l1 = metric(&m1, "insitu_gateway_leader{role=\"repair\"}");
        match (l0, l1) {
            (Some(1), Some(0)) => leader = Some(0),
            (Some(0), Some(1)) => leader = Some(1),
            (Some(1), Some(1)) => panic!("two repair leaders"),
            _ => {}
        }
        if leader.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = leader.expect("one gateway leads repair");
    let other = 1 - leader;
    let t: Tenant = cluster.create_tenant("repairlead").expect("tenant");
    let c = RawClient::new(&ends[other], &t);
    let bucket = unique("repair");
    c.create_bucket(&bucket).await.expect("bucket");
    for i in 0..8 {
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/k{i}"),
                &[],
                &[],
                vec![i as u8; 2000],
            )
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
    }
    // The leader dies, then a node holding replicas.
    cluster.kill9_gateway(leader);
    cluster.kill9_node("node-0");
    let node0 = cluster.node_dir("node-0");
    // The survivor takes the lead and brings every blob back to 2 live
    // copies.
    let repaired = wait_until(Duration::from_secs(90), || {
        let copies = cluster.blob_copies();
        copies.len() == 8
            && copies
                .values()
                .all(|n| n.iter().filter(|x| *x != "node-0").count() >= 2)
    });
    let m = metrics(&ends[other]).await;
    assert!(
        repaired,
        "repair by the surviving gateway; copies {:?} (node-0 at {}), metrics:\n{m}",
        cluster.blob_copies(),
        node0.display()
    );
    assert_eq!(
        metric(&m, "insitu_gateway_leader{role=\"repair\"}"),
        Some(1),
        "{m}"
    );
    assert!(
        metric(&m, "insitu_repair_blobs_copied_total").unwrap_or(0) >= 1,
        "{m}"
    );
    for i in 0..8 {
        let (status, body, _) = get(&c, &format!("/{bucket}/k{i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, vec![i as u8; 2000]);
    }
}

#[test]
fn several_gateways_on_the_embedded_catalog_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(insitu_bin())
        .args([
            "dev",
            "--gateways",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("insitu dev");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("needs a shared catalog"), "{stderr}");
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn an_unreachable_catalog_fails_dev_in_one_line_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(insitu_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--catalog", "postgresql://insitu:pw@127.0.0.1:1/insitu"])
        .output()
        .expect("insitu dev");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("catalog"), "{stderr}");
    assert!(!data.exists(), "nothing was created");
}

async fn post_json(c: &RawClient, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = c
        .send(
            "POST",
            path,
            &[],
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_to_a_job_through_any_gateway_reach_the_one_that_drives_it() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let cluster = two_gateways(&pg, 2, &[]);
    let ends = cluster.endpoints();
    let t = cluster.create_tenant("forward").expect("tenant");
    let a = RawClient::new(&ends[0], &t);
    let b = RawClient::new(&ends[1], &t);
    let bucket = unique("fwd");
    a.create_bucket(&bucket).await.expect("bucket");
    for i in 0..3 {
        let r = a
            .send(
                "PUT",
                &format!("/{bucket}/in/k{i}"),
                &[],
                &[],
                b"a\nb\n".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // An open job created through A (which drives it); inputs added and
    // ended through B.
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "wc -l" }],
        "input_open": true,
        "output": format!("{bucket}/out/"),
    });
    let (status, created) = post_json(&a, "/_insitu/v1/jobs", spec.clone()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let inputs: Vec<String> = (0..3).map(|i| format!("{bucket}/in/k{i}")).collect();
    let (status, added) = post_json(
        &b,
        &format!("/_insitu/v1/jobs/{id}/inputs"),
        serde_json::json!({ "inputs": inputs }),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["added"], 3, "{added}");
    let (status, ended) = post_json(
        &b,
        &format!("/_insitu/v1/jobs/{id}/inputs/end"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    let mut last = serde_json::Value::Null;
    for _ in 0..300 {
        if let Some(s) = job_status(&b, &id).await {
            last = s;
            if last["state"] == "done" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["counters"]["outputs"], 3, "{last}");

    // Cancelled through B.
    let (status, second) = post_json(&a, "/_insitu/v1/jobs", spec).await;
    assert_eq!(status, 201, "{second}");
    let id2 = second["id"].as_str().unwrap().to_string();
    let (status, cancelled) = post_json(
        &b,
        &format!("/_insitu/v1/jobs/{id2}/cancel"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");

    // The internal endpoint wants a peer gateway's signature: the cluster
    // secret, which every node holds, is not enough to act for a tenant.
    let secret = cluster.cluster_secret().expect("cluster secret");
    let (status, third) = post_json(
        &a,
        "/_insitu/v1/jobs",
        serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "wc -l" }],
            "input_open": true,
            "output": format!("{bucket}/out3/"),
        }),
    )
    .await;
    assert_eq!(status, 201, "{third}");
    let id3 = third["id"].as_str().unwrap();
    for endpoint in &ends {
        let r = reqwest::Client::new()
            .post(format!("{endpoint}/_insitu/v1/internal/jobs/{id3}/cancel"))
            .bearer_auth(&secret)
            .header("x-insitu-tenant", "forward")
            .header(
                "x-insitu-forward-time",
                chrono::Utc::now().timestamp().to_string(),
            )
            .header("x-insitu-forward-signature", "0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "a forged forward is refused");
    }
    let s = job_status(&b, id3).await.expect("status");
    assert_ne!(s["state"], "cancelled", "{s}");
}

#[test]
fn a_gateway_on_a_shared_catalog_without_the_root_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let out = Command::new(insitu_bin())
        .args(["gateway", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--catalog", "postgresql://insitu@127.0.0.1:1/insitu"])
        .env("INSITU_CLUSTER_SECRET", "a-cluster-secret-of-enough-length")
        .env_remove("INSITU_ROOT_ACCESS_KEY")
        .env_remove("INSITU_ROOT_SECRET_KEY")
        .output()
        .expect("insitu gateway");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("needs the cluster's root keys"), "{stderr}");
    assert!(!data.exists(), "nothing was created");
}
