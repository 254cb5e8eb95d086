//! Cluster storage with 4 storage-node processes and R=2: node loss during
//! traffic, repair, rejoin with stale blobs, corruption, full nodes, and a
//! cluster assembled from `insitu gateway` and `insitu node` config files.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use insitu_e2e::{content_for, error_code, size_in_key, unique, wait_until, Cluster, RawClient};

/// Fast failure detection and collection, so the test runs in seconds.
const FAST: &[&str] = &[
    "--suspect-after-secs",
    "1",
    "--down-after-secs",
    "3",
    "--health-interval-ms",
    "200",
    "--gc-grace-secs",
    "1",
    "--orphan-sweep-secs",
    "2",
    "--reserve-mib",
    "0",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_loss_repair_and_rejoin() {
    let mut cluster = Cluster::start_with_args(4, Some(2), FAST).expect("cluster");
    let t = cluster.create_tenant("ha").expect("tenant");
    let c = Arc::new(RawClient::new(&cluster.endpoint, &t));
    let bucket = unique("ha");
    c.create_bucket(&bucket).await.unwrap();

    // Some objects exist before the failure.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    for i in 0..30 {
        let key = format!("pre/{i}-{}", 10_000 + i * 70_001);
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/{key}"),
                &[],
                &[],
                content_for(&key, size_in_key(&key)),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        acked.lock().unwrap().push(key);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let get_failures = Arc::new(AtomicUsize::new(0));
    let gets = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (c, acked, stop, bucket) = (c.clone(), acked.clone(), stop.clone(), bucket.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!(
                    "live/w{w}-{i}-{}",
                    5_000 + (i * 130_003 + w * 7) % 2_500_000
                );
                if let Ok(r) = c
                    .send(
                        "PUT",
                        &format!("/{bucket}/{key}"),
                        &[],
                        &[],
                        content_for(&key, size_in_key(&key)),
                    )
                    .await
                {
                    if r.status() == 200 {
                        acked.lock().unwrap().push(key);
                    }
                }
                i += 1;
            }
        }));
    }
    for r in 0..3 {
        let (c, acked, stop, bucket) = (c.clone(), acked.clone(), stop.clone(), bucket.clone());
        let (fails, gets) = (get_failures.clone(), gets.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let key = {
                    let a = acked.lock().unwrap();
                    a[(i * 7919) % a.len()].clone()
                };
                let ok = match c
                    .send("GET", &format!("/{bucket}/{key}"), &[], &[], vec![])
                    .await
                {
                    Ok(resp) if resp.status() == 200 => match resp.bytes().await {
                        Ok(b) => b.as_ref() == content_for(&key, size_in_key(&key)).as_slice(),
                        Err(_) => false,
                    },
                    _ => false,
                };
                gets.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    eprintln!("GET {key} failed");
                    fails.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill9_node("node-1");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(gets.load(Ordering::Relaxed) > 50, "readers ran");
    assert_eq!(
        get_failures.load(Ordering::Relaxed),
        0,
        "no GET failed while a node died"
    );
    assert!(acked.len() > 40, "writers kept going: {}", acked.len());

    // After the grace period every object is back to 2 copies on live nodes.
    let live = ["node-0", "node-2", "node-3"];
    // A blob whose only copy is on node-1 is a write that node-1's death
    // failed (with R=2 an acknowledged write has a copy elsewhere too): it
    // is an orphan, swept once node-1 returns, which is checked below.
    let repaired = wait_until(Duration::from_secs(60), || {
        let copies = cluster.blob_copies();
        let on_live: Vec<usize> = copies
            .values()
            .map(|nodes| nodes.iter().filter(|n| live.contains(&n.as_str())).count())
            .filter(|n| *n > 0)
            .collect();
        on_live.len() >= acked.len() && on_live.iter().all(|n| *n == 2)
    });
    let copies = cluster.blob_copies();
    assert!(
        repaired,
        "every blob has 2 live copies: {:?}",
        copies
            .iter()
            .filter(|(_, n)| {
                let on_live = n.iter().filter(|x| live.contains(&x.as_str())).count();
                on_live != 0 && on_live != 2
            })
            .take(5)
            .collect::<Vec<_>>()
    );
    let report = cluster.admin(&["nodes"]).unwrap();
    assert_eq!(report["repair"]["under_replicated"], 0, "{report}");
    assert!(
        report["repair"]["blobs_copied"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(cluster.node_state("node-1").as_deref(), Some("down"));
    let node0 = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "node-0")
        .unwrap()
        .clone();
    for field in [
        "capacity_bytes",
        "free_bytes",
        "used_bytes",
        "blob_count",
        "load",
    ] {
        assert!(
            node0[field].is_u64(),
            "admin nodes reports {field}: {node0}"
        );
    }
    assert!(node0["blob_count"].as_u64().unwrap() > 0);
    let metrics = reqwest::get(format!("{}/_insitu/v1/metrics", cluster.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("insitu_node_up{node=\"node-1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("insitu_repair_blobs_copied_total"),
        "{metrics}"
    );

    // The killed node comes back: it rejoins and its stale copies go.
    let stale_before = copies
        .values()
        .filter(|n| n.iter().any(|x| x == "node-1"))
        .count();
    assert!(stale_before > 0, "node-1 held replicas before it died");
    cluster.start_node("node-1", &[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || cluster
            .node_state("node-1")
            .as_deref()
            == Some("up")),
        "node-1 rejoined"
    );
    let clean = wait_until(Duration::from_secs(30), || {
        cluster.blob_copies().values().all(|n| n.len() == 2)
    });
    assert!(
        clean,
        "stale blobs on the returning node were collected: {:?}",
        cluster
            .blob_copies()
            .iter()
            .filter(|(_, n)| n.len() != 2)
            .take(5)
            .collect::<Vec<_>>()
    );

    // Nothing was lost, byte for byte.
    for key in &acked {
        let r = c
            .send("GET", &format!("/{bucket}/{key}"), &[], &[], vec![])
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{key}");
        assert!(
            r.bytes().await.unwrap().as_ref() == content_for(key, size_in_key(key)).as_slice(),
            "{key} intact"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_replica_is_never_served_and_is_repaired() {
    let mut args = FAST.to_vec();
    args.extend_from_slice(&["--node-scrub-secs", "2"]);
    let cluster = Cluster::start_with_args(3, Some(2), &args).expect("cluster");
    let t = cluster.create_tenant("rot").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("rot");
    c.create_bucket(&bucket).await.unwrap();
    let data = content_for("big", 3 * 1024 * 1024 + 77);
    assert_eq!(
        c.send("PUT", &format!("/{bucket}/big"), &[], &[], data.clone())
            .await
            .unwrap()
            .status(),
        200
    );

    let copies = cluster.blob_copies();
    assert_eq!(copies.len(), 1);
    let (blob, nodes) = copies.iter().next().unwrap();
    assert_eq!(nodes.len(), 2);
    let mut originals = BTreeMap::new();
    // Corrupt each replica in turn, so whichever one a read starts on, the
    // checksum check and the failover are exercised.
    for node in nodes {
        let path = cluster
            .node_dir(node)
            .join("blobs")
            .join(&blob[..2])
            .join(blob);
        originals.insert(node.clone(), std::fs::read(&path).unwrap());
    }
    for node in nodes {
        let path = cluster
            .node_dir(node)
            .join("blobs")
            .join(&blob[..2])
            .join(blob);
        let mut raw = std::fs::read(&path).unwrap();
        raw[1024 * 1024 + 5] ^= 0x5a;
        std::fs::write(&path, &raw).unwrap();

        for _ in 0..3 {
            let r = c
                .send("GET", &format!("/{bucket}/big"), &[], &[], vec![])
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.bytes().await.unwrap().as_ref() == data.as_slice(),
                "a corrupt replica's bytes were served"
            );
            let r = c
                .send(
                    "GET",
                    &format!("/{bucket}/big"),
                    &[],
                    &[("range", "bytes=1048000-1049999")],
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            assert!(r.bytes().await.unwrap().as_ref() == &data[1_048_000..1_050_000]);
        }
        // The bad copy is rewritten from the good one.
        let fixed = wait_until(Duration::from_secs(30), || {
            std::fs::read(&path)
                .map(|b| b == originals[node])
                .unwrap_or(false)
        });
        assert!(fixed, "replica on {node} repaired");
    }
    let report = cluster.admin(&["nodes"]).unwrap();
    assert!(
        report["repair"]["corrupt_replicas_repaired"]
            .as_u64()
            .unwrap()
            >= 2,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_nodes_are_skipped_and_writes_fail_only_without_room() {
    let mut cluster = Cluster::start_with_args(2, Some(2), FAST).expect("cluster");
    cluster
        .start_node(
            "node-small",
            &["--capacity-bytes", &(2_500_000).to_string()],
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster
        .node_state("node-small")
        .as_deref()
        == Some("up")));
    let t = cluster.create_tenant("full").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("full");
    c.create_bucket(&bucket).await.unwrap();

    let mib = vec![1u8; 1024 * 1024];
    for i in 0..10 {
        let r = c
            .send("PUT", &format!("/{bucket}/o{i}"), &[], &[], mib.clone())
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "PUT {i} succeeds while two nodes have room"
        );
        tokio::time::sleep(Duration::from_millis(250)).await; // let usage reports catch up
    }
    let small: u64 = cluster
        .blob_files()
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("node-small"))
        .map(|(_, s)| s)
        .sum();
    assert!(
        small <= 2_500_000,
        "the small node stayed within its capacity: {small}"
    );

    // With one roomy node gone, writes go to the small node until it is
    // full; then no 2 nodes have room and the PUT fails with a clear 503.
    cluster.kill9_node("node-0");
    assert!(wait_until(Duration::from_secs(10), || cluster
        .node_state("node-0")
        .as_deref()
        != Some("up")));
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..4 {
        let key = format!("/{bucket}/after-{i}");
        let r = c.send("PUT", &key, &[], &[], mib.clone()).await.unwrap();
        if r.status() == 200 {
            accepted += 1;
            tokio::time::sleep(Duration::from_millis(400)).await;
            continue;
        }
        assert_eq!(r.status(), 503);
        let body = r.text().await.unwrap();
        assert_eq!(error_code(&body), "ServiceUnavailable", "{body}");
        assert_eq!(
            c.send("HEAD", &key, &[], &[], vec![])
                .await
                .unwrap()
                .status(),
            404,
            "nothing half-written is visible"
        );
        refused = Some(i);
        break;
    }
    assert!(
        refused.is_some(),
        "a PUT is refused once no 2 nodes have room (accepted {accepted})"
    );
    assert!(
        accepted <= 2,
        "the small node took at most what fits: {accepted}"
    );
    let small: u64 = cluster
        .blob_files()
        .iter()
        .filter(|(p, _)| p.to_string_lossy().contains("node-small"))
        .map(|(_, s)| s)
        .sum();
    assert!(
        small <= 2_500_000,
        "the small node stayed within its capacity: {small}"
    );
    // Small objects still fit.
    let r = c
        .send("PUT", &format!("/{bucket}/tiny"), &[], &[], b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_and_nodes_from_config_files() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let gw_conf = dir.path().join("gateway.toml");
    std::fs::write(
        &gw_conf,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nreplicas = 2\ncluster_secret = \"s3cr3t-for-the-test\"\nroot_access_key = \"{}\"\nroot_secret_key = \"{}\"\nhealth_interval_ms = 200\n",
            dir.path().join("gw").display(),
            insitu_e2e::ROOT_KEY,
            insitu_e2e::ROOT_SECRET
        ),
    )
    .unwrap();
    let mut children = Vec::new();
    let mut gw = Command::new(insitu_e2e::insitu_bin())
        .args(["gateway", "--config"])
        .arg(&gw_conf)
        .env_remove("INSITU_ROOT_ACCESS_KEY")
        .env_remove("INSITU_CLUSTER_SECRET")
        .env("INSITU_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(gw.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("ready"), "{line}");
    children.push(gw);
    for i in 0..2 {
        let conf = dir.path().join(format!("node{i}.toml"));
        std::fs::write(
            &conf,
            format!(
                "id = \"n{i}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\ngateway = \"{endpoint}\"\ncluster_secret = \"s3cr3t-for-the-test\"\nheartbeat_ms = 200\n",
                dir.path().join(format!("n{i}")).display()
            ),
        )
        .unwrap();
        children.push(
            Command::new(insitu_e2e::insitu_bin())
                .args(["node", "--config"])
                .arg(&conf)
                .env_remove("INSITU_CLUSTER_SECRET")
                .env("INSITU_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let admin = |args: &[&str]| {
        Command::new(insitu_e2e::insitu_bin())
            .args(["admin", "--endpoint", &endpoint])
            .args(args)
            .env("INSITU_ROOT_ACCESS_KEY", insitu_e2e::ROOT_KEY)
            .env("INSITU_ROOT_SECRET_KEY", insitu_e2e::ROOT_SECRET)
            .output()
            .unwrap()
    };
    let both_up = wait_until(Duration::from_secs(15), || {
        let out = admin(&["nodes"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|x| x["state"] == "up"))
    });
    let result = async {
        assert!(both_up, "both nodes registered by heartbeat");
        let out = admin(&["tenant", "create", "conf"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t: insitu_e2e::Tenant = serde_json::from_slice(&out.stdout).unwrap();
        let c = RawClient::new(&endpoint, &t);
        c.create_bucket("conf-bucket").await.unwrap();
        let r = c
            .send("PUT", "/conf-bucket/k", &[], &[], b"configured".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .send("GET", "/conf-bucket/k", &[], &[], vec![])
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"configured");
        // Both nodes hold a replica.
        for i in 0..2 {
            let mut n = 0;
            for e in walkdir(&dir.path().join(format!("n{i}/blobs"))) {
                if e.extension().is_none() {
                    n += 1;
                }
            }
            assert_eq!(n, 1, "node n{i} holds one replica");
        }
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returning_node_keeps_copies_that_had_no_replacement() {
    // Two nodes, R=2: when one dies there is nowhere to repair to, so its
    // copies must stay listed and must survive its return.
    let mut cluster = Cluster::start_with_args(2, Some(2), FAST).expect("cluster");
    let t = cluster.create_tenant("keep").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("keep");
    c.create_bucket(&bucket).await.unwrap();
    for i in 0..10 {
        let key = format!("k{i}-{}", 1000 + i);
        assert_eq!(
            c.send(
                "PUT",
                &format!("/{bucket}/{key}"),
                &[],
                &[],
                content_for(&key, size_in_key(&key))
            )
            .await
            .unwrap()
            .status(),
            200
        );
    }
    cluster.kill9_node("node-1");
    assert!(wait_until(Duration::from_secs(15), || cluster
        .node_state("node-1")
        .as_deref()
        == Some("down")));
    tokio::time::sleep(Duration::from_secs(2)).await; // a few repair passes
    cluster.start_node("node-1", &[]).unwrap();
    assert!(wait_until(Duration::from_secs(15), || cluster
        .node_state("node-1")
        .as_deref()
        == Some("up")));
    tokio::time::sleep(Duration::from_secs(4)).await; // the returning node is swept
    let on_node1 = cluster
        .blob_copies()
        .values()
        .filter(|n| n.iter().any(|x| x == "node-1"))
        .count();
    assert_eq!(on_node1, 10, "node-1 kept every copy");
    // The other node dies: node-1 alone serves everything.
    cluster.kill9_node("node-0");
    for i in 0..10 {
        let key = format!("k{i}-{}", 1000 + i);
        let r = c
            .send("GET", &format!("/{bucket}/{key}"), &[], &[], vec![])
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{key}");
        assert!(
            r.bytes().await.unwrap().as_ref() == content_for(&key, size_in_key(&key)).as_slice()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_upload_completes_after_its_node_dies() {
    let cluster = Cluster::start_with_args(4, Some(2), FAST).expect("cluster");
    let t = cluster.create_tenant("mpha").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("mpha");
    c.create_bucket(&bucket).await.unwrap();
    let key = format!("/{bucket}/assembled");
    let body = c
        .send("POST", &key, &[("uploads", "")], &[], vec![])
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let upload_id = body
        .split("<UploadId>")
        .nth(1)
        .unwrap()
        .split("</UploadId>")
        .next()
        .unwrap()
        .to_string();
    let p1 = content_for("p1", 5 * 1024 * 1024);
    let p2 = content_for("p2", 4321);
    let mut etags = Vec::new();
    for (n, data) in [("1", &p1), ("2", &p2)] {
        let r = c
            .send(
                "PUT",
                &key,
                &[("partNumber", n), ("uploadId", &upload_id)],
                &[],
                data.clone(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        etags.push(r.headers()["etag"].to_str().unwrap().to_string());
    }
    // Kill one node that holds the parts, and wait for repair.
    let holders = cluster.blob_copies().values().next().unwrap().clone();
    let victim = holders[0].clone();
    cluster.kill9_node(&victim);
    let live = |n: &String| n != &victim;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let copies = cluster.blob_copies();
            copies.len() == 2
                && copies
                    .values()
                    .all(|n| n.iter().filter(|x| live(x)).count() == 2)
        }),
        "parts re-replicated: {:?}",
        cluster.blob_copies()
    );
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part><Part><PartNumber>2</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
        etags[0], etags[1]
    );
    let r = c
        .send(
            "POST",
            &key,
            &[("uploadId", &upload_id)],
            &[],
            xml.into_bytes(),
        )
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let got = c
        .send("GET", &key, &[], &[], vec![])
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut want = p1.clone();
    want.extend_from_slice(&p2);
    assert!(got.as_ref() == want.as_slice(), "assembled object intact");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_node_cannot_rejoin_and_its_blobs_move() {
    let mut cluster = Cluster::start_with_args(3, Some(2), FAST).expect("cluster");
    cluster.start_node("node-x", &[]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || cluster
        .node_state("node-x")
        .as_deref()
        == Some("up")));
    let t = cluster.create_tenant("rm").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("rm");
    c.create_bucket(&bucket).await.unwrap();
    for i in 0..12 {
        assert_eq!(
            c.send(
                "PUT",
                &format!("/{bucket}/o{i}"),
                &[],
                &[],
                vec![i as u8; 3000]
            )
            .await
            .unwrap()
            .status(),
            200
        );
    }
    assert!(
        cluster
            .blob_copies()
            .values()
            .any(|n| n.iter().any(|x| x == "node-x")),
        "node-x got some blobs"
    );
    cluster.admin(&["node", "remove", "node-x"]).unwrap();
    // Still running and heartbeating, but it stays out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.node_state("node-x"),
        None,
        "removed node did not rejoin"
    );
    let moved = wait_until(Duration::from_secs(30), || {
        cluster
            .blob_copies()
            .values()
            .all(|n| n.iter().filter(|x| *x != "node-x").count() == 2)
    });
    assert!(moved, "every blob has 2 copies without node-x");
    for i in 0..12 {
        let r = c
            .send("GET", &format!("/{bucket}/o{i}"), &[], &[], vec![])
            .await
            .unwrap();
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            vec![i as u8; 3000].as_slice()
        );
    }
}
