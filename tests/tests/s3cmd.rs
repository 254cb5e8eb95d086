//! s3cmd against a real cluster, with SigV4 and with SigV2 (its
//! `--signature-v2` mode, as older setups run it): make a bucket, put
//! (one part and multipart), list, get byte for byte, set an ACL,
//! presign, delete.

use std::process::Command;

use insitu_e2e::{unique, Cluster, Tenant};

fn s3cmd(cluster: &Cluster, t: &Tenant, v2: bool, args: &[&str]) -> (bool, String, String) {
    let host = cluster.endpoint.trim_start_matches("http://");
    let cfg = cluster.dir.path().join(format!("s3cfg-{v2}"));
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\n\
             use_https = False\nsignature_v2 = {}\nbucket_location = us-east-1\n",
            t.access_key_id,
            t.secret_access_key,
            if v2 { "True" } else { "False" }
        ),
    )
    .unwrap();
    let out = Command::new("s3cmd")
        .arg("-c")
        .arg(&cfg)
        .args(args)
        .output()
        .expect("s3cmd must be installed (scripts/setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn round_trip(cluster: &Cluster, t: &Tenant, v2: bool) {
    let bucket = unique(if v2 { "s3cmd-v2" } else { "s3cmd-v4" });
    let b = format!("s3://{bucket}");
    let (ok, _, err) = s3cmd(cluster, t, v2, &["mb", &b]);
    assert!(ok, "mb: {err}");
    let dir = cluster.dir.path();
    let small = dir.join(format!("small-{v2}"));
    std::fs::write(&small, b"hello from s3cmd\n").unwrap();
    let big = dir.join(format!("big-{v2}"));
    let data: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(7) >> 5) as u8)
        .collect();
    std::fs::write(&big, &data).unwrap();
    let (ok, _, err) = s3cmd(
        cluster,
        t,
        v2,
        &[
            "put",
            small.to_str().unwrap(),
            &format!("{b}/dir/small file"),
        ],
    );
    assert!(ok, "put: {err}");
    // 5 MiB chunks: a three-part upload.
    let (ok, _, err) = s3cmd(
        cluster,
        t,
        v2,
        &[
            "put",
            "--multipart-chunk-size-mb=5",
            big.to_str().unwrap(),
            &format!("{b}/dir/big"),
        ],
    );
    assert!(ok, "multipart put: {err}");
    let (ok, out, err) = s3cmd(cluster, t, v2, &["ls", "-r", &b]);
    assert!(ok, "ls: {err}");
    assert!(
        out.contains("dir/small file") && out.contains("dir/big"),
        "{out}"
    );
    let got = dir.join(format!("got-{v2}"));
    let (ok, _, err) = s3cmd(
        cluster,
        t,
        v2,
        &[
            "get",
            "--force",
            &format!("{b}/dir/big"),
            got.to_str().unwrap(),
        ],
    );
    assert!(ok, "get: {err}");
    assert!(std::fs::read(&got).unwrap() == data, "bytes differ");
    let (ok, _, err) = s3cmd(
        cluster,
        t,
        v2,
        &["setacl", "--acl-public", &format!("{b}/dir/small file")],
    );
    assert!(ok, "setacl: {err}");
    let (ok, out, err) = s3cmd(cluster, t, v2, &["info", &format!("{b}/dir/small file")]);
    assert!(ok, "info: {err}");
    assert!(out.contains("*anon*: READ"), "{out}");
    let (ok, out, err) = s3cmd(
        cluster,
        t,
        v2,
        &["signurl", &format!("{b}/dir/big"), "+600"],
    );
    assert!(ok, "signurl: {err}");
    let url = out.trim().to_string();
    let fetched = Command::new("curl").args(["-sf", &url]).output().unwrap();
    assert!(fetched.status.success(), "presigned GET {url}");
    assert!(fetched.stdout == data);
    let (ok, _, err) = s3cmd(cluster, t, v2, &["del", "-r", "--force", &b]);
    assert!(ok, "del: {err}");
    let (ok, _, err) = s3cmd(cluster, t, v2, &["rb", &b]);
    assert!(ok, "rb: {err}");
}

#[test]
fn s3cmd_with_sigv4_and_sigv2() {
    let cluster = Cluster::start(2).expect("cluster");
    let t = cluster.create_tenant("s3cmd").expect("tenant");
    round_trip(&cluster, &t, false);
    round_trip(&cluster, &t, true);
}
