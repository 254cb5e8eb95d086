//! What the public conformance suite ceph/s3-tests checks, family by
//! family (docs/COMPATIBILITY.md): each fix made for the suite has its
//! own test here, since CI cannot download the suite.

use insitu_e2e::{cluster_with_bucket, error_code};

/// Escapes text for an XML element, as SDKs write keys.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Reads XML text back: the five predefined entities.
fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The suite's per-test cleanup lists every key and deletes them all with
/// DeleteObjects, then deletes the bucket. Keys that begin or end with a
/// space, or are XML's special characters, must all go: one left behind
/// failed every later test's cleanup (`BucketNotEmpty`).
#[tokio::test(flavor = "multi_thread")]
async fn delete_objects_removes_keys_with_spaces_and_xml_characters() {
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "keys", "keys").await;
    let keys = [
        " ", "  two", "trail ", "_ ", "\"", "$", "%", "&", "'", "<", ">", "_", "__", "a&amp;b",
        "\ttab",
    ];
    for k in keys {
        let r = c
            .send("PUT", &format!("/{bucket}/{k}"), &[], &[], b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "PUT {k:?}");
    }
    let mut body = String::from("<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    body.push_str("<Quiet>false</Quiet>");
    for k in keys {
        body.push_str(&format!(
            "<Object><Key>{}</Key><VersionId>null</VersionId></Object>",
            xml_text(k)
        ));
    }
    body.push_str("</Delete>");
    let r = c
        .send(
            "POST",
            &format!("/{bucket}"),
            &[("delete", "")],
            &[],
            body.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("<Error>"), "{text}");
    assert_eq!(text.matches("<Deleted>").count(), keys.len(), "{text}");
    // The exact keys, each named back as sent (once the XML is read).
    let named: Vec<String> = text
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>"))
        .map(|(k, _)| xml_unescape(k))
        .collect();
    assert_eq!(named, keys, "{text}");
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
    let list = r.text().await.unwrap();
    assert!(!list.contains("<Key>"), "left behind: {list}");
    let r = c
        .send("DELETE", &format!("/{bucket}"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Not XML, or not a Delete: MalformedXML.
    let (_c2, _t2, c, bucket) = cluster_with_bucket(1, "keys2", "keys2").await;
    for bad in [
        "<Delete><Object><Key>a</Key></Object>",
        "<Other><Object><Key>a</Key></Object></Other>",
        "<Delete><Object><VersionId>v</VersionId></Object></Delete>",
        "<Delete><Quiet>maybe</Quiet><Object><Key>a</Key></Object></Delete>",
        "<Delete></Delete>",
    ] {
        let r = c
            .send(
                "POST",
                &format!("/{bucket}"),
                &[("delete", "")],
                &[],
                bad.into(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            error_code(&r.text().await.unwrap()),
            "MalformedXML",
            "{bad}"
        );
    }
}

/// A canned ACL reads back as its grants, the groups' first and then the
/// owner's FULL_CONTROL, with the owner's ID and DisplayName (the tenant),
/// in the order the suite compares them.
#[tokio::test(flavor = "multi_thread")]
async fn canned_acls_read_back_as_grants_groups_first() {
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "acls", "acls").await;
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/o"),
            &[],
            &[("x-amz-acl", "public-read-write")],
            b"x".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}"),
            &[("acl", "")],
            &[("x-amz-acl", "public-read")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (path, want) in [
        (
            format!("/{bucket}"),
            vec!["Group READ", "CanonicalUser FULL_CONTROL"],
        ),
        (
            format!("/{bucket}/o"),
            vec!["Group READ", "Group WRITE", "CanonicalUser FULL_CONTROL"],
        ),
    ] {
        let r = c
            .send("GET", &path, &[("acl", "")], &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let grants: Vec<String> = text
            .split("<Grant>")
            .skip(1)
            .map(|g| {
                let kind = g
                    .split("xsi:type=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next());
                let perm = g
                    .split("<Permission>")
                    .nth(1)
                    .and_then(|s| s.split('<').next());
                format!("{} {}", kind.unwrap_or("?"), perm.unwrap_or("?"))
            })
            .collect();
        assert_eq!(grants, want, "{text}");
        let owner_grant = text.split("<Grant>").last().unwrap();
        assert!(
            owner_grant.contains("<ID>acls</ID>")
                && owner_grant.contains("<DisplayName>acls</DisplayName>"),
            "{text}"
        );
    }
}

/// SigV2 in its three forms, as older tools and the suite's POST forms
/// send it: the header (`Authorization: AWS KEY:SIG`), the presigned
/// query (`AWSAccessKeyId`, `Expires`, `Signature`) and the POST policy.
#[tokio::test(flavor = "multi_thread")]
async fn signature_v2_header_query_and_post_forms() {
    use insitu_e2e::sign::{encode, sign_v2};
    let (cluster, t, _c, bucket) = cluster_with_bucket(1, "v2", "v2").await;
    let http = reqwest::Client::new();
    let secret = t.secret_access_key.clone();
    let akid = t.access_key_id.clone();
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    // Header form: a PUT whose x-amz-* headers are signed with it.
    let path = format!("/{bucket}/v2 key");
    let sts = format!(
        "PUT\n\ntext/plain\n{date}\nx-amz-meta-colour:blue\n{}",
        encode(&path, true)
    );
    let put = |sig: String, extra: Option<(&'static str, &'static str)>| {
        let mut r = http
            .put(format!("{}{}", cluster.endpoint, encode(&path, true)))
            .header("date", &date)
            .header("content-type", "text/plain")
            .header("x-amz-meta-colour", "blue")
            .header("authorization", format!("AWS {akid}:{sig}"))
            .body("signed with v2");
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    // An x-amz-* header added after signing is not obeyed.
    let r = put(sign_v2(&secret, &sts), Some(("x-amz-acl", "public-read")))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "SignatureDoesNotMatch"
    );
    let r = put(sign_v2("wrong-secret", &sts), None).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = put(sign_v2(&secret, &sts), None).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A stale date is refused however well it is signed.
    let old = httpdate::fmt_http_date(
        std::time::SystemTime::now() - std::time::Duration::from_secs(3600),
    );
    let sts_old = format!("GET\n\n\n{old}\n{}", encode(&path, true));
    let r = http
        .get(format!("{}{}", cluster.endpoint, encode(&path, true)))
        .header("date", &old)
        .header(
            "authorization",
            format!("AWS {akid}:{}", sign_v2(&secret, &sts_old)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.text().await.unwrap()), "RequestTimeTooSkewed");

    // A bucket request, signed over `/bucket/` as botocore signs it and
    // over `/bucket` as the path says: both are the bucket.
    for resource in [format!("/{bucket}/"), format!("/{bucket}")] {
        let sts = format!("GET\n\n\n{date}\n{resource}");
        let r = http
            .get(format!("{}/{bucket}", cluster.endpoint))
            .header("date", &date)
            .header(
                "authorization",
                format!("AWS {akid}:{}", sign_v2(&secret, &sts)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{resource}");
        assert!(r.text().await.unwrap().contains("<Key>v2 key</Key>"));
    }

    // Query form: valid until Expires, then refused; the signature binds
    // the path and the sub-resources.
    let presign = |expires: i64, p: &str| {
        let sts = format!("GET\n\n\n{expires}\n{}", encode(p, true));
        format!(
            "{}{}?AWSAccessKeyId={akid}&Expires={expires}&Signature={}",
            cluster.endpoint,
            encode(p, true),
            encode(&sign_v2(&secret, &sts), false)
        )
    };
    let now = chrono::Utc::now().timestamp();
    let r = http.get(presign(now + 300, &path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-meta-colour"], "blue");
    assert_eq!(r.text().await.unwrap(), "signed with v2");
    let r = http.get(presign(now - 10, &path)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&r.text().await.unwrap()), "AccessDenied");
    let other = presign(now + 300, &path).replace("v2%20key", "v2%20other");
    let r = http.get(other).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "SignatureDoesNotMatch"
    );
    let acl = presign(now + 300, &path).replacen('?', "?acl&", 1);
    let r = http.get(acl).send().await.unwrap();
    assert_eq!(r.status(), 403, "the acl sub-resource is signed");

    // An Expires more than 7 days ahead is refused, as for SigV4.
    let r = http
        .get(presign(now + 8 * 24 * 3600, &path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A sub-resource value that would sign as other sub-resources: a
    // signature made for UploadPart cannot be replayed as a plain PUT.
    let up_path = format!("/{bucket}/replayed");
    let resource = format!("{}?partNumber=1&uploadId=u1", encode(&up_path, true));
    let sts = format!("PUT\n\n\n{date}\n{resource}");
    let r = http
        .put(format!(
            "{}{}?partNumber=1%26uploadId%3Du1",
            cluster.endpoint,
            encode(&up_path, true)
        ))
        .header("date", &date)
        .header(
            "authorization",
            format!("AWS {akid}:{}", sign_v2(&secret, &sts)),
        )
        .body("overwritten")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http.get(presign(now + 300, &up_path)).send().await.unwrap();
    assert_eq!(r.status(), 404, "nothing was written");
    // DeleteObjects signed with SigV2 (no payload hash) needs its MD5.
    let body = "<Delete><Object><Key>v2 key</Key></Object></Delete>".to_string();
    let delete = |md5: Option<String>| {
        let sts = format!(
            "POST\n{}\n\n{date}\n/{bucket}/?delete",
            md5.clone().unwrap_or_default()
        );
        let mut r = http
            .post(format!("{}/{bucket}/?delete", cluster.endpoint))
            .header("date", &date)
            .header(
                "authorization",
                format!("AWS {akid}:{}", sign_v2(&secret, &sts)),
            )
            .body(body.clone());
        if let Some(m) = md5 {
            r = r.header("content-md5", m);
        }
        r.send()
    };
    let r = delete(None).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "InvalidRequest");
    let md5 = {
        use base64::Engine;
        use md5::Digest;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()))
    };
    let r = delete(Some(md5)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<Deleted>"));
    // The object is gone: the POST form below writes another key.
    let r = http.get(presign(now + 300, &path)).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // POST form: the policy signed with HMAC-SHA1.
    use base64::Engine;
    let policy = serde_json::json!({
        "expiration": "2100-01-01T00:00:00Z",
        "conditions": [{ "bucket": bucket }, ["starts-with", "$key", "post/"],
                       ["content-length-range", 0, 1024]],
    });
    let policy_b64 = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
    let post = |sig: String| {
        let boundary = "insitu-v2-form";
        let mut body = String::new();
        for (name, value) in [
            ("key", "post/v2".to_string()),
            ("AWSAccessKeyId", akid.clone()),
            ("policy", policy_b64.clone()),
            ("signature", sig),
        ] {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\nposted\r\n--{boundary}--\r\n"
        ));
        http.post(format!("{}/{bucket}", cluster.endpoint))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .send()
    };
    let r = post(sign_v2("nope", &policy_b64)).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(sign_v2(&secret, &policy_b64)).await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = http
        .get(presign(now + 300, &format!("/{bucket}/post/v2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "posted");
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    text.split(open).nth(1)?.split(close).next()
}

/// Multipart as the suite checks it: a completed upload completed again
/// answers the same; a part number a plain or multipart object lacks is
/// `InvalidPart` (400); a copy range outside the source is `InvalidRange`.
#[tokio::test(flavor = "multi_thread")]
async fn multipart_complete_again_part_reads_and_copy_ranges() {
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "mpu", "mpu").await;
    let key = format!("/{bucket}/mp");
    let r = c
        .send("POST", &key, &[("uploads", "")], &[], Vec::new())
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let id = between(&text, "<UploadId>", "</UploadId>")
        .unwrap()
        .to_string();
    let r = c
        .send(
            "PUT",
            &key,
            &[("partNumber", "1"), ("uploadId", &id)],
            &[],
            b"only part".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let q = [("uploadId", id.as_str())];
    let complete = || c.send("POST", &key, &q, &[], xml.clone().into_bytes());
    let first = complete().await.unwrap();
    assert_eq!(first.status(), 200);
    let first = first.text().await.unwrap();
    let again = complete().await.unwrap();
    assert_eq!(again.status(), 200, "completing again");
    let again = again.text().await.unwrap();
    assert_eq!(
        between(&first, "<ETag>", "</ETag>"),
        between(&again, "<ETag>", "</ETag>")
    );
    // Another upload id, or one whose object was overwritten since: none.
    let r = c
        .send(
            "POST",
            &key,
            &[("uploadId", "no-such-upload")],
            &[],
            xml.clone().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "NoSuchUpload");
    let r = c
        .send("PUT", &key, &[], &[], b"plain".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = complete().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "NoSuchUpload");
    // Part reads: the plain object is its own part 1 and has no other.
    let r = c
        .send("GET", &key, &[("partNumber", "1")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "plain");
    let r = c
        .send("GET", &key, &[("partNumber", "2")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "InvalidPart");
    // A copy range past the source's end.
    let r = c
        .send(
            "POST",
            &format!("/{bucket}/dest"),
            &[("uploads", "")],
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let id2 = between(&text, "<UploadId>", "</UploadId>")
        .unwrap()
        .to_string();
    let source = format!("{bucket}/mp");
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}/dest"),
            &[("partNumber", "1"), ("uploadId", &id2)],
            &[
                ("x-amz-copy-source", &source),
                ("x-amz-copy-source-range", "bytes=0-21"),
            ],
            Vec::new(),
        )
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 416), "{}", r.status());
    assert_eq!(error_code(&r.text().await.unwrap()), "InvalidRange");
}

/// Bucket creation and listing as the suite expects: the owner creating
/// its bucket again in us-east-1 gets 200 and keeps its objects, but not
/// with another ACL; `x-amz-expected-bucket-owner` is checked; ListBuckets
/// pages with `max-buckets`, `continuation-token` and `prefix`.
#[tokio::test(flavor = "multi_thread")]
async fn bucket_recreate_expected_owner_and_paged_listing() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "owner", "owner").await;
    let r = c
        .send("PUT", &format!("/{bucket}/k"), &[], &[], b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .send("PUT", &format!("/{bucket}"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "created again");
    let r = c
        .send("GET", &format!("/{bucket}/k"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the object stays");
    let r = c
        .send(
            "PUT",
            &format!("/{bucket}"),
            &[],
            &[("x-amz-acl", "public-read")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(&r.text().await.unwrap()), "BucketAlreadyExists");
    // Another tenant's name is still taken.
    let other = cluster.create_tenant("intruder").unwrap();
    let oc = insitu_e2e::RawClient::new(&cluster.endpoint, &other);
    let r = oc
        .send("PUT", &format!("/{bucket}"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(&r.text().await.unwrap()), "BucketAlreadyExists");

    // Expected owner: the right one passes, any other is refused.
    let r = c
        .send(
            "GET",
            &format!("/{bucket}/k"),
            &[],
            &[("x-amz-expected-bucket-owner", "owner")],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (method, path) in [
        ("GET", format!("/{bucket}/k")),
        ("PUT", format!("/{bucket}/k2")),
        ("GET", format!("/{bucket}")),
    ] {
        let r = c
            .send(
                method,
                &path,
                &[],
                &[("x-amz-expected-bucket-owner", "someone-else")],
                b"y".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        assert_eq!(error_code(&r.text().await.unwrap()), "AccessDenied");
    }
    let r = c
        .send("HEAD", &format!("/{bucket}/k2"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the refused PUT wrote nothing");

    // Paged ListBuckets.
    for b in ["pg-b", "pg-a", "pg-c"] {
        c.create_bucket(&format!("{bucket}-{b}")).await.unwrap();
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let prefix = format!("{bucket}-pg");
        let mut q = vec![("max-buckets", "2"), ("prefix", prefix.as_str())];
        if let Some(t) = &token {
            q.push(("continuation-token", t.as_str()));
        }
        let r = c.send("GET", "/", &q, &[], Vec::new()).await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let page: Vec<String> = text
            .split("<Name>")
            .skip(1)
            .filter_map(|s| s.split("</Name>").next())
            .map(str::to_string)
            .collect();
        assert!(page.len() <= 2, "{text}");
        names.extend(page);
        token = between(&text, "<ContinuationToken>", "</ContinuationToken>").map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    let want: Vec<String> = ["pg-a", "pg-b", "pg-c"]
        .iter()
        .map(|b| format!("{bucket}-{b}"))
        .collect();
    assert_eq!(names, want);
    let r = c
        .send("GET", "/", &[("max-buckets", "0")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A PUT with `Transfer-Encoding: chunked` and no Content-Length (what an
/// SDK streaming a body of unknown size sends): streamed to its end, its
/// signed SHA-256 checked, nothing visible when the check fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_put_without_content_length_streams_and_is_checked() {
    use insitu_e2e::sign::sha256_hex;
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "chunk", "chunk").await;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let send = |key: &str, hash: String| {
        let path = format!("/{bucket}/{key}");
        let host = c.host();
        let signed = c.signer.sign(
            "PUT",
            &path,
            &[],
            &[("host", &host), ("transfer-encoding", "chunked")],
            &hash,
            chrono::Utc::now(),
        );
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(100_000).map(|p| Ok(p.to_vec())).collect();
        let mut r = c
            .http
            .put(format!("{}{path}", c.endpoint))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)));
        for (k, v) in &signed.headers {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = send("streamed", sha256_hex(&data)).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = c
        .send("GET", &format!("/{bucket}/streamed"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = send("wrong", sha256_hex(b"something else")).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "XAmzContentSHA256Mismatch"
    );
    let r = c
        .send("HEAD", &format!("/{bucket}/wrong"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing visible after a failed check");
}

/// Content-Encoding is kept as the client wrote it, less the aws-chunked
/// framing.
#[tokio::test(flavor = "multi_thread")]
async fn content_encoding_is_kept_verbatim() {
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "enc", "enc").await;
    for (sent, kept) in [
        ("deflate, gzip", Some("deflate, gzip")),
        ("gzip, aws-chunked", Some("gzip")),
        ("aws-chunked, gzip", Some("gzip")),
        ("aws-chunked", None),
    ] {
        let key = format!("/{bucket}/k");
        let r = c
            .send(
                "PUT",
                &key,
                &[],
                &[("content-encoding", sent)],
                b"x".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{sent}");
        let r = c.send("HEAD", &key, &[], &[], Vec::new()).await.unwrap();
        let got = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), kept, "{sent}");
    }
}

/// `If-Match` and `If-None-Match` on PUT and CompleteMultipartUpload, as
/// S3 answers them: 412 when the condition fails, and 404 `NoSuchKey` for
/// an `If-Match` with no object under the key. A failed Complete leaves the
/// upload open.
#[tokio::test]
async fn conditional_puts_and_completes_follow_s3() {
    let (_cluster, _t, c, bucket) = cluster_with_bucket(1, "cond", "cond").await;
    let key = format!("/{bucket}/obj");
    let put = |cond: &'static str, v: &str| conditional_put(&c, &key, cond, v.to_string());
    let (s, etag, _) = put("if-none-match", "*").await;
    assert_eq!(s, 200);
    let etag = etag.unwrap();
    let etag = etag.as_str();
    let (s, _, text) = put("if-none-match", "*").await;
    assert_eq!((s, error_code(&text).as_str()), (412, "PreconditionFailed"));
    let (s, _, text) = put("if-none-match", etag).await;
    assert_eq!((s, error_code(&text).as_str()), (412, "PreconditionFailed"));
    assert_eq!(put("if-none-match", "\"badetag\"").await.0, 200);
    assert_eq!(put("if-match", etag).await.0, 200);
    assert_eq!(put("if-match", "*").await.0, 200);
    let (s, _, text) = put("if-match", "\"badetag\"").await;
    assert_eq!((s, error_code(&text).as_str()), (412, "PreconditionFailed"));
    let r = c.send("DELETE", &key, &[], &[], Vec::new()).await.unwrap();
    assert_eq!(r.status(), 204);
    for v in ["*", "\"badetag\""] {
        let (s, _, text) = put("if-match", v).await;
        assert_eq!(
            (s, error_code(&text).as_str()),
            (404, "NoSuchKey"),
            "If-Match: {v}"
        );
    }
    let r = c.send("GET", &key, &[], &[], Vec::new()).await.unwrap();
    assert_eq!(r.status(), 404, "a failed conditional PUT wrote nothing");

    // CompleteMultipartUpload.
    let (id, part) = upload_one_part(&c, &key, b"part").await;
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{part}</ETag></Part></CompleteMultipartUpload>"
    );
    let q = [("uploadId", id.as_str())];
    let r = c
        .send(
            "POST",
            &key,
            &q,
            &[("if-match", "*")],
            xml.clone().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&r.text().await.unwrap()), "NoSuchKey");
    let r = c
        .send(
            "POST",
            &key,
            &q,
            &[("if-none-match", "*")],
            xml.clone().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the upload stayed open");
    let text = r.text().await.unwrap();
    let completed = between(&text, "<ETag>", "</ETag>")
        .unwrap()
        .replace("&quot;", "\"");
    let r = c.send("GET", &key, &[], &[], Vec::new()).await.unwrap();
    assert_eq!(r.headers()["etag"].to_str().unwrap(), completed);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"part");

    // A second upload over the completed object: If-None-Match its ETag fails.
    let (id, _) = upload_one_part(&c, &key, b"part").await;
    let q = [("uploadId", id.as_str())];
    let r = c
        .send(
            "POST",
            &key,
            &q,
            &[("if-none-match", completed.as_str())],
            xml.clone().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(error_code(&r.text().await.unwrap()), "PreconditionFailed");
}

/// A PUT with one condition header: its status, ETag and body.
async fn conditional_put(
    c: &insitu_e2e::RawClient,
    key: &str,
    cond: &str,
    value: String,
) -> (u16, Option<String>, String) {
    let r = c
        .send("PUT", key, &[], &[(cond, &value)], b"data".to_vec())
        .await
        .unwrap();
    let status = r.status().as_u16();
    let etag = r
        .headers()
        .get("etag")
        .map(|e| e.to_str().unwrap().to_string());
    (status, etag, r.text().await.unwrap())
}

/// Starts a multipart upload of `key` and uploads its part 1: the upload
/// id and the part's ETag.
async fn upload_one_part(c: &insitu_e2e::RawClient, key: &str, part: &[u8]) -> (String, String) {
    let r = c
        .send("POST", key, &[("uploads", "")], &[], Vec::new())
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let id = between(&text, "<UploadId>", "</UploadId>")
        .unwrap()
        .to_string();
    let r = c
        .send(
            "PUT",
            key,
            &[("partNumber", "1"), ("uploadId", &id)],
            &[],
            part.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    (id, etag)
}

/// The `Access-Control-*` headers of a response, by name, for comparison.
fn cors_headers(r: &reqwest::Response) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-") || k.as_str() == "vary")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

fn header_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

/// CORS as a browser uses it: the owner sets rules; a preflight OPTIONS
/// (with no credentials, also on a presigned URL) is answered from the
/// first rule allowing its origin, method and headers; real answers,
/// errors included, carry the headers of the rule that allows them.
#[tokio::test(flavor = "multi_thread")]
async fn cors_rules_answer_preflights_and_decorate_responses() {
    let (cluster, _t, c, bucket) = cluster_with_bucket(1, "cors", "cors").await;
    let anon = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", cluster.endpoint);
    let cors_path = format!("/{bucket}");
    let r = c
        .send("GET", &cors_path, &[("cors", "")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        error_code(&r.text().await.unwrap()),
        "NoSuchCORSConfiguration"
    );

    let refused = "<CORSConfiguration><CORSRule><AllowedMethod>PATCH</AllowedMethod><AllowedOrigin>*</AllowedOrigin></CORSRule></CORSConfiguration>";
    let r = c
        .send("PUT", &cors_path, &[("cors", "")], &[], refused.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "InvalidRequest");

    let config = "<CORSConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
        <CORSRule><ID>pages</ID><AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod>\
        <AllowedOrigin>https://*.app.example</AllowedOrigin><ExposeHeader>ETag</ExposeHeader>\
        <MaxAgeSeconds>600</MaxAgeSeconds></CORSRule>\
        <CORSRule><AllowedMethod>PUT</AllowedMethod><AllowedOrigin>*</AllowedOrigin>\
        <AllowedHeader>content-*</AllowedHeader><AllowedHeader>X-Amz-*</AllowedHeader></CORSRule>\
        </CORSConfiguration>";
    let r = c
        .send("PUT", &cors_path, &[("cors", "")], &[], config.into())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = c
        .send("GET", &cors_path, &[("cors", "")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for part in [
        "<ID>pages</ID>",
        "<AllowedMethod>GET</AllowedMethod><AllowedMethod>HEAD</AllowedMethod>",
        "<AllowedOrigin>https://*.app.example</AllowedOrigin>",
        "<AllowedHeader>content-*</AllowedHeader><AllowedHeader>X-Amz-*</AllowedHeader>",
        "<ExposeHeader>ETag</ExposeHeader>",
        "<MaxAgeSeconds>600</MaxAgeSeconds>",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }

    // Another tenant may neither read nor change the rules.
    let other = cluster.create_tenant("cors-other").unwrap();
    let oc = insitu_e2e::RawClient::new(&cluster.endpoint, &other);
    for (method, body) in [("GET", ""), ("PUT", config), ("DELETE", "")] {
        let r = oc
            .send(method, &cors_path, &[("cors", "")], &[], body.into())
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} ?cors by another tenant");
    }

    let obj = format!("/{bucket}/page.html");
    let r = c
        .send(
            "PUT",
            &obj,
            &[],
            &[("x-amz-acl", "public-read")],
            b"<p>".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A real answer, from a page of an allowed origin and of another.
    let r = anon
        .get(url(&obj))
        .header("origin", "https://web.app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first_rule = [
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET, HEAD"),
        ("access-control-allow-origin", "https://web.app.example"),
        ("access-control-expose-headers", "ETag"),
        ("access-control-max-age", "600"),
        ("vary", "Origin"),
    ];
    assert_eq!(cors_headers(&r), header_pairs(&first_rule));
    let r = anon
        .get(url(&obj))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(cors_headers(&r), vec![], "no rule allows GET from there");
    // A refused request still tells the page why: the PUT rule allows any
    // origin, so the browser may read the 403.
    let r = anon
        .put(url(&obj))
        .header("origin", "https://evil.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        cors_headers(&r),
        header_pairs(&[
            ("access-control-allow-methods", "PUT"),
            ("access-control-allow-origin", "*"),
            ("vary", "Origin"),
        ])
    );

    // Preflights, with no credentials.
    let preflight = |path: String, headers: Vec<(&'static str, &'static str)>| {
        let mut req = anon.request(reqwest::Method::OPTIONS, path);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    let r = preflight(
        url(&obj),
        vec![
            ("origin", "https://web.app.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut want = first_rule.to_vec();
    want.retain(|(k, _)| *k != "vary");
    want.push((
        "vary",
        "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
    ));
    assert_eq!(cors_headers(&r), header_pairs(&want));
    let r = preflight(
        url(&obj),
        vec![
            ("origin", "https://evil.example"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "Content-Type, x-amz-date"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let got = cors_headers(&r);
    assert!(
        got.contains(&(
            "access-control-allow-headers".into(),
            "content-type, x-amz-date".into()
        )),
        "{got:?}"
    );
    for (headers, status, code) in [
        (
            vec![
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "authorization"),
            ],
            403,
            "AccessForbidden",
        ),
        (
            vec![
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            403,
            "AccessForbidden",
        ),
        (
            vec![("access-control-request-method", "GET")],
            400,
            "BadRequest",
        ),
        (
            vec![("origin", "https://web.app.example")],
            400,
            "BadRequest",
        ),
    ] {
        let r = preflight(url(&obj), headers.clone()).await.unwrap();
        assert_eq!(r.status(), status, "{headers:?}");
        assert_eq!(cors_headers(&r), vec![], "{headers:?}");
        assert_eq!(error_code(&r.text().await.unwrap()), code, "{headers:?}");
    }

    // A browser uploading with a presigned URL: the preflight goes to the
    // same URL, and the upload's answer carries the headers too.
    let presigned = c.signer.presign(
        &cluster.endpoint,
        "PUT",
        &format!("/{bucket}/upload.bin"),
        300,
        chrono::Utc::now(),
    );
    let r = preflight(
        presigned.clone(),
        vec![
            ("origin", "https://web.app.example"),
            ("access-control-request-method", "PUT"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = anon
        .put(&presigned)
        .header("origin", "https://web.app.example")
        .body("uploaded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"].to_str().unwrap(),
        "*"
    );

    // Deleting the rules ends it.
    let r = c
        .send("DELETE", &cors_path, &[("cors", "")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = c
        .send("GET", &cors_path, &[("cors", "")], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = preflight(
        url(&obj),
        vec![
            ("origin", "https://web.app.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = anon
        .get(url(&obj))
        .header("origin", "https://web.app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(&r), vec![]);
}

/// A request claiming `t`'s key with a signature nobody computed, and no
/// `x-amz-content-sha256`: what a forger without the secret can send.
fn forged(req: reqwest::RequestBuilder, t: &insitu_e2e::Tenant) -> reqwest::RequestBuilder {
    let now = chrono::Utc::now();
    req.header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
            t.access_key_id,
            now.format("%Y%m%d"),
            "0".repeat(64)
        ),
    )
    .header("x-amz-date", now.format("%Y%m%dT%H%M%SZ").to_string())
}

/// `curl --aws-sigv4` (Debian 12's 7.88) signs the SHA-256 of the body it
/// sends with `--data-binary` but sends no `x-amz-content-sha256`. The
/// signature is then checked over the body's hash as it streams (a PUT, an
/// UploadPart) or once the small body is read (an ACL); nothing lands if it
/// fails, and a request that merely carries a body is never taken as
/// authenticated before that check. (`curl -T` signs the hash of an empty
/// body whatever it uploads, so its uploads are refused: nothing binds
/// their bytes.)
#[tokio::test(flavor = "multi_thread")]
async fn curl_uploads_are_checked_over_the_hash_of_their_body() {
    let (cluster, t, c, bucket) = cluster_with_bucket(1, "curl", "curl").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let curl = |secret: &str, args: &[&str]| -> (u16, String) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}"])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", &format!("{}:{secret}", t.access_key_id)])
            .args(args)
            .output()
            .expect("curl");
        (
            String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = format!("{}/{bucket}/from-curl.bin", cluster.endpoint);
    let at_file = format!("@{}", file.display());
    let (status, body) = curl(
        &t.secret_access_key,
        &["-X", "PUT", "--data-binary", &at_file, &url],
    );
    assert_eq!(status, 200, "{body}");
    let r = c
        .send("GET", &format!("/{bucket}/from-curl.bin"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == data,
        "the uploaded bytes read back"
    );

    // A wrong secret: the body streams, the signature fails at its end,
    // and nothing is visible.
    for (secret, how) in [
        ("not-the-secret", "--data-binary"),
        (t.secret_access_key.as_str(), "-T"),
    ] {
        let target = format!("{url}.{how}");
        let args: Vec<&str> = if how == "-T" {
            vec!["-T", file.to_str().unwrap(), &target]
        } else {
            vec!["-X", "PUT", "--data-binary", &at_file, &target]
        };
        let (status, body) = curl(secret, &args);
        assert_eq!(status, 403, "{how}: {body}");
        assert_eq!(error_code(&body), "SignatureDoesNotMatch", "{how}");
        let r = c
            .send(
                "HEAD",
                &format!("/{bucket}/from-curl.bin.{how}"),
                &[],
                &[],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{how}: a refused upload left nothing");
    }

    // A small body (an ACL) is read, then checked, before anything acts:
    // a forged one changes nothing.
    let acl_url = format!("{url}?acl");
    let policy = format!(
        "<AccessControlPolicy><Owner><ID>{0}</ID></Owner><AccessControlList><Grant>\
         <Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"Group\">\
         <URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee><Permission>READ</Permission>\
         </Grant><Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"CanonicalUser\">\
         <ID>{0}</ID></Grantee><Permission>FULL_CONTROL</Permission></Grant></AccessControlList></AccessControlPolicy>",
        t.tenant
    );
    let (status, body) = curl(
        "not-the-secret",
        &["-X", "PUT", "--data-binary", &policy, &acl_url],
    );
    assert_eq!(status, 403, "{body}");
    let anon = reqwest::Client::new();
    assert_eq!(anon.get(&url).send().await.unwrap().status(), 403);
    // (curl 7.88 signs a valueless sub-resource as `acl`, not `acl=`, so
    // its genuine ACL requests do not verify either; a forged one must.)

    // A GET that carries a body and a forged signature is refused: its
    // body is read and the signature checked before the read happens.
    let r = forged(
        anon.get(format!("{}/{bucket}/from-curl.bin", cluster.endpoint)),
        &t,
    )
    .body("a body")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);

    // A body whose request is not yet authenticated is bounded: 16 MiB.
    let r = forged(
        anon.put(format!("{}/{bucket}/too-big", cluster.endpoint)),
        &t,
    )
    .body(vec![0u8; 17 * 1024 * 1024])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&r.text().await.unwrap()), "EntityTooLarge");
}
