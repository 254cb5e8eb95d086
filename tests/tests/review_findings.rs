//! The holes an outside review found, each tried again as it was found:
//! against a real cluster, by a tenant or an outsider doing what the
//! review did.

use std::process::Command;
use std::time::Duration;

use insitu_e2e::{
    cluster_with_bucket, error_code, insitu_bin, run_job, sign, unique, wait_until, Cluster,
    RawClient,
};

/// A tar header claiming `size` bytes in base-256, with a valid checksum
/// and nothing after it: the review's 512-byte tarball.
fn huge_entry_header(size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..9].copy_from_slice(b"layer.tar");
    h[100..108].copy_from_slice(b"0000644\0");
    h[124] = 0x80;
    h[128..136].copy_from_slice(&size.to_be_bytes());
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tarball_claiming_a_huge_entry_fails_its_job_and_no_node_dies() {
    let cluster = Cluster::start_with(2, Some(2)).expect("cluster");
    let t = cluster.create_tenant("tarbomb").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("tarbomb");
    c.create_bucket(&bucket).await.unwrap();
    let put = |key: &'static str, body: Vec<u8>| {
        let (c, bucket) = (&c, &bucket);
        async move {
            let r = c
                .send("PUT", &format!("/{bucket}/{key}"), &[], &[], body)
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    put("bomb.tar", huge_entry_header(1 << 62)).await;
    put("in", b"x\n".to_vec()).await;
    let (status, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": { "object": format!("{bucket}/bomb.tar") }, "exec": "wc -l" }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/o/"),
        }),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "ImageNotFoundError", "{errors:?}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("refused"),
        "{errors:?}"
    );
    // A refused archive is the tenant's error: not retried elsewhere.
    assert_eq!(status["counters"]["retries"], 0, "{status}");
    // Both replica holders are alive and serve the next job.
    for id in ["node-0", "node-1"] {
        assert_eq!(cluster.node_state(id).as_deref(), Some("up"), "{id}");
    }
    let (status, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "wc -l" }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/after/"),
        }),
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(status["counters"]["outputs"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_amz_headers_are_refused_not_obeyed() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "headers", "headers").await;
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/secret"),
            &[],
            &[],
            b"TOP SECRET".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let http = reqwest::Client::new();
    // A presigned PUT URL, given to someone to upload one object.
    let url = c.signer.presign(
        &cluster.endpoint,
        "PUT",
        &format!("/{bucket}/upload"),
        600,
        chrono::Utc::now(),
    );
    // Its holder adds headers nobody signed: a copy of the owner's private
    // object, made public.
    let r = http
        .put(&url)
        .header("x-amz-copy-source", format!("{bucket}/secret"))
        .header("x-amz-acl", "public-read")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert_eq!(error_code(&body), "AccessDenied", "{body}");
    assert!(body.contains("x-amz-copy-source"), "{body}");
    let anonymous = http
        .get(format!("{}/{bucket}/upload", cluster.endpoint))
        .send()
        .await
        .unwrap();
    assert_ne!(anonymous.status(), 200);
    assert!(!anonymous.text().await.unwrap().contains("TOP SECRET"));
    // The URL does what it was made for, and SDKs' unsigned user agent
    // header changes nothing.
    let r = http
        .put(&url)
        .header("x-amz-user-agent", "aws-sdk-test")
        .body("uploaded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A header-signed request that gained an unsigned x-amz-* header on
    // the way (a replay within the skew window) is refused too.
    let host = c.host();
    let signed = c.signer.sign(
        "PUT",
        &format!("/{bucket}/replayed"),
        &[],
        &[("host", host.as_str())],
        &sign::sha256_hex(b""),
        chrono::Utc::now(),
    );
    let mut req = http.put(format!("{}/{bucket}/replayed", cluster.endpoint));
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let r = req
        .header("x-amz-copy-source", format!("{bucket}/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.text().await.unwrap()), "AccessDenied");
    let r = c
        .send("GET", &format!("/{bucket}/replayed"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_urls_are_bound_to_their_date_region_and_query() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "presign", "presign").await;
    for key in ["a b", "a+b"] {
        let r = c
            .send("PUT", &format!("/{bucket}/{key}"), &[], &[], b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let http = reqwest::Client::new();
    let now = chrono::Utc::now();
    // Signed for another region: not valid here.
    let mut other = sign::Signer::new(&c.signer.access_key, &c.signer.secret);
    other.region = "eu-west-1".into();
    let url = other.presign(
        &cluster.endpoint,
        "GET",
        &format!("/{bucket}/a b"),
        600,
        now,
    );
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert_eq!(error_code(&body), "AuthorizationQueryParametersError");
    assert!(body.contains("region"), "{body}");
    // X-Amz-Date on another day than the credential's scope.
    let url = c.signer.presign(
        &cluster.endpoint,
        "GET",
        &format!("/{bucket}/a b"),
        600,
        now,
    );
    let date = now.format("%Y%m%d").to_string();
    let yesterday = (now - chrono::Duration::days(1))
        .format("%Y%m%d")
        .to_string();
    let moved = url.replacen(
        &format!("X-Amz-Date={date}"),
        &format!("X-Amz-Date={yesterday}"),
        1,
    );
    assert_ne!(moved, url);
    let r = http.get(&moved).send().await.unwrap();
    assert!(r.status() == 400 || r.status() == 403, "{}", r.status());
    // The URL as made works.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A signed listing of prefix "a+b" (sent as %2B): swapping in a raw
    // '+', which the gateway reads as a space, breaks the signature
    // instead of listing "a b".
    let host = c.host();
    let query = [("list-type", "2"), ("prefix", "a+b")];
    let signed = c.signer.sign(
        "GET",
        &format!("/{bucket}"),
        &query,
        &[("host", host.as_str())],
        &sign::sha256_hex(b""),
        chrono::Utc::now(),
    );
    for (wire, ok) in [("prefix=a%2Bb", true), ("prefix=a+b", false)] {
        let mut req = http.get(format!("{}/{bucket}?list-type=2&{wire}", cluster.endpoint));
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        if ok {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("<Key>a+b</Key>"), "{body}");
            assert!(!body.contains("<Key>a b</Key>"), "{body}");
        } else {
            assert_eq!(status, 403, "{body}");
            assert_eq!(error_code(&body), "SignatureDoesNotMatch");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reducer_reads_the_pinned_version_never_one_overwritten_as_private() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let owner = cluster.create_tenant("owner").expect("tenant");
    let reader = cluster.create_tenant("reader").expect("tenant");
    let o = RawClient::new(&cluster.endpoint, &owner);
    let r = RawClient::new(&cluster.endpoint, &reader);
    let shared = unique("shared");
    o.create_bucket(&shared).await.unwrap();
    let mine = unique("mine");
    r.create_bucket(&mine).await.unwrap();
    let r1 = o
        .send(
            "PUT",
            &format!("/{shared}/data"),
            &[],
            &[("x-amz-acl", "public-read")],
            b"public line\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r1.status(), 200);
    // The reader's own first input holds the reducer back: it reads
    // nothing for a few seconds, and 2 MiB do not fit in a pipe.
    let r2 = r
        .send(
            "PUT",
            &format!("/{mine}/first"),
            &[],
            &[],
            b"mine\n".repeat(400_000),
        )
        .await
        .unwrap();
    assert_eq!(r2.status(), 200);
    let spec = serde_json::json!({
        "phases": [{ "type": "reduce", "image": "insitu-test/busybox:latest",
                     "exec": "sleep 4; grep -c -e SECRET -e public || true" }],
        "inputs": [format!("{mine}/first"), format!("{shared}/data")],
        "output": format!("{mine}/out/"),
    });
    let spec_file = cluster.dir.path().join("reduce.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let mut run = Command::new(insitu_bin());
    run.args(["job", "run", "--watch", "--spec"])
        .arg(&spec_file)
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &reader.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &reader.secret_access_key);
    let job = tokio::task::spawn_blocking(move || run.output().expect("insitu job run"));
    // While the reducer sleeps, the owner makes the object private, with
    // other content.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r3 = o
        .send(
            "PUT",
            &format!("/{shared}/data"),
            &[],
            &[("x-amz-acl", "private")],
            b"SECRET line\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r3.status(), 200);
    let out = job.await.unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let id = status["id"].as_str().unwrap().to_string();
    let errors: Vec<serde_json::Value> =
        String::from_utf8_lossy(&insitu_e2e::job_cli(&cluster, &reader, &["errors", &id]).stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    assert_eq!(status["state"], "done", "{status}");
    // The input was pinned when it was added, to the public version the
    // reader could read then: the job reads that version, as a snapshot,
    // and never the private one written after.
    assert!(errors.is_empty(), "{errors:?}");
    let outputs = insitu_e2e::job_cli(
        &cluster,
        &reader,
        &["outputs", status["id"].as_str().unwrap()],
    );
    let outputs = String::from_utf8_lossy(&outputs.stdout).into_owned();
    let out = outputs.lines().next().expect("one output");
    let text = r
        .send("GET", &format!("/{out}"), &[], &[], vec![])
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.trim(), "1", "only the public line: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_volume_is_held_to_the_scratch_quota() {
    let tag = format!("insitu-test/volume:{}", unique("v"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM insitu-test/busybox:latest\nVOLUME /data\nHEALTHCHECK --interval=1s CMD touch /data/healthy\nSTOPSIGNAL SIGUSR1\n",
    )
    .unwrap();
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .output()
        .expect("docker build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let volumes_before = docker_volumes();
    let (cluster, t, c, bucket) = cluster_with_bucket(1, "volume", "volume").await;
    let r = c
        .send("PUT", &format!("/{bucket}/in"), &[], &[], b"x\n".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": tag, "disk_mb": 8,
                         "exec": "dd if=/dev/zero of=/data/fill bs=1M count=64" }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/o/"),
        }),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "TaskKilledError", "{errors:?}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("disk"),
        "{errors:?}"
    );
    // The engine made no volume for it on the host's disk.
    assert_eq!(docker_volumes(), volumes_before);
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}

fn docker_volumes() -> Vec<String> {
    let out = Command::new("docker")
        .args(["volume", "ls", "-q"])
        .output()
        .expect("docker volume ls");
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_routed_by_key_is_bounded() {
    let (cluster, t, c, bucket) = cluster_with_bucket(1, "longline", "longline").await;
    let r = c
        .send("PUT", &format!("/{bucket}/in"), &[], &[], b"x\n".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [
                { "type": "map", "image": "insitu-test/busybox:latest",
                  "exec": "printf 'k\\t'; head -c 3145728 /dev/zero | tr '\\0' a" },
                { "type": "reduce", "image": "insitu-test/busybox:latest", "count": 2,
                  "partition": "key", "exec": "wc -c" }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/o/"),
        }),
    );
    let long = errors
        .iter()
        .find(|e| e["phase"] == 0)
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(long["code"], "UserTaskError", "{long}");
    assert!(
        long["message"].as_str().unwrap().contains("longer than"),
        "{long}"
    );
}

#[test]
fn an_empty_or_short_cluster_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for secret in ["", "short"] {
        for args in [
            vec!["gateway", "--listen", "127.0.0.1:0"],
            vec!["node", "--id", "n", "--listen", "127.0.0.1:0"],
        ] {
            let mut child = Command::new(insitu_bin())
                .args(&args)
                .arg("--data-dir")
                .arg(dir.path().join(unique("d")))
                .env("INSITU_CLUSTER_SECRET", secret)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("insitu");
            let exited = wait_until(Duration::from_secs(10), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
            }
            let out = child.wait_with_output().expect("insitu");
            assert!(exited, "{args:?} started with the secret {secret:?}");
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("cluster secret"), "{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rogue_heartbeat_cannot_take_a_node_id_or_get_blobs() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "rogue", "rogue").await;
    let secret = cluster.cluster_secret().unwrap();
    let http = reqwest::Client::new();
    let beat = |id: &str, capacity: u64, key: Option<&str>| {
        serde_json::json!({
            "node_id": id, "addr": "http://127.0.0.1:9",
            "usage": { "capacity_bytes": capacity, "used_bytes": 0, "free_bytes": capacity, "blob_count": 0 },
            "corrupt": [], "load": 0, "node_key": key,
        })
    };
    let url = format!("{}/_insitu/v1/internal/heartbeat", cluster.endpoint);
    // Someone with the secret claims the real node's id, to point it at
    // an address of theirs: refused.
    for key in [None, Some("not-the-nodes-key")] {
        let r = http
            .post(&url)
            .bearer_auth(&secret)
            .json(&beat("node-0", 1 << 40, key))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());
    }
    assert_eq!(cluster.node_state("node-0").as_deref(), Some("up"));
    // A new "node" that reports no capacity joins, but gets no blob.
    let r = http
        .post(&url)
        .bearer_auth(&secret)
        .json(&beat("rogue", 0, Some("k")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    for i in 0..20 {
        let r = c
            .send("PUT", &format!("/{bucket}/k{i}"), &[], &[], b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    assert!(cluster
        .blob_copies()
        .values()
        .all(|nodes| nodes.iter().all(|n| n == "node-0")));
    // And without the secret nothing is heard at all.
    let r = http
        .post(&url)
        .bearer_auth("")
        .json(&beat("rogue-2", 1 << 40, Some("k")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_that_cannot_be_sent_back_is_refused() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "meta", "meta").await;
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}"),
            &[("acl", "")],
            &[("x-amz-acl", "public-read-write")],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A browser form: a field name with a space becomes metadata.
    let boundary = "----insitu-boundary";
    let mut form = String::new();
    for (name, value) in [("key", "posted"), ("x-amz-meta-a b", "1")] {
        form.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    form.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        "y".repeat(1200)
    ));
    let r = reqwest::Client::new()
        .post(format!("{}/{bucket}", cluster.endpoint))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "InvalidArgument");
    let r = c
        .send("GET", &format!("/{bucket}/posted"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_uploads_by_a_prefix_longer_than_a_key_answers() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "uploads", "uploads").await;
    let r = c
        .send(
            "POST",
            &format!("/{bucket}/a"),
            &[("uploads", "")],
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for prefix in ["a\0b", "a\0", "a/b"] {
        let r = c
            .send(
                "GET",
                &format!("/{bucket}"),
                &[("uploads", ""), ("prefix", prefix), ("delimiter", "/")],
                &[],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{prefix:?}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("<Upload>"), "{prefix:?}: {body}");
    }
    // The gateway is still there.
    assert!(wait_until(Duration::from_secs(2), || {
        std::net::TcpStream::connect(cluster.endpoint.trim_start_matches("http://")).is_ok()
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (cluster, _t, _c, _bucket) = cluster_with_bucket(1, "modes", "modes").await;
    let mode = |p: std::path::PathBuf| {
        std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = cluster.data_dir();
    assert_eq!(mode(data.clone()), 0o700);
    assert_eq!(mode(data.join("cluster-secret")), 0o600);
    assert_eq!(mode(cluster.node_dir("node-0").join("node-key")), 0o600);
    // Root credentials the gateway generates for itself.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let mut gw = Command::new(insitu_bin())
        .args(["gateway", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("INSITU_CLUSTER_SECRET", "a-cluster-secret-long-enough")
        .env_remove("INSITU_ROOT_ACCESS_KEY")
        .env_remove("INSITU_ROOT_SECRET_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("insitu gateway");
    let made = wait_until(Duration::from_secs(20), || {
        data.join("root-credentials").exists()
    });
    let _ = gw.kill();
    let _ = gw.wait();
    assert!(made, "no root credentials were generated");
    assert_eq!(mode(data.clone()), 0o700);
    assert_eq!(mode(data.join("root-credentials")), 0o600);
}

/// Reads what the server sends on `stream` until it closes it, up to
/// `within`; `None` if it was still open then.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_cannot_hold_the_gateway() {
    use tokio::io::AsyncWriteExt;
    let cluster = Cluster::start_with_args(
        1,
        None,
        &[
            "--http-header-timeout-ms",
            "1000",
            "--http-body-idle-ms",
            "1000",
            "--max-connections",
            "4",
        ],
    )
    .expect("cluster");
    let t = cluster.create_tenant("slow").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("slow");
    c.create_bucket(&bucket).await.unwrap();
    let addr = c.host();
    // Slowloris: a request head that never ends is cut off.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n")
        .await
        .unwrap();
    assert!(
        until_closed(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "a request head that never ended was kept open"
    );
    // A body trickled and then stopped: the request fails and nothing is
    // stored.
    let mut s = c
        .start_raw_put(&format!("/{bucket}/trickle"), 100)
        .await
        .unwrap();
    s.write_all(b"0123456789").await.unwrap();
    assert!(
        until_closed(&mut s, Duration::from_secs(10))
            .await
            .is_some(),
        "a stalled body was waited for"
    );
    let r = c
        .send("GET", &format!("/{bucket}/trickle"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Connections past the cap wait; once others close they are served.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let health = format!("{}/_insitu/v1/health", cluster.endpoint);
    let mut served_while_full = false;
    // The idle connections are cut after 1 s; until then nothing more is
    // served (at least one attempt in that window fails).
    for _ in 0..2 {
        if http.get(&health).send().await.is_ok() {
            served_while_full = true;
        }
    }
    assert!(!served_while_full, "a connection past the cap was served");
    drop(idle);
    assert!(wait_until(Duration::from_secs(10), || {
        std::process::Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "-m", "2", &health])
            .status()
            .is_ok_and(|s| s.success())
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_callers_get_no_body_read_before_they_are_refused() {
    use tokio::io::AsyncWriteExt;
    let (cluster, _t, _c, bucket) = cluster_with_bucket(1, "anon", "anon").await;
    let addr = cluster.endpoint.trim_start_matches("http://").to_string();
    // A DeleteObjects and an admin call declaring large bodies, sending
    // none: answered 403 at once, without waiting for the body.
    for head in [
        format!(
            "POST /{bucket}?delete HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 2000000\r\n\r\n"
        ),
        format!(
            "POST /_insitu/v1/tenants HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 1000000\r\n\r\n"
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt;
            s.read(&mut buf).await.unwrap_or(0)
        })
        .await
        .unwrap_or_else(|_| panic!("no answer before the body to {head:?}"));
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 403"), "{head:?}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_id_prefix_does_not_reach_another_tenants_image() {
    let cluster = Cluster::start_with(1, None).expect("cluster");
    let owner = cluster.create_tenant("imgowner").expect("tenant");
    let other = cluster.create_tenant("imgother").expect("tenant");
    let o = RawClient::new(&cluster.endpoint, &owner);
    let x = RawClient::new(&cluster.endpoint, &other);
    // The owner's private image, which exists only as their object.
    let tag = format!("insitu-test/private:{}", unique("p"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM insitu-test/busybox:latest\nRUN echo PRIVATE > /marker\n",
    )
    .unwrap();
    let docker = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    docker(&["build", "-q", "-t", &tag, dir.path().to_str().unwrap()]);
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
    let tar = dir.path().join("image.tar");
    docker(&["save", "-o", tar.to_str().unwrap(), &tag]);
    docker(&["rmi", &tag]);
    let (ob, xb) = (unique("imgowner"), unique("imgother"));
    o.create_bucket(&ob).await.unwrap();
    x.create_bucket(&xb).await.unwrap();
    for (c, b) in [(&o, &ob), (&x, &xb)] {
        let r = c
            .send("PUT", &format!("/{b}/in"), &[], &[], b"x\n".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = o
        .send(
            "PUT",
            &format!("/{ob}/image.tar"),
            &[],
            &[],
            std::fs::read(&tar).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, errors) = run_job(
        &cluster,
        &owner,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": { "object": format!("{ob}/image.tar") }, "exec": "cat /marker" }],
            "inputs": [format!("{ob}/in")],
            "output": format!("{ob}/o/"),
        }),
    );
    assert!(errors.is_empty(), "{errors:?}");
    // The other tenant names the start of that image's id.
    let prefix = &id.trim_start_matches("sha256:")[..11];
    let (status, errors) = run_job(
        &cluster,
        &other,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": prefix, "exec": "cat /marker" }],
            "inputs": [format!("{xb}/in")],
            "output": format!("{xb}/o/"),
        }),
    );
    assert_eq!(status["counters"]["outputs"], 0, "{status}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "ImageNotFoundError", "{errors:?}");
}

/// A task that ends leaving a background process with its stdout open,
/// while another task of the same job runs on in the same container: the
/// process is gone before the node reads the output, so nothing written
/// after the task ended reaches the stored output.
async fn a_left_process_cannot_change_an_ended_tasks_output(runtime: Option<&str>) {
    let cluster = Cluster::start_with_args(1, Some(1), &["--task-slots", "2"]).expect("cluster");
    let t = cluster.create_tenant("lingerer").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("linger");
    c.create_bucket(&bucket).await.unwrap();
    for (key, body) in [("quick", "quick\n"), ("slow", "slow\n")] {
        let r = c
            .send("PUT", &format!("/{bucket}/{key}"), &[], &[], body.into())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The quick task opens its stdout a second time (fd 3, at offset 0)
    // and leaves a process that waits, spinning, until the node starts
    // sealing the task's output (the file stops being writable). Then it
    // at once overwrites the start of the file through fd 3, says so in
    // the container's shared /tmp, and goes on overwriting and appending
    // until it is killed. So its writes come after the node saw the task
    // end, however slow the machine is, and as early as a process can
    // make them; neither a cut at the old size nor a kill that is quick
    // enough would hide them. The slow task waits until the quick one has
    // run, then (up to 8 s) until its own stdout is the only one open to
    // writes (the quick task's is closed or gone), and a second more for
    // the late write, so the container stays busy
    // throughout (the sweep of strays, once no task runs, would hide the
    // hole).
    let exec = r#"read w
if [ "$w" = quick ]; then
  exec 3>/proc/self/fd/1
  echo on-time
  touch /tmp/quick-ran
  setsid sh -c 'while [ -w /proc/self/fd/1 ]; do :; done; echo LATE >&3; echo x >/tmp/late-write; while :; do echo WRITTEN-AFTER-THE-END; echo LATE >&3; done' &
else
  i=0; while [ ! -e /tmp/quick-ran ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
  [ -e /tmp/quick-ran ] && echo saw-quick
  i=0; while [ $i -lt 80 ]; do
    n=0; for f in /insitu/out/*/stdout; do [ -w "$f" ] && n=$((n+1)); done
    [ $n -lt 2 ] && break
    sleep 0.1; i=$((i+1))
  done
  i=0; while [ ! -e /tmp/late-write ] && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done
  if [ -e /tmp/late-write ]; then echo saw-late; fi
fi"#;
    let mut phase = serde_json::json!({ "type": "map", "image": "insitu-test/busybox:latest",
                                        "exec": exec });
    if let Some(r) = runtime {
        phase["runtime"] = r.into();
    }
    let get = |key: String| {
        let c = &c;
        async move {
            let r = c.send("GET", &key, &[], &[], Vec::new()).await.unwrap();
            assert_eq!(r.status(), 200, "{key}");
            r.text().await.unwrap()
        }
    };
    // Whether the left process got to write before it was killed: it
    // races the node's kill, so the job runs again (up to 4 times) until
    // it did once.
    let mut wrote_late = false;
    for attempt in 0..4 {
        let (status, errors) = run_job(
            &cluster,
            &t,
            &serde_json::json!({
                "phases": [phase],
                "inputs": [format!("{bucket}/quick"), format!("{bucket}/slow")],
                "output": format!("{bucket}/o{attempt}/"),
            }),
        );
        assert_eq!(status["state"], "done", "{status} {errors:?}");
        assert!(errors.is_empty(), "{errors:?}");
        // The two tasks overlapped in one container: the probe means
        // something.
        let slow = get(format!("/{bucket}/o{attempt}/{bucket}/slow")).await;
        assert_eq!(slow.lines().next(), Some("saw-quick"), "{slow}");
        assert_eq!(
            get(format!("/{bucket}/o{attempt}/{bucket}/quick")).await,
            "on-time\n"
        );
        // Not in any stored blob either (past the recorded size, a write
        // would not show in a GET).
        for (path, _) in cluster.blob_files() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains("WRITTEN-AFTER-THE-END") && !text.contains("LATE"),
                "{} was changed after its task ended",
                path.display()
            );
        }
        wrote_late = slow.lines().any(|l| l == "saw-late");
        eprintln!("attempt {attempt}: the left process wrote after the seal began: {wrote_late}");
        if wrote_late {
            break;
        }
    }
    // Said, not asserted: on a busy machine the node may win every time.
    eprintln!("the left process wrote after the seal began in some run: {wrote_late}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_left_process_cannot_change_an_ended_tasks_output_under_runc() {
    a_left_process_cannot_change_an_ended_tasks_output(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_left_process_cannot_change_an_ended_tasks_output_under_gvisor() {
    if !insitu_e2e::gvisor_installed() {
        eprintln!("runsc is not registered with Docker here; gVisor is covered where it is");
        return;
    }
    a_left_process_cannot_change_an_ended_tasks_output(Some("runsc")).await;
}

/// Without a tenant policy, a task may ask only for the cluster's default
/// maximum (configurable with `--task-max-*`), and the scratch space it
/// asks for must fit in what its node has free.
#[tokio::test(flavor = "multi_thread")]
async fn task_resources_are_bounded_without_a_policy_and_scratch_fits_the_node() {
    let cluster =
        Cluster::start_with_args(1, Some(1), &["--task-max-memory-mb", "512"]).expect("cluster");
    let t = cluster.create_tenant("greedy").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("greedy");
    c.create_bucket(&bucket).await.unwrap();
    let r = c
        .send("PUT", &format!("/{bucket}/in"), &[], &[], b"x\n".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let submit = |extra: serde_json::Value| {
        let mut phase = serde_json::json!({ "type": "map", "image": "insitu-test/busybox:latest",
                                            "exec": "wc -c" });
        if let (Some(p), Some(e)) = (phase.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        let spec = serde_json::json!({ "phases": [phase], "inputs": [format!("{bucket}/in")],
                                       "output": format!("{bucket}/{}/", unique("o")) });
        let file = cluster.dir.path().join(format!("{}.json", unique("spec")));
        std::fs::write(&file, spec.to_string()).unwrap();
        insitu_e2e::job_cli(&cluster, &t, &["run", "--spec", &file.to_string_lossy()])
    };
    // The flag's maximum, and the built-in ones for the rest.
    for (field, value, max) in [
        ("memory_mb", 1024, "512"),
        ("disk_mb", 20 * 1024, "10240"),
        ("output_mb", 20 * 1024, "10240"),
    ] {
        let out = submit(serde_json::json!({ field: value }));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{field}: {err}");
        assert!(
            err.contains("InvalidArgumentError")
                && err.contains(&format!("phases[0].{field}"))
                && err.contains(max),
            "{field}: {err}"
        );
    }
    // An operator's policy may allow more: then the node's free space
    // bounds the scratch space (1 TiB, more than this machine's disk).
    cluster
        .admin(&[
            "tenant",
            "policy",
            "greedy",
            "--set",
            "--max-disk-mb",
            "1048576",
        ])
        .expect("policy");
    let (status, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                         "exec": "wc -c", "disk_mb": 1_048_576 }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/huge/"),
        }),
    );
    assert_eq!(status["counters"]["outputs"], 0, "{status}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("no room"),
        "{errors:?}"
    );
    // Within the room, the same tenant's task runs.
    let (status, errors) = run_job(
        &cluster,
        &t,
        &serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                         "exec": "wc -c", "disk_mb": 64 }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/fits/"),
        }),
    );
    assert_eq!(status["counters"]["outputs"], 1, "{status} {errors:?}");
}
