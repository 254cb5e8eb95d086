//! rclone (Debian's package) against a real cluster, configured only by
//! environment variables as a pipeline would: make a bucket, copy a tree
//! (a small file and one large enough for a multipart upload), list it,
//! check it byte for byte, sync a change, read one file back, delete.

use std::path::Path;
use std::process::Command;

use insitu_e2e::{unique, Cluster, Tenant};

fn rclone(cluster: &Cluster, t: &Tenant, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("rclone")
        // Only what is set here: no CA bundle (the endpoint is plain
        // http), no ambient credentials or profile.
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env("RCLONE_CONFIG", "/dev/null")
        .env("RCLONE_CONFIG_INSITU_TYPE", "s3")
        .env("RCLONE_CONFIG_INSITU_PROVIDER", "Other")
        .env("RCLONE_CONFIG_INSITU_ENDPOINT", &cluster.endpoint)
        .env("RCLONE_CONFIG_INSITU_ACCESS_KEY_ID", &t.access_key_id)
        .env(
            "RCLONE_CONFIG_INSITU_SECRET_ACCESS_KEY",
            &t.secret_access_key,
        )
        .env("RCLONE_CONFIG_INSITU_REGION", "us-east-1")
        .env("RCLONE_CONFIG_INSITU_FORCE_PATH_STYLE", "true")
        // Large files go up in 5 MiB parts, so the tree below has a
        // multipart upload in it.
        .env("RCLONE_S3_UPLOAD_CUTOFF", "5M")
        .env("RCLONE_S3_CHUNK_SIZE", "5M")
        .args(args)
        .output()
        .expect("rclone must be installed (scripts/setup installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_tree(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("small.txt"), b"hello from rclone\n").unwrap();
    let big: Vec<u8> = (0..13 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    std::fs::write(dir.join("sub/big.bin"), &big).unwrap();
    big
}

#[test]
fn rclone_copy_check_sync_cat_and_purge() {
    let cluster = Cluster::start(3).expect("cluster");
    let t = cluster.create_tenant("rclone").expect("tenant");
    let bucket = unique("rclone");
    let remote = format!("insitu:{bucket}");
    let (ok, _, err) = rclone(&cluster, &t, &["mkdir", &remote]);
    assert!(ok, "mkdir: {err}");

    let src = cluster.dir.path().join("tree");
    let big = write_tree(&src);
    let (ok, _, err) = rclone(&cluster, &t, &["copy", src.to_str().unwrap(), &remote]);
    assert!(ok, "copy: {err}");

    let (ok, out, err) = rclone(&cluster, &t, &["ls", &remote]);
    assert!(ok, "ls: {err}");
    let mut listed: Vec<(u64, String)> = out
        .lines()
        .filter_map(|l| {
            let (size, name) = l.trim().split_once(' ')?;
            Some((size.parse().ok()?, name.to_string()))
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (18, "small.txt".to_string()),
            (big.len() as u64, "sub/big.bin".to_string())
        ]
    );

    // `check --download` compares every byte, not only sizes and hashes.
    let (ok, _, err) = rclone(
        &cluster,
        &t,
        &["check", "--download", src.to_str().unwrap(), &remote],
    );
    assert!(ok, "check: {err}");

    // A change and a removal, synced: the bucket follows the tree.
    std::fs::write(src.join("small.txt"), b"changed\n").unwrap();
    std::fs::remove_file(src.join("sub/big.bin")).unwrap();
    let (ok, _, err) = rclone(&cluster, &t, &["sync", src.to_str().unwrap(), &remote]);
    assert!(ok, "sync: {err}");
    let (ok, out, err) = rclone(&cluster, &t, &["cat", &format!("{remote}/small.txt")]);
    assert!(ok, "cat: {err}");
    assert_eq!(out, "changed\n");
    let (ok, out, err) = rclone(&cluster, &t, &["lsf", "-R", &remote]);
    assert!(ok, "lsf: {err}");
    assert_eq!(
        out.lines()
            .filter(|l| !l.ends_with('/'))
            .collect::<Vec<_>>(),
        vec!["small.txt"]
    );

    // Another tenant's keys see nothing of it.
    let other = cluster.create_tenant("rclone-other").expect("tenant");
    let (ok, _, _) = rclone(&cluster, &other, &["ls", &remote]);
    assert!(!ok, "another tenant listed the bucket");

    let (ok, _, err) = rclone(&cluster, &t, &["purge", &remote]);
    assert!(ok, "purge: {err}");
    let (ok, out, _) = rclone(&cluster, &t, &["lsd", "insitu:"]);
    assert!(ok && !out.contains(&bucket), "the bucket is gone: {out}");
}
