//! Runs the boto3 suite (tests/python/s3_boto3.py) against a real cluster.

use std::process::Command;

use insitu_e2e::{unique, workspace_root, Cluster};

#[test]
fn boto3_suite() {
    let cluster = Cluster::start(3).expect("cluster");
    let a = cluster.create_tenant("boto-a").expect("tenant a");
    let b = cluster.create_tenant("boto-b").expect("tenant b");
    let script = workspace_root().join("tests/python/s3_boto3.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("TENANT_A_KEY", &a.access_key_id)
        .env("TENANT_A_SECRET", &a.secret_access_key)
        .env("TENANT_B_KEY", &b.access_key_id)
        .env("TENANT_B_SECRET", &b.secret_access_key)
        .env("BUCKET_PREFIX", unique("bt").replace('_', "-"))
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("python3 with boto3 must be installed (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "boto3 suite failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok")).count() >= 30,
        "the suite ran too few checks:\n{stdout}"
    );
}
