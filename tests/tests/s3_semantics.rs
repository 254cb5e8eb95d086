//! Semantics a careful client relies on: signed XML bodies, conditional
//! writes, refused promises, races with bucket deletion, curl's SigV4, and
//! the admin CLI.

use std::process::Command;
use std::time::Duration;

use insitu_e2e::sign::sha256_hex;
use insitu_e2e::{error_code, insitu_bin, unique, Cluster, RawClient, ROOT_KEY, ROOT_SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn signed_xml_bodies_and_conditional_writes() {
    let (_cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "sem", "sem").await;
    for k in ["keep1", "keep2"] {
        assert_eq!(
            c.send("PUT", &format!("/{bucket}/{k}"), &[], &[], b"x".to_vec())
                .await
                .unwrap()
                .status(),
            200
        );
    }

    // A DeleteObjects body that is not the one that was signed.
    let signed_body = b"<Delete><Object><Key>keep1</Key></Object></Delete>".to_vec();
    let sent_body = b"<Delete><Object><Key>keep2</Key></Object></Delete>".to_vec();
    let r = c
        .send_signed(
            "POST",
            &format!("/{bucket}"),
            &[("delete", "")],
            &[],
            sent_body,
            &sha256_hex(&signed_body),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "XAmzContentSHA256Mismatch"
    );
    assert_eq!(
        c.send("HEAD", &format!("/{bucket}/keep2"), &[], &[], vec![])
            .await
            .unwrap()
            .status(),
        200
    );

    // DeleteObjects on a missing bucket is a 404 for the whole request.
    let r = c
        .send(
            "POST",
            "/no-such-bucket-sem",
            &[("delete", "")],
            &[],
            signed_body.clone(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // If-None-Match: * creates only.
    let path = format!("/{bucket}/keep1");
    let r = c
        .send(
            "PUT",
            &path,
            &[],
            &[("if-none-match", "*")],
            b"new".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/fresh"),
            &[],
            &[("if-none-match", "*")],
            b"new".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // If-Match on a write.
    let r = c
        .send(
            "PUT",
            &path,
            &[],
            &[("if-match", "\"00000000000000000000000000000000\"")],
            b"v2".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let etag = format!("\"{:x}\"", md5_of(b"x"));
    let r = c
        .send("PUT", &path, &[], &[("if-match", &etag)], b"v2".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Promises insitu cannot keep are refused, not ignored.
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/sse"),
            &[],
            &[("x-amz-server-side-encryption", "AES256")],
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    assert_eq!(
        c.send("HEAD", &format!("/{bucket}/sse"), &[], &[], vec![])
            .await
            .unwrap()
            .status(),
        404
    );
    // A canned ACL that means "private" here is accepted.
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/bofc"),
            &[],
            &[("x-amz-acl", "bucket-owner-full-control")],
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A header override that is not a valid header value is refused.
    let r = c
        .send(
            "GET",
            &path,
            &[("response-content-type", "a\r\nb: c")],
            &[],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

fn md5_of(data: &[u8]) -> u128 {
    use md5::Digest;
    u128::from_be_bytes(md5::Md5::digest(data).into())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_put_never_lands_in_a_recreated_bucket_of_another_tenant() {
    let cluster = Cluster::start(2).expect("cluster");
    let alice = cluster.create_tenant("alice").expect("tenant");
    let bob = cluster.create_tenant("bob").expect("tenant");
    let a = RawClient::new(&cluster.endpoint, &alice);
    let b = RawClient::new(&cluster.endpoint, &bob);
    let bucket = unique("race");
    a.create_bucket(&bucket).await.unwrap();

    // Alice starts a PUT and sends half of it.
    let path = format!("/{bucket}/secret");
    let mut stream = a.start_raw_put(&path, 11).await.unwrap();
    stream.write_all(b"alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The bucket changes hands meanwhile.
    assert_eq!(
        a.send("DELETE", &format!("/{bucket}"), &[], &[], vec![])
            .await
            .unwrap()
            .status(),
        204
    );
    b.create_bucket(&bucket).await.unwrap();

    stream.write_all(b" secret").await.unwrap();
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response[..n]);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(text.contains("NoSuchBucket"), "{text}");
    let list = b
        .send(
            "GET",
            &format!("/{bucket}"),
            &[("list-type", "2")],
            &[],
            vec![],
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!list.contains("<Key>"), "bob's bucket is empty: {list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_sigv4_and_the_admin_cli() {
    let (cluster, t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "curly", "curl").await;
    c.send(
        "PUT",
        &format!("/{bucket}/hello.txt"),
        &[],
        &[],
        b"hello curl".to_vec(),
    )
    .await
    .unwrap();

    let user = format!("{}:{}", t.access_key_id, t.secret_access_key);
    let curl = |url: String| {
        Command::new("curl")
            .args([
                "-sS",
                "--fail-with-body",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &user,
                &url,
            ])
            .output()
            .expect("curl is installed")
    };
    let out = curl(format!("{}/{bucket}/hello.txt", cluster.endpoint));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.stdout, b"hello curl");
    let out = curl(format!("{}/_insitu/v1/whoami", cluster.endpoint));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["tenant"], "curly");

    // A second key for the tenant works like the first.
    let admin = |args: &[&str]| {
        Command::new(insitu_bin())
            .args(["admin", "--endpoint", &cluster.endpoint])
            .args(args)
            .env("INSITU_ROOT_ACCESS_KEY", ROOT_KEY)
            .env("INSITU_ROOT_SECRET_KEY", ROOT_SECRET)
            .output()
            .unwrap()
    };
    let out = admin(&["key", "create", "curly"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: insitu_e2e::Tenant = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(key.tenant, "curly");
    assert_ne!(key.access_key_id, t.access_key_id);
    let c2 = RawClient::new(&cluster.endpoint, &key);
    let r = c2
        .send("GET", &format!("/{bucket}/hello.txt"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello curl");

    // Errors are one line on stderr and a failing exit status.
    let out = admin(&["key", "create", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ResourceNotFound"), "{err}");
    let out = admin(&["tenant", "create", "curly"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Conflict"));
    // A tenant's own key is not root.
    let out = Command::new(insitu_bin())
        .args(["admin", "--endpoint", &cluster.endpoint, "tenant", "list"])
        .env("INSITU_ROOT_ACCESS_KEY", &t.access_key_id)
        .env("INSITU_ROOT_SECRET_KEY", &t.secret_access_key)
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("AccessDenied"));

    let out = admin(&["nodes"]);
    assert!(out.status.success());
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2);
}
