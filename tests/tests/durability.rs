//! kill -9 of the gateway and every node during a stream of PUTs: every
//! acknowledged object survives byte for byte and nothing partial appears.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use insitu_e2e::{content_for, size_in_key, unique, Cluster, RawClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_kill_9() {
    let mut cluster = Cluster::start(3).expect("cluster");
    let t = cluster.create_tenant("durable").expect("tenant");
    let bucket = unique("dur");
    let client = Arc::new(RawClient::new(&cluster.endpoint, &t));
    client.create_bucket(&bucket).await.unwrap();

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = client.clone();
        let acked = acked.clone();
        let bucket = bucket.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let size = 1000 + (i * 7919 + w * 104729) % 400_000;
                let key = format!("w{w}/obj-{i}-{size}");
                match client
                    .send(
                        "PUT",
                        &format!("/{bucket}/{key}"),
                        &[],
                        &[],
                        content_for(&key, size),
                    )
                    .await
                {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(key),
                    Ok(_) | Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cluster.kill9_nodes();
    cluster.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the writers made progress before the crash: {}",
        acked.len()
    );

    cluster.restart().expect("restart");
    assert_eq!(
        cluster.temp_files(),
        0,
        "temp files of interrupted writes are gone after restart"
    );
    let client = RawClient::new(&cluster.endpoint, &t);
    for key in &acked {
        let r = client
            .send("GET", &format!("/{bucket}/{key}"), &[], &[], vec![])
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged {key} lost");
        let body = r.bytes().await.unwrap();
        assert!(
            body.as_ref() == content_for(key, size_in_key(key)).as_slice(),
            "acknowledged {key} corrupted"
        );
    }

    // Every visible object (acknowledged or not) is complete and correct.
    let mut token: Option<String> = None;
    let mut seen = 0;
    loop {
        let mut q = vec![("list-type", "2".to_string())];
        if let Some(t) = &token {
            q.push(("continuation-token", t.clone()));
        }
        let qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let text = client
            .send("GET", &format!("/{bucket}"), &qr, &[], vec![])
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for part in text.split("<Key>").skip(1) {
            let key = part.split("</Key>").next().unwrap();
            let r = client
                .send("GET", &format!("/{bucket}/{key}"), &[], &[], vec![])
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert!(
                r.bytes().await.unwrap().as_ref() == content_for(key, size_in_key(key)).as_slice(),
                "visible {key} is partial or wrong"
            );
            seen += 1;
        }
        token = text
            .split("<NextContinuationToken>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert!(
        seen >= acked.len(),
        "listing shows every acknowledged object ({seen} < {})",
        acked.len()
    );
}
