//! The object store exercised through a real Rust S3 client (object_store).

use futures::TryStreamExt;
use insitu_e2e::{unique, Cluster, RawClient};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

fn client(endpoint: &str, bucket: &str, key: &str, secret: &str) -> impl ObjectStore {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_access_key_id(key)
        .with_secret_access_key(secret)
        .with_region("us-east-1")
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("client")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn object_store_client_round_trips() {
    let cluster = Cluster::start(3).expect("cluster");
    let t = cluster.create_tenant("rusty").expect("tenant");
    let bucket = unique("rust");
    RawClient::new(&cluster.endpoint, &t)
        .create_bucket(&bucket)
        .await
        .expect("bucket");
    let s3 = client(
        &cluster.endpoint,
        &bucket,
        &t.access_key_id,
        &t.secret_access_key,
    );

    // Single PUT, GET, HEAD, ranged GET.
    let small = pattern(100_000, 1);
    let p = Path::from("dir/small.bin");
    s3.put(&p, PutPayload::from(small.clone()))
        .await
        .expect("put");
    let got = s3.get(&p).await.expect("get").bytes().await.expect("body");
    assert_eq!(got.as_ref(), small.as_slice());
    let meta = s3.head(&p).await.expect("head");
    assert_eq!(meta.size, 100_000);
    assert_eq!(
        meta.e_tag.as_deref(),
        Some(
            format!(
                "\"{}\"",
                hex::encode(<md5::Md5 as md5::Digest>::digest(&small))
            )
            .as_str()
        )
    );
    let range = s3.get_range(&p, 10..20).await.expect("range");
    assert_eq!(range.as_ref(), &small[10..20]);

    // Multipart upload through the client's own multipart writer.
    let big = pattern(12 * 1024 * 1024 + 123, 7);
    let mp = Path::from("dir/big.bin");
    let upload = s3.put_multipart(&mp).await.expect("multipart");
    let mut w = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    w.write(&big);
    w.finish().await.expect("complete");
    let got = s3.get(&mp).await.expect("get").bytes().await.expect("body");
    assert_eq!(got.len(), big.len());
    assert!(got.as_ref() == big.as_slice(), "multipart object differs");
    let meta = s3.head(&mp).await.expect("head");
    assert!(
        meta.e_tag.unwrap_or_default().ends_with("-3\""),
        "multipart ETag has the part count"
    );

    // Listing with and without a delimiter.
    for k in ["dir/sub/a", "dir/sub/b", "other/c"] {
        s3.put(&Path::from(k), PutPayload::from_static(b"x"))
            .await
            .expect("put");
    }
    let all: Vec<_> = s3.list(None).try_collect().await.expect("list");
    let mut keys: Vec<String> = all.iter().map(|m| m.location.to_string()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "dir/big.bin",
            "dir/small.bin",
            "dir/sub/a",
            "dir/sub/b",
            "other/c"
        ]
    );
    let d = s3
        .list_with_delimiter(Some(&Path::from("dir")))
        .await
        .expect("list delim");
    let prefixes: Vec<String> = d.common_prefixes.iter().map(ToString::to_string).collect();
    assert_eq!(prefixes, ["dir/sub"]);
    assert_eq!(d.objects.len(), 2);

    // Copy, overwrite, delete.
    s3.copy(&p, &Path::from("copy.bin")).await.expect("copy");
    assert_eq!(
        s3.get(&Path::from("copy.bin"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        small.as_slice()
    );
    s3.put(&p, PutPayload::from_static(b"new"))
        .await
        .expect("overwrite");
    assert_eq!(
        s3.get(&p).await.unwrap().bytes().await.unwrap().as_ref(),
        b"new"
    );
    s3.delete(&p).await.expect("delete");
    assert!(matches!(
        s3.get(&p).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // Another tenant's client is refused.
    let other = cluster.create_tenant("intruder").expect("tenant");
    let s3b = client(
        &cluster.endpoint,
        &bucket,
        &other.access_key_id,
        &other.secret_access_key,
    );
    let err = s3b
        .get(&Path::from("copy.bin"))
        .await
        .expect_err("must be refused");
    assert!(
        err.to_string().contains("403") || err.to_string().contains("AccessDenied"),
        "{err}"
    );
    assert!(s3b
        .put(&Path::from("evil"), PutPayload::from_static(b"x"))
        .await
        .is_err());
    let listed: Result<Vec<_>, _> = s3b.list(None).try_collect().await;
    assert!(listed.is_err());
}
