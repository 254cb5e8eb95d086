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

/// The last phase's reducers of a memoizing job: reused when their input
/// pieces are identical by ETag, whether the upstream map tasks ran again
/// (an earlier phase is not memoized) or not; a changed piece reruns only
/// the reducer it goes to.
#[tokio::test(flavor = "multi_thread")]
async fn reducers_are_memoized_when_their_pieces_are_identical_by_etag() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("memo-reduce").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("memored");
    c.create_bucket(&b).await.unwrap();
    for i in 0..4 {
        put(
            &c,
            &format!("/{b}/in/{i}"),
            format!("apple pear fig{i}\nplum kiwi\n").as_bytes(),
        )
        .await;
    }
    // Each reducer run writes something no other run writes.
    let reduce = "sort | uniq -c; date +%s%N; echo $RANDOM$RANDOM";
    let spec = |map: &str, reduce: &str, partition: &str| {
        json!({
            "phases": [
                { "type": "map", "image": "insitu-test/busybox:latest", "exec": map },
                { "type": "reduce", "image": "insitu-test/busybox:latest", "exec": reduce,
                  "count": 2, "partition": partition },
            ],
            "input_prefix": format!("{b}/in/"),
            "output": format!("{b}/{partition}/"),
            "memoize": true,
        })
    };
    let reduced = |s: &Value| {
        s["phases"][1]["tasks"]["memoized"]
            .as_u64()
            .unwrap_or(u64::MAX)
    };
    let map = "tr ' ' '\\n'";
    for partition in ["key", "object"] {
        let (first, errors) = run_job(&cluster, &t, &spec(map, reduce, partition));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(reduced(&first), 0, "{first}");
        let first_out = outputs(&c, first["id"].as_str().unwrap()).await;
        assert_eq!(first_out.len(), 2, "{first_out:?}");

        // Again: the maps run (an earlier phase), make the same pieces,
        // and both reducers are reused, byte for byte.
        let (second, errors) = run_job(&cluster, &t, &spec(map, reduce, partition));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(second["phases"][0]["tasks"]["memoized"], 0, "{second}");
        assert_eq!(reduced(&second), 2, "{second}");
        assert_eq!(second["counters"]["tasks"]["memoized"], 2, "{second}");
        assert_eq!(outputs(&c, second["id"].as_str().unwrap()).await, first_out);

        // Another map exec with the same output: the pieces are identical
        // by ETag, so the reducers are still reused.
        let same = "cat | tr ' ' '\\n'";
        let (third, errors) = run_job(&cluster, &t, &spec(same, reduce, partition));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(reduced(&third), 2, "{third}");
        assert_eq!(outputs(&c, third["id"].as_str().unwrap()).await, first_out);

        // Another reduce exec: both run.
        let reduce2 = format!("{reduce}; echo v2");
        let (fourth, errors) = run_job(&cluster, &t, &spec(map, &reduce2, partition));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(reduced(&fourth), 0, "{fourth}");
    }

    // The `v2` run wrote its outputs over the remembered ones (the same
    // keys): those entries no longer hold, and both reducers run.
    let (before, _) = run_job(&cluster, &t, &spec(map, reduce, "key"));
    assert_eq!(reduced(&before), 0, "{before}");
    // By key, one new word in one input changes one piece: only the
    // reducer it goes to runs; the other is reused as it was.
    let before_out = outputs(&c, before["id"].as_str().unwrap()).await;
    put(
        &c,
        &format!("/{b}/in/2"),
        b"apple pear fig2\nplum kiwi\nquince\n",
    )
    .await;
    let (after, errors) = run_job(&cluster, &t, &spec(map, reduce, "key"));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(reduced(&after), 1, "{after}");
    let after_out = outputs(&c, after["id"].as_str().unwrap()).await;
    assert_eq!(after_out.len(), 2, "{after_out:?}");
    let with_quince: Vec<_> = after_out
        .iter()
        .filter(|(_, v)| String::from_utf8_lossy(v).contains("quince"))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(with_quince.len(), 1, "{after_out:?}");
    for (k, v) in &after_out {
        if with_quince.contains(k) {
            assert_ne!(Some(v), before_out.get(k), "{k} was not rerun");
        } else {
            assert_eq!(Some(v), before_out.get(k), "{k} was rerun");
        }
    }
}

/// The gateway's count of memo entries dropped as a blob they name was
/// collected.
async fn forgotten(cluster: &Cluster) -> u64 {
    let text = reqwest::get(format!("{}/_insitu/v1/metrics", cluster.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("insitu_memo_entries_forgotten_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("insitu_memo_entries_forgotten_total")
}

/// An entry follows its output: deleting the output drops the entry when
/// the output's blob is collected, not only when the entry is next looked
/// up.
#[tokio::test(flavor = "multi_thread")]
async fn a_memo_entry_goes_when_its_output_is_collected() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("memo-gc").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("memogc");
    c.create_bucket(&b).await.unwrap();
    put(&c, &format!("/{b}/in/0"), b"input\n").await;
    let spec = json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": "cat" }],
        "inputs": [format!("{b}/in/0")],
        "output": format!("{b}/out/"),
        "memoize": true,
    });
    let (first, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{errors:?}");
    let out = outputs(&c, first["id"].as_str().unwrap()).await;
    let object = out.keys().next().expect("an output").clone();
    assert_eq!(forgotten(&cluster).await, 0);
    let r = c
        .send("DELETE", &format!("/{object}"), &[], &[], vec![])
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Collected after the dev cluster's grace of 5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while forgotten(&cluster).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the entry was not dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(forgotten(&cluster).await, 1);
    let (second, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(memoized(&second), 0, "{second}");
    assert_eq!(outputs(&c, second["id"].as_str().unwrap()).await, out);
}
