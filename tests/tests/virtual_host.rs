//! Virtual-hosted-style addressing with `--domain`, next to path style.

use insitu_e2e::sign::{sha256_hex, Signer};
use insitu_e2e::{unique, Cluster, RawClient};

#[tokio::test(flavor = "multi_thread")]
async fn virtual_hosted_and_path_style_reach_the_same_object() {
    let cluster =
        Cluster::start_with_args(2, None, &["--domain", "s3.insitu.test"]).expect("cluster");
    let t = cluster.create_tenant("vhost").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("vh");
    c.create_bucket(&bucket).await.unwrap();
    c.send(
        "PUT",
        &format!("/{bucket}/dir/key.txt"),
        &[],
        &[],
        b"virtual".to_vec(),
    )
    .await
    .unwrap();

    // Connect to 127.0.0.1 but name the bucket in the Host header.
    let host = format!("{bucket}.s3.insitu.test:{}", cluster.port());
    let signer = Signer::new(&t.access_key_id, &t.secret_access_key);
    let signed = signer.sign(
        "GET",
        "/dir/key.txt",
        &[],
        &[("host", &host)],
        &sha256_hex(b""),
        chrono::Utc::now(),
    );
    let mut req = c
        .http
        .get(format!("{}/dir/key.txt", cluster.endpoint))
        .header("host", &host);
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"virtual");

    // Listing the bucket at the virtual host's root.
    let signed = signer.sign(
        "GET",
        "/",
        &[("list-type", "2")],
        &[("host", &host)],
        &sha256_hex(b""),
        chrono::Utc::now(),
    );
    let mut req = c
        .http
        .get(format!("{}/?list-type=2", cluster.endpoint))
        .header("host", &host);
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    assert!(text.contains("<Key>dir/key.txt</Key>"), "{text}");
}
