//! Memoized tasks (the jobs-at-scale issue): a job with `memoize` reuses
//! the outputs of an earlier successful task of its tenant whose
//! fingerprint (input version, exec, image, assets, limits) is the same,
//! by reference and without running it; a change to one input, or to the
//! exec, reruns exactly the tasks it touches; an entry whose output is
//! deleted is dropped. The real binary, nodes and containers.

use std::collections::BTreeMap;

use insitu_e2e::{run_job, unique, Cluster, RawClient};
use serde_json::{json, Value};

async fn put(c: &RawClient, path: &str, body: &[u8]) {
    let r = c.send("PUT", path, &[], &[], body.to_vec()).await.unwrap();
    assert_eq!(r.status(), 200, "PUT {path}");
}

async fn get(c: &RawClient, path: &str) -> (u16, Vec<u8>) {
    let r = c.send("GET", path, &[], &[], vec![]).await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// The job's outputs: object → its bytes now.
async fn outputs(c: &RawClient, id: &str) -> BTreeMap<String, Vec<u8>> {
    let (status, body) = get(c, &format!("/_insitu/v1/jobs/{id}/outputs")).await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_slice(&body).unwrap();
    let mut out = BTreeMap::new();
    for o in list["outputs"].as_array().expect("outputs") {
        let object = o["object"].as_str().unwrap().to_string();
        let (status, bytes) = get(c, &format!("/{object}")).await;
        assert_eq!(status, 200, "{object}");
        out.insert(object, bytes);
    }
    out
}

fn memoized(status: &Value) -> u64 {
    status["phases"][0]["tasks"]["memoized"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// The bytes of each output, by the input its task read (its first line).
fn by_input(outs: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    outs.values()
        .map(|b| {
            let text = String::from_utf8_lossy(b);
            (text.lines().next().unwrap_or("").to_string(), b.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memoized_job_runs_only_the_tasks_whose_fingerprint_changed() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("memo").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("memo");
    c.create_bucket(&b).await.unwrap();
    for i in 0..3 {
        put(
            &c,
            &format!("/{b}/in/{i}"),
            format!("input {i}\n").as_bytes(),
        )
        .await;
    }
    // Each run of a task writes something no other run writes (the time
    // in nanoseconds and a random number): equal bytes mean it did not
    // run again.
    let exec = "head -n1; date +%s%N; echo $RANDOM$RANDOM";
    let spec = |exec: &str, out: &str, memoize: bool| {
        json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
            "input_prefix": format!("{b}/in/"),
            "output": format!("{b}/{out}/"),
            "memoize": memoize,
        })
    };

    let (first, errors) = run_job(&cluster, &t, &spec(exec, "out", true));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(first["state"], "done", "{first}");
    assert_eq!(memoized(&first), 0, "{first}");
    let first_out = outputs(&c, first["id"].as_str().unwrap()).await;
    assert_eq!(first_out.len(), 3, "{first_out:?}");
    let first_by = by_input(&first_out);

    // The same job again: nothing runs, the outputs are the first run's,
    // byte for byte, and the counters say so.
    let (second, errors) = run_job(&cluster, &t, &spec(exec, "out", true));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&second), 3, "{second}");
    assert_eq!(second["phases"][0]["tasks"]["done"], 3, "{second}");
    assert_eq!(second["counters"]["tasks"]["memoized"], 3, "{second}");
    assert_eq!(second["counters"]["outputs"], 3, "{second}");
    // Nothing was read for the reused tasks.
    assert_eq!(second["phases"][0]["bytes_local"], 0, "{second}");
    assert_eq!(second["phases"][0]["bytes_remote"], 0, "{second}");
    let second_out = outputs(&c, second["id"].as_str().unwrap()).await;
    assert_eq!(second_out, first_out);

    // Without `memoize` every task runs.
    let (plain, _) = run_job(&cluster, &t, &spec(exec, "plain", false));
    assert_eq!(memoized(&plain), 0, "{plain}");
    for (input, bytes) in by_input(&outputs(&c, plain["id"].as_str().unwrap()).await) {
        assert_ne!(Some(&bytes), first_by.get(&input), "{input} did not run");
    }
    // Nor is anything reused for another output place.
    let (elsewhere, _) = run_job(&cluster, &t, &spec(exec, "elsewhere", true));
    assert_eq!(memoized(&elsewhere), 0, "{elsewhere}");

    // One input changes: exactly its task runs.
    put(&c, &format!("/{b}/in/1"), b"input 1 changed\n").await;
    let (third, errors) = run_job(&cluster, &t, &spec(exec, "out", true));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&third), 2, "{third}");
    let third_by = by_input(&outputs(&c, third["id"].as_str().unwrap()).await);
    assert_eq!(third_by.get("input 0"), first_by.get("input 0"));
    assert_eq!(third_by.get("input 2"), first_by.get("input 2"));
    assert!(third_by.contains_key("input 1 changed"), "{third_by:?}");

    // A memoized output deleted: its entry goes, and its task runs again
    // (the others are still reused).
    let victim = first_out
        .iter()
        .find(|(_, bytes)| bytes.starts_with(b"input 0\n"))
        .map(|(o, _)| o.clone())
        .expect("input 0's output");
    let r = c
        .send("DELETE", &format!("/{victim}"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (fourth, errors) = run_job(&cluster, &t, &spec(exec, "out", true));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&fourth), 2, "{fourth}");
    let fourth_by = by_input(&outputs(&c, fourth["id"].as_str().unwrap()).await);
    assert_eq!(fourth_by.len(), 3, "{fourth_by:?}");
    assert_ne!(fourth_by.get("input 0"), first_by.get("input 0"));
    assert_eq!(fourth_by.get("input 2"), first_by.get("input 2"));

    // The same inputs named one by one are the same tasks.
    let listed = |exec: &str, bucket: &str| {
        json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
            "inputs": (0..3).map(|i| format!("{b}/in/{i}")).collect::<Vec<_>>(),
            "output": format!("{bucket}/out/"),
            "memoize": true,
        })
    };
    let (own, errors) = run_job(&cluster, &t, &listed(exec, &b));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&own), 3, "{own}");

    // Another tenant that may read the same inputs reuses nothing.
    for i in 0..3 {
        let r = c
            .send(
                "PUT",
                &format!("/{b}/in/{i}"),
                &[("acl", "")],
                &[("x-amz-acl", "public-read")],
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let u = cluster.create_tenant("memo-other").expect("tenant");
    let bu = unique("memo-other");
    RawClient::new(&cluster.endpoint, &u)
        .create_bucket(&bu)
        .await
        .unwrap();
    let (other, errors) = run_job(&cluster, &u, &listed(exec, &bu));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&other), 0, "{other}");

    // The exec changes: every task runs.
    let exec2 = "head -n1; date +%s%N; echo $RANDOM$RANDOM; echo v2";
    let (fifth, _) = run_job(&cluster, &t, &spec(exec2, "out", true));
    assert_eq!(memoized(&fifth), 0, "{fifth}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_that_reads_through_its_endpoint_is_not_memoized() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("memo-reader").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("memoread");
    c.create_bucket(&b).await.unwrap();
    put(&c, &format!("/{b}/in/0"), b"input\n").await;
    put(&c, &format!("/{b}/table"), b"table v1\n").await;
    // Its output depends on an object it reads besides its input.
    let spec = json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": format!("cat; mget {b}/table") }],
        "inputs": [format!("{b}/in/0")],
        "output": format!("{b}/out/"),
        "memoize": true,
    });
    let (first, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&first), 0, "{first}");
    put(&c, &format!("/{b}/table"), b"table v2\n").await;
    let (second, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&second), 0, "{second}");
    let out = outputs(&c, second["id"].as_str().unwrap()).await;
    assert_eq!(
        out.values().next().map(|v| v.as_slice()),
        Some(&b"input\ntable v2\n"[..])
    );
}
