//! Bad input gets a precise S3 error and leaves state unchanged.

use std::time::Duration;

use insitu_e2e::sign::{chunked_body, sha256_hex, Signer};
use insitu_e2e::{error_code, RawClient, Tenant};
use tokio::io::AsyncWriteExt;

async fn expect(resp: reqwest::Response, status: u16, code: &str) {
    let got = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "status for {code}: {body}");
    if !code.is_empty() {
        assert_eq!(error_code(&body), code, "body: {body}");
    }
}

async fn head_status(c: &RawClient, path: &str) -> u16 {
    c.send("HEAD", path, &[], &[], vec![])
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn with_secret(t: &Tenant, secret: &str) -> Tenant {
    Tenant {
        secret_access_key: secret.into(),
        ..t.clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_failures() {
    let (cluster, t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "auth", "auth").await;
    let key = format!("/{bucket}/k");
    expect(
        c.send("PUT", &key, &[], &[], b"v1".to_vec()).await.unwrap(),
        200,
        "",
    )
    .await;

    let wrong = RawClient::new(&cluster.endpoint, &with_secret(&t, "not-the-secret"));
    expect(
        wrong
            .send("PUT", &key, &[], &[], b"evil".to_vec())
            .await
            .unwrap(),
        403,
        "SignatureDoesNotMatch",
    )
    .await;
    let unknown = RawClient::new(
        &cluster.endpoint,
        &Tenant {
            tenant: "x".into(),
            access_key_id: "NOSUCHKEY".into(),
            secret_access_key: "s".into(),
        },
    );
    expect(
        unknown.send("GET", &key, &[], &[], vec![]).await.unwrap(),
        403,
        "InvalidAccessKeyId",
    )
    .await;

    let skewed = chrono::Utc::now() - chrono::Duration::minutes(20);
    let r = c
        .send_signed(
            "PUT",
            &key,
            &[],
            &[],
            b"old".to_vec(),
            &sha256_hex(b"old"),
            skewed,
        )
        .await
        .unwrap();
    expect(r, 403, "RequestTimeTooSkewed").await;
    let future = chrono::Utc::now() + chrono::Duration::minutes(20);
    let r = c
        .send_signed("GET", &key, &[], &[], vec![], &sha256_hex(b""), future)
        .await
        .unwrap();
    expect(r, 403, "RequestTimeTooSkewed").await;

    // A body that does not match the signed x-amz-content-sha256.
    let r = c
        .send_signed(
            "PUT",
            &key,
            &[],
            &[],
            b"other".to_vec(),
            &sha256_hex(b"claimed"),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    expect(r, 400, "XAmzContentSHA256Mismatch").await;

    // Presigned URLs: valid, expired, over 7 days, tampered.
    let s = Signer::new(&t.access_key_id, &t.secret_access_key);
    let ok = s.presign(&cluster.endpoint, "GET", &key, 60, chrono::Utc::now());
    let r = reqwest::get(&ok).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"v1");
    let expired = s.presign(
        &cluster.endpoint,
        "GET",
        &key,
        60,
        chrono::Utc::now() - chrono::Duration::minutes(5),
    );
    expect(reqwest::get(&expired).await.unwrap(), 403, "AccessDenied").await;
    let too_long = s.presign(
        &cluster.endpoint,
        "GET",
        &key,
        8 * 24 * 3600,
        chrono::Utc::now(),
    );
    // Past the 7-day maximum, or none at all: refused as expired URLs are
    // (403, as the conformance suite expects of S3 gateways).
    expect(reqwest::get(&too_long).await.unwrap(), 403, "AccessDenied").await;
    let zero = s.presign(&cluster.endpoint, "GET", &key, 0, chrono::Utc::now());
    expect(reqwest::get(&zero).await.unwrap(), 403, "AccessDenied").await;
    let tampered = ok.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
    expect(
        reqwest::get(&tampered).await.unwrap(),
        403,
        "SignatureDoesNotMatch",
    )
    .await;

    // Anonymous access to a private object.
    expect(
        reqwest::get(format!("{}{key}", cluster.endpoint))
            .await
            .unwrap(),
        403,
        "AccessDenied",
    )
    .await;

    // Nothing above changed the object.
    let r = c.send("GET", &key, &[], &[], vec![]).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_signatures_are_verified() {
    let (cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "chunks", "chunk").await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let put = |path: String, tamper: bool| {
        let c = &c;
        let data = &data;
        async move {
            let host = c.host();
            let len = data.len().to_string();
            let headers = [
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", len.as_str()),
            ];
            let mut all = vec![("host", host.as_str())];
            all.extend_from_slice(&headers);
            let signed = c.signer.sign(
                "PUT",
                &path,
                &[],
                &all,
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
                chrono::Utc::now(),
            );
            let mut body = chunked_body(&signed, data, 65536);
            if tamper {
                // Flip one data byte inside the second chunk.
                let i = body.len() / 2;
                body[i] ^= 1;
            }
            let mut req = c.http.put(format!("{}{path}", c.endpoint)).body(body);
            for (k, v) in &signed.headers {
                req = req.header(k, v);
            }
            req.send().await.unwrap()
        }
    };
    let good = format!("/{bucket}/good");
    expect(put(good.clone(), false).await, 200, "").await;
    let r = c.send("GET", &good, &[], &[], vec![]).await.unwrap();
    assert!(
        r.bytes().await.unwrap().as_ref() == data.as_slice(),
        "chunked upload stored the decoded bytes"
    );

    let bad = format!("/{bucket}/bad");
    expect(put(bad.clone(), true).await, 403, "SignatureDoesNotMatch").await;
    assert_eq!(
        head_status(&c, &bad).await,
        404,
        "no object after a tampered chunk"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cluster.temp_files(), 0, "no temp file left");
}

#[tokio::test(flavor = "multi_thread")]
async fn request_errors_leave_state_unchanged() {
    let (_cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "errs", "errs").await;
    let key = format!("/{bucket}/k");

    // Content-MD5 mismatch, and a malformed one.
    let wrong_md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="; // MD5 of the empty string
    expect(
        c.send(
            "PUT",
            &key,
            &[],
            &[("content-md5", wrong_md5)],
            b"data".to_vec(),
        )
        .await
        .unwrap(),
        400,
        "BadDigest",
    )
    .await;
    assert_eq!(head_status(&c, &key).await, 404);
    expect(
        c.send(
            "PUT",
            &key,
            &[],
            &[("content-md5", "nope")],
            b"data".to_vec(),
        )
        .await
        .unwrap(),
        400,
        "InvalidDigest",
    )
    .await;

    expect(
        c.send("PUT", "/Bad_Bucket", &[], &[], vec![])
            .await
            .unwrap(),
        400,
        "InvalidBucketName",
    )
    .await;
    expect(
        c.send("PUT", "/ab", &[], &[], vec![]).await.unwrap(),
        400,
        "InvalidBucketName",
    )
    .await;

    expect(
        c.send("PUT", &key, &[], &[], b"0123456789".to_vec())
            .await
            .unwrap(),
        200,
        "",
    )
    .await;
    expect(
        c.send("DELETE", &format!("/{bucket}"), &[], &[], vec![])
            .await
            .unwrap(),
        409,
        "BucketNotEmpty",
    )
    .await;
    assert_eq!(head_status(&c, &key).await, 200);

    expect(
        c.send("GET", &format!("/{bucket}/missing"), &[], &[], vec![])
            .await
            .unwrap(),
        404,
        "NoSuchKey",
    )
    .await;
    expect(
        c.send("GET", "/no-such-bucket-here/k", &[], &[], vec![])
            .await
            .unwrap(),
        404,
        "NoSuchBucket",
    )
    .await;
    expect(
        c.send("GET", &key, &[], &[("range", "bytes=20-30")], vec![])
            .await
            .unwrap(),
        416,
        "InvalidRange",
    )
    .await;

    let long_key = format!("/{bucket}/{}", "k".repeat(1025));
    expect(
        c.send("PUT", &long_key, &[], &[], b"x".to_vec())
            .await
            .unwrap(),
        400,
        "KeyTooLongError",
    )
    .await;

    // A 3 MiB header is refused before it reaches any handler.
    let huge = "a".repeat(3 * 1024 * 1024);
    let r = c
        .http
        .put(format!("{}/{bucket}/huge", c.endpoint))
        .header("x-amz-meta-huge", huge)
        .body("x")
        .send()
        .await;
    match r {
        Ok(r) => assert!(r.status().is_client_error(), "3 MiB header: {}", r.status()),
        Err(e) => assert!(
            e.is_request() || e.is_connect() || e.to_string().contains("connection"),
            "{e}"
        ),
    }
    assert_eq!(head_status(&c, &format!("/{bucket}/huge")).await, 404);
    // Metadata over 2 KiB, within the header limit, is S3's MetadataTooLarge.
    let meta = "m".repeat(3000);
    expect(
        c.send(
            "PUT",
            &format!("/{bucket}/meta"),
            &[],
            &[("x-amz-meta-big", &meta)],
            b"x".to_vec(),
        )
        .await
        .unwrap(),
        400,
        "MetadataTooLarge",
    )
    .await;

    // The object is untouched by all of the above.
    let r = c.send("GET", &key, &[], &[], vec![]).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"0123456789");
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_errors() {
    let (_cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "mperr", "mp").await;
    let key = format!("/{bucket}/obj");

    let r = c
        .send("POST", &key, &[("uploads", "")], &[], vec![])
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let upload_id = body
        .split("<UploadId>")
        .nth(1)
        .unwrap()
        .split("</UploadId>")
        .next()
        .unwrap()
        .to_string();
    let part = |n: &'static str, data: Vec<u8>| {
        let c = &c;
        let key = &key;
        let upload_id = upload_id.clone();
        async move {
            let r = c
                .send(
                    "PUT",
                    key,
                    &[("partNumber", n), ("uploadId", &upload_id)],
                    &[],
                    data,
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.headers()["etag"].to_str().unwrap().to_string()
        }
    };
    let e1 = part("1", vec![1u8; 1000]).await;
    let e2 = part("2", vec![2u8; 1000]).await;
    let complete = |parts: Vec<(u32, String)>, id: String| {
        let c = &c;
        let key = &key;
        async move {
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (n, e) in parts {
                xml.push_str(&format!(
                    "<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                ));
            }
            xml.push_str("</CompleteMultipartUpload>");
            c.send("POST", key, &[("uploadId", &id)], &[], xml.into_bytes())
                .await
                .unwrap()
        }
    };
    expect(
        complete(
            vec![(1, "\"0123\"".into()), (2, e2.clone())],
            upload_id.clone(),
        )
        .await,
        400,
        "InvalidPart",
    )
    .await;
    expect(
        complete(vec![(2, e2.clone()), (1, e1.clone())], upload_id.clone()).await,
        400,
        "InvalidPartOrder",
    )
    .await;
    expect(
        complete(vec![(1, e1.clone()), (2, e2.clone())], upload_id.clone()).await,
        400,
        "EntityTooSmall",
    )
    .await;
    expect(
        complete(vec![(1, e1.clone())], "nosuchupload".into()).await,
        404,
        "NoSuchUpload",
    )
    .await;
    expect(
        c.send(
            "PUT",
            &key,
            &[("partNumber", "0"), ("uploadId", &upload_id)],
            &[],
            vec![1],
        )
        .await
        .unwrap(),
        400,
        "InvalidArgument",
    )
    .await;
    expect(
        c.send(
            "PUT",
            &key,
            &[("partNumber", "1"), ("uploadId", "nosuchupload")],
            &[],
            vec![1],
        )
        .await
        .unwrap(),
        404,
        "NoSuchUpload",
    )
    .await;
    assert_eq!(
        head_status(&c, &key).await,
        404,
        "no object after failed completes"
    );

    // The upload is still intact: a single small last part completes.
    let r = complete(vec![(1, e1.clone())], upload_id.clone()).await;
    assert_eq!(r.status(), 200);
    let r = c.send("GET", &key, &[], &[], vec![]).await.unwrap();
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        vec![1u8; 1000].as_slice()
    );
    // Completed uploads are gone.
    expect(
        c.send("DELETE", &key, &[("uploadId", &upload_id)], &[], vec![])
            .await
            .unwrap(),
        404,
        "NoSuchUpload",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_body_leaves_no_object_and_no_temp_file() {
    let (cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "trunc", "trunc").await;
    let path = format!("/{bucket}/partial");
    let mut stream = c.start_raw_put(&path, 1048576).await.unwrap();
    stream.write_all(&vec![7u8; 300_000]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        cluster.temp_files() > 0,
        "the write was in flight on a node"
    );
    drop(stream);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.temp_files() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.temp_files(),
        0,
        "temp file removed after the client vanished"
    );
    assert_eq!(
        head_status(&c, &path).await,
        404,
        "no partial object is visible"
    );
    let blobs = cluster.blob_files();
    assert!(blobs.is_empty(), "no blob stored: {blobs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_payload_with_trailing_checksum() {
    let (_cluster, _t, c, bucket) = insitu_e2e::cluster_with_bucket(2, "trailer", "trail").await;
    let data = b"hello trailing checksums".repeat(1000);
    let crc = {
        // CRC-32 (IEEE), computed here independently of the gateway.
        let mut table = [0u32; 256];
        for (i, e) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        let mut crc = 0xFFFF_FFFFu32;
        for &b in &data {
            crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
        }
        crc ^ 0xFFFF_FFFF
    };
    let b64 = |bytes: [u8; 4]| {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let n = u32::from_be_bytes(bytes);
        let idx = [
            (n >> 26) & 63,
            (n >> 20) & 63,
            (n >> 14) & 63,
            (n >> 8) & 63,
            (n >> 2) & 63,
            (n << 4) & 63,
        ];
        let mut s: String = idx.iter().map(|&i| A[i as usize] as char).collect();
        s.push_str("==");
        s
    };
    let send = |path: String, checksum: String| {
        let c = &c;
        let data = &data;
        async move {
            let host = c.host();
            let len = data.len().to_string();
            let headers = [
                ("content-encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", len.as_str()),
                ("x-amz-trailer", "x-amz-checksum-crc32"),
            ];
            let mut all = vec![("host", host.as_str())];
            all.extend_from_slice(&headers);
            let signed = c.signer.sign(
                "PUT",
                &path,
                &[],
                &all,
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                chrono::Utc::now(),
            );
            let mut body = Vec::new();
            for piece in data.chunks(8192) {
                body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                body.extend_from_slice(piece);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(
                format!("0\r\nx-amz-checksum-crc32:{checksum}\r\n\r\n").as_bytes(),
            );
            let mut req = c.http.put(format!("{}{path}", c.endpoint)).body(body);
            for (k, v) in &signed.headers {
                req = req.header(k, v);
            }
            req.send().await.unwrap()
        }
    };
    let good = format!("/{bucket}/good");
    let r = send(good.clone(), b64(crc.to_be_bytes())).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = c.send("GET", &good, &[], &[], vec![]).await.unwrap();
    assert!(r.bytes().await.unwrap().as_ref() == data.as_slice());

    let bad = format!("/{bucket}/bad");
    expect(
        send(bad.clone(), b64((crc ^ 1).to_be_bytes())).await,
        400,
        "BadDigest",
    )
    .await;
    assert_eq!(head_status(&c, &bad).await, 404);
}
