//! Inputs pinned to versions (the jobs-at-scale issue): an input is
//! resolved when it is added to the version its tenant may read then, and
//! the job reads that version whatever happens to the key afterwards,
//! with garbage collection holding it until the job ends. The real
//! binary, real nodes and containers.

use std::time::Duration;

use insitu_e2e::{job_cli, submit_job, unique, wait_until, Cluster, RawClient};

async fn put(c: &RawClient, path: &str, headers: &[(&str, &str)], body: &[u8]) {
    let r = c
        .send("PUT", path, &[], headers, body.to_vec())
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(
        status,
        200,
        "PUT {path}: {}",
        r.text().await.unwrap_or_default()
    );
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Blob files on the cluster's nodes holding exactly `content`.
fn blob_files_with(cluster: &Cluster, content: &[u8]) -> usize {
    cluster
        .blob_files()
        .into_iter()
        .filter(|(p, size)| {
            *size == content.len() as u64 && std::fs::read(p).is_ok_and(|b| b == content)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_reads_the_versions_pinned_when_its_inputs_were_added() {
    // One node with one task slot: the job's tasks queue behind its first,
    // which waits for the test's go-ahead.
    let cluster = Cluster::start_with_args(1, Some(1), &["--task-slots", "1"]).expect("cluster");
    let t = cluster.create_tenant("pins").expect("tenant");
    let other = cluster.create_tenant("pins-owner").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let o = RawClient::new(&cluster.endpoint, &other);
    let b = unique("pins");
    c.create_bucket(&b).await.unwrap();
    let shared = unique("pins-shared");
    o.create_bucket(&shared).await.unwrap();
    put(&c, &format!("/{b}/in/0-gate"), &[], b"gate").await;
    put(&c, &format!("/{b}/in/1"), &[], b"first one").await;
    put(&c, &format!("/{b}/in/2"), &[], b"first two").await;
    put(
        &o,
        &format!("/{shared}/data"),
        &[("x-amz-acl", "public-read")],
        b"shared at first",
    )
    .await;
    let exec = format!(
        "x=$(cat); if [ \"$x\" = gate ]; then \
         n=0; until mget {b}/go >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 600 ] && exit 9; done; fi; \
         echo \"read $x\""
    );
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
        "inputs": [
            format!("{b}/in/0-gate"), format!("{b}/in/1"), format!("{b}/in/2"),
            format!("{shared}/data"), format!("{b}/in/missing"),
        ],
        "output": format!("{b}/out/"),
    });
    let id = submit_job(&cluster, &t, &spec);

    // A missing input is an error at once, while the job still runs.
    let errors = json_lines(&job_cli(&cluster, &t, &["errors", &id]));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "ResourceNotFoundError", "{errors:?}");
    assert_eq!(errors[0]["input"], format!("{b}/in/missing"));
    // Every input shows the version pinned.
    let inputs = c
        .get_json(&format!("/_insitu/v1/jobs/{id}/inputs"))
        .await
        .unwrap();
    let etag_of = |loc: String| {
        inputs["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["input"] == loc)
            .and_then(|i| i["etag"].as_str().map(str::to_string))
    };
    assert_eq!(
        etag_of(format!("{b}/in/1")),
        Some(md5_hex(b"first one")),
        "{inputs}"
    );
    assert_eq!(
        etag_of(format!("{shared}/data")),
        Some(md5_hex(b"shared at first"))
    );
    assert_eq!(etag_of(format!("{b}/in/missing")), None, "{inputs}");

    // While the job waits: one input is overwritten, another deleted, and
    // the shared one overwritten as private by its owner.
    put(&c, &format!("/{b}/in/1"), &[], b"second one").await;
    let r = c
        .send("DELETE", &format!("/{b}/in/2"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    put(
        &o,
        &format!("/{shared}/data"),
        &[("x-amz-acl", "private")],
        b"SECRET now",
    )
    .await;
    // Past garbage collection's grace (5 s in `insitu dev`): the pinned
    // versions are still on disk.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(blob_files_with(&cluster, b"first one"), 1, "pinned: kept");
    assert_eq!(blob_files_with(&cluster, b"first two"), 1, "pinned: kept");

    put(&c, &format!("/{b}/go"), &[], b"go").await;
    let out = job_cli(&cluster, &t, &["wait", &id]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        status["counters"]["errors"], 1,
        "only the missing input: {status}"
    );
    let read = |loc: String| {
        let c = &c;
        async move {
            let r = c
                .send("GET", &format!("/{loc}"), &[], &[], vec![])
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{loc}");
            r.text().await.unwrap()
        }
    };
    assert_eq!(read(format!("{b}/out/{b}/in/1")).await, "read first one\n");
    assert_eq!(read(format!("{b}/out/{b}/in/2")).await, "read first two\n");
    assert_eq!(
        read(format!("{b}/out/{shared}/data")).await,
        "read shared at first\n",
        "a pinned version stays readable to the job after its ACL tightened"
    );
    // Outputs name the version they came from.
    let outputs = c
        .get_json(&format!("/_insitu/v1/jobs/{id}/outputs"))
        .await
        .unwrap();
    let named = outputs["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["object"] == format!("{b}/out/{b}/in/1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(named["input_etag"], md5_hex(b"first one"), "{outputs}");

    // The job is over: its pins go, and so do the old versions.
    assert!(
        wait_until(Duration::from_secs(30), || {
            blob_files_with(&cluster, b"first one") == 0
                && blob_files_with(&cluster, b"first two") == 0
        }),
        "the pinned versions were collected once the job ended"
    );
}
