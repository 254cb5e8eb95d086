//! The `aws` CLI against a real cluster: multipart `s3 cp`, `s3 ls`, and a
//! presigned URL fetched with plain HTTP.

use std::process::Command;

use insitu_e2e::{aws_env, unique, Cluster};

fn aws(cluster: &Cluster, t: &insitu_e2e::Tenant, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("aws");
    aws_env(&mut cmd, &cluster.endpoint, t, cluster.dir.path()).expect("env");
    cmd.arg("--endpoint-url").arg(&cluster.endpoint).args(args);
    let out = cmd
        .output()
        .expect("the aws CLI must be installed (scripts/setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn aws_cli_multipart_copy_ls_and_presign() {
    let cluster = Cluster::start(3).expect("cluster");
    let t = cluster.create_tenant("cli").expect("tenant");
    let bucket = unique("cli");
    let (ok, _, err) = aws(&cluster, &t, &["s3", "mb", &format!("s3://{bucket}")]);
    assert!(ok, "mb: {err}");

    let src = cluster.dir.path().join("upload.bin");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let (ok, _, err) = aws(
        &cluster,
        &t,
        &[
            "s3",
            "cp",
            src.to_str().unwrap(),
            &format!("s3://{bucket}/data/upload.bin"),
        ],
    );
    assert!(ok, "cp up: {err}");

    // The CLI splits 20 MiB into 8 MiB parts: the ETag says multipart.
    let (ok, out, err) = aws(
        &cluster,
        &t,
        &[
            "s3api",
            "head-object",
            "--bucket",
            &bucket,
            "--key",
            "data/upload.bin",
        ],
    );
    assert!(ok, "head: {err}");
    let head: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(head["ContentLength"], 20 * 1024 * 1024);
    assert!(
        head["ETag"].as_str().unwrap().ends_with("-3\""),
        "multipart ETag: {}",
        head["ETag"]
    );

    let (ok, out, err) = aws(
        &cluster,
        &t,
        &["s3", "ls", &format!("s3://{bucket}"), "--recursive"],
    );
    assert!(ok, "ls: {err}");
    assert!(out.contains("20971520 data/upload.bin"), "ls output: {out}");
    let (ok, out, _) = aws(&cluster, &t, &["s3", "ls", &format!("s3://{bucket}/")]);
    assert!(ok && out.contains("PRE data/"), "ls with delimiter: {out}");

    let back = cluster.dir.path().join("back.bin");
    let (ok, _, err) = aws(
        &cluster,
        &t,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/data/upload.bin"),
            back.to_str().unwrap(),
        ],
    );
    assert!(ok, "cp down: {err}");
    assert!(
        std::fs::read(&back).unwrap() == data,
        "downloaded bytes differ"
    );

    let (ok, url, err) = aws(
        &cluster,
        &t,
        &[
            "s3",
            "presign",
            &format!("s3://{bucket}/data/upload.bin"),
            "--expires-in",
            "300",
        ],
    );
    assert!(ok, "presign: {err}");
    assert!(
        url.contains("X-Amz-Signature"),
        "a SigV4 presigned URL: {url}"
    );
    let resp = reqwest::get(url.trim()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().as_ref() == data.as_slice());

    // A tampered presigned URL is refused.
    let tampered = url.trim().replace("data/upload.bin", "data/other.bin");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);

    // Another tenant sees nothing of it.
    let other = cluster.create_tenant("cli-other").expect("tenant");
    let (ok, _, err) = aws(&cluster, &other, &["s3", "ls", &format!("s3://{bucket}")]);
    assert!(
        !ok && err.contains("AccessDenied"),
        "other tenant listing: {err}"
    );
    let (ok, out, _) = aws(&cluster, &other, &["s3", "ls"]);
    assert!(
        ok && !out.contains(&bucket),
        "other tenant's bucket list: {out}"
    );
}
