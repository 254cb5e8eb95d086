//! What a task can use besides its input (the task-tools issue): assets,
//! objects mounted read-only into every task of a phase. The real binary,
//! real nodes, real containers under runc and, where installed, gVisor.

use std::process::Command;

use insitu_e2e::{gvisor_installed, insitu_bin, run_job, unique, Cluster, RawClient, Tenant};

async fn put(c: &RawClient, path: &str, body: &[u8]) {
    let r = c.send("PUT", path, &[], &[], body.to_vec()).await.unwrap();
    assert_eq!(r.status(), 200, "PUT {path}");
}

async fn get_text(c: &RawClient, loc: &str) -> String {
    let r = c
        .send("GET", &format!("/{loc}"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {loc}");
    r.text().await.unwrap()
}

/// `insitu job run` (no `--watch`): whether the job was created, and stderr.
fn create(cluster: &Cluster, t: &Tenant, spec: &serde_json::Value) -> (bool, String) {
    let file = cluster.dir.path().join(format!("{}.json", unique("spec")));
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = Command::new(insitu_bin())
        .args(["job", "run", "--spec", file.to_str().unwrap()])
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn assets_are_readable_in_every_task_and_refused_when_missing_or_private() {
    // Two nodes, one replica: an asset lives on one node, inputs on both,
    // so the other node gets a copy.
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("assets").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("assets");
    c.create_bucket(&bucket).await.unwrap();
    put(
        &c,
        &format!("/{bucket}/tables/lookup.tsv"),
        b"a\tapple\nb\tbanana\n",
    )
    .await;
    let weights = vec![7u8; 300_000];
    put(&c, &format!("/{bucket}/models/v1/weights.bin"), &weights).await;
    let mut inputs = Vec::new();
    for i in 0..8 {
        let key = format!("in/{i}");
        put(
            &c,
            &format!("/{bucket}/{key}"),
            if i % 2 == 0 { b"a\n" } else { b"b\n" },
        )
        .await;
        inputs.push(format!("{bucket}/{key}"));
    }
    // Each task looks its input up in the table, measures the model, and
    // tries to change both.
    let exec = format!(
        "A=/insitu/assets/{bucket}; k=$(cat); grep \"^$k\t\" $A/tables/lookup.tsv | cut -f2; \
         wc -c < $A/models/v1/weights.bin; \
         (echo x >> $A/tables/lookup.tsv) 2>/dev/null && echo wrote-table; \
         (touch $A/new) 2>/dev/null && echo made-file; \
         (rm $A/models/v1/weights.bin) 2>/dev/null && echo removed-model; true"
    );
    let mut runtimes = vec!["runc"];
    if gvisor_installed() {
        runtimes.push("runsc");
    } else {
        eprintln!("runsc is not installed here: assets checked under runc only");
    }
    for runtime in runtimes {
        let spec = serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "runtime": runtime,
                         "exec": exec,
                         "assets": [format!("{bucket}/tables/lookup.tsv"),
                                    format!("s3://{bucket}/models/v1/weights.bin")] }],
            "inputs": inputs,
            "output": format!("{bucket}/out-{runtime}/"),
        });
        let (status, errors) = run_job(&cluster, &t, &spec);
        assert_eq!(status["state"], "done", "{runtime}: {status} {errors:?}");
        assert!(errors.is_empty(), "{runtime}: {errors:?}");
        assert_eq!(status["counters"]["outputs"], 8, "{runtime}: {status}");
        for i in 0..8 {
            let out = get_text(&c, &format!("{bucket}/out-{runtime}/{bucket}/in/{i}")).await;
            let fruit = if i % 2 == 0 { "apple" } else { "banana" };
            assert_eq!(
                out,
                format!("{fruit}\n300000\n"),
                "{runtime}: output of in/{i}"
            );
        }
        // The assets count in the job's bytes: the node that held them
        // read them locally, the other got a copy.
        let phase = &status["phases"][0];
        let assets = 300_000 + 17;
        let total =
            phase["bytes_local"].as_u64().unwrap() + phase["bytes_remote"].as_u64().unwrap();
        assert_eq!(total, 16 + 2 * assets, "{runtime}: {phase}");
        assert!(
            phase["bytes_remote"].as_u64().unwrap() >= assets,
            "{runtime}: {phase}"
        );
    }
    // The assets themselves are unchanged.
    assert_eq!(
        get_text(&c, &format!("{bucket}/tables/lookup.tsv")).await,
        "a\tapple\nb\tbanana\n"
    );

    // A missing asset, or another tenant's private object, fails the job
    // when it is created.
    let spec_with = |asset: String| {
        serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "cat",
                         "assets": [asset] }],
            "inputs": [inputs[0].clone()],
            "output": format!("{bucket}/never/"),
        })
    };
    let (ok, err) = create(
        &cluster,
        &t,
        &spec_with(format!("{bucket}/tables/missing.tsv")),
    );
    assert!(!ok && err.contains("ResourceNotFoundError"), "{err}");
    assert!(err.contains("phases[0].assets[0]"), "{err}");
    let other = cluster.create_tenant("assets-other").expect("tenant");
    let oc = RawClient::new(&cluster.endpoint, &other);
    let private = unique("private");
    oc.create_bucket(&private).await.unwrap();
    put(&oc, &format!("/{private}/secret.txt"), b"secret").await;
    let (ok, err) = create(&cluster, &t, &spec_with(format!("{private}/secret.txt")));
    assert!(!ok && err.contains("AccessDeniedError"), "{err}");
    // A path that would leave the assets directory is not a spec.
    let (ok, err) = create(&cluster, &t, &spec_with(format!("{bucket}/a/../../etc")));
    assert!(!ok && err.contains("phases[0].assets[0]"), "{err}");
}
