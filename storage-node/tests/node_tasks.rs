//! A storage node runs a task next to a blob it holds and stores the task's
//! output as a blob, through its HTTP API, with real Docker.

use std::time::Duration;

use insitu_storage_node::task_api::{TaskEndReport, TaskRequest, TaskResponse};
use insitu_storage_node::{Node, NodeConfig};

const SECRET: &str = "node-task-test-secret";

async fn start_node(dir: &std::path::Path, id: &str) -> String {
    let node = Node::bind(NodeConfig {
        node_id: id.into(),
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        gateways: Vec::new(),
        cluster_secret: SECRET.into(),
        capacity_bytes: None,
        heartbeat_interval: Duration::from_secs(1),
        scrub_interval: None,
        server: Default::default(),
        task_tools: None,
    })
    .await
    .unwrap();
    let url = node.advertised_url();
    tokio::spawn(node.serve(std::future::pending()));
    url
}

fn request(task_id: &str, exec: &str, input: Option<&str>, job: &str) -> TaskRequest {
    TaskRequest {
        tenant: "acme".into(),
        job: job.into(),
        phase: 0,
        image: "insitu-test/busybox:latest".into(),
        image_blob: None,
        runtime: None,
        memory_mb: 128,
        cpus: 1.0,
        disk_mb: 32,
        output_mb: 0,
        timeout_s: 20,
        task_id: task_id.into(),
        exec: exec.into(),
        input_blob: input.map(str::to_string),
        env: vec![("INSITU_INPUT_KEY".into(), "books/a.txt".into())],
        stdout_blob: format!("{task_id}out"),
        stderr_blob: format!("{task_id}err"),
        split: None,
        init: None,
        input_stream: false,
        assets: Vec::new(),
        output_place: None,
        next_reducers: None,
        task_name: task_id.to_string(),
        input_name: input.unwrap_or("").to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_runs_tasks_on_its_blobs_and_keeps_their_output() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = format!("tasknode{}", std::process::id());
    let url = start_node(dir.path(), &node_id).await;
    let http = reqwest::Client::new();
    let job = format!("job{}", std::process::id());

    let r = http
        .put(format!("{url}/v1/blobs/inputblob1"))
        .bearer_auth(SECRET)
        .body("the cat\nthe hat\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let run = |req: TaskRequest| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(format!("{url}/v1/tasks"))
                .bearer_auth(SECRET)
                .json(&req)
                .send()
                .await
                .unwrap()
        }
    };
    let resp: TaskResponse = run(request(
        "t1",
        "tr a-z A-Z; echo \"$INSITU_INPUT_KEY\"",
        Some("inputblob1"),
        &job,
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(resp.end, TaskEndReport::Exited { code: 0 });
    assert!(!resp.stderr_kept);
    let out = http
        .get(format!("{url}/v1/blobs/t1out"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(out, "THE CAT\nTHE HAT\nbooks/a.txt\n");
    assert_eq!(resp.stdout_size, out.len() as u64);

    // A failing task keeps its stderr as a blob too.
    let resp: TaskResponse = run(request(
        "t2",
        "echo broken >&2; exit 7",
        Some("inputblob1"),
        &job,
    ))
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(resp.end, TaskEndReport::Exited { code: 7 });
    assert!(resp.stderr_kept);
    let err = http
        .get(format!("{url}/v1/blobs/t2err"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(err, "broken\n");

    // A timed-out task gets a fresh container for the next task.
    let mut slow = request("t3", "sleep 30", None, &job);
    slow.timeout_s = 1;
    let resp: TaskResponse = run(slow).await.json().await.unwrap();
    assert_eq!(resp.end, TaskEndReport::TimedOut);
    let resp: TaskResponse = run(request("t4", "echo again", None, &job))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp.end, TaskEndReport::Exited { code: 0 });

    // Split output: each line goes to the piece of its key's reducer, and
    // every piece is a blob with its MD5.
    let mut split = request(
        "t8",
        "for w in apple pear fig kiwi plum lime apple fig; do printf '%s\\t1\\n' $w; done",
        None,
        &job,
    );
    split.split = Some(3);
    let resp: TaskResponse = run(split).await.json().await.unwrap();
    assert_eq!(resp.end, TaskEndReport::Exited { code: 0 });
    assert!(!resp.pieces.is_empty());
    let mut lines = Vec::new();
    let mut total = 0;
    for p in &resp.pieces {
        let body = http
            .get(format!("{url}/v1/blobs/{}", p.blob))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(p.blob, format!("t8out-r{}", p.reducer));
        assert_eq!(body.len() as u64, p.size);
        assert_eq!(p.md5.len(), 32);
        total += p.size;
        for line in body.split_inclusive(|b| *b == b'\n') {
            assert_eq!(
                insitu_job_model::plan::reducer_for_line(line, 3),
                p.reducer,
                "{:?}",
                String::from_utf8_lossy(line)
            );
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
    }
    assert_eq!(resp.stdout_size, total);
    lines.sort();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines.iter().filter(|l| l.starts_with("apple\t")).count(), 2);

    // Errors are precise.
    let r = run(request("t5", "cat", Some("nosuchblob"), &job)).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ResourceNotFoundError");
    let mut bad = request("t6", "cat", None, &format!("{job}x"));
    bad.image = "127.0.0.1:9/nothing:here".into();
    let r = run(bad).await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ImageNotFoundError");
    let r = http
        .post(format!("{url}/v1/tasks"))
        .json(&request("t7", "true", None, &job))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the cluster secret is required");

    let r = http
        .delete(format!("{url}/v1/groups/acme/{job}/0"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn images_stored_as_objects_are_loaded_and_used() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let node_id = format!("imgnode{}", std::process::id());
    let url = start_node(dir.path(), &node_id).await;
    let http = reqwest::Client::new();
    let job = format!("imgjob{}", std::process::id());

    // A `docker save` tarball of an image the engine does not have.
    let tag = format!("insitu-test/saved-{}:v1", std::process::id());
    let docker = |args: &[&str]| {
        Command::new("docker")
            .args(args)
            .output()
            .expect("docker CLI")
    };
    assert!(docker(&["tag", "insitu-test/busybox:latest", &tag])
        .status
        .success());
    let tar = dir.path().join("image.tar");
    assert!(docker(&["save", "-o", tar.to_str().unwrap(), &tag])
        .status
        .success());
    assert!(docker(&["rmi", &tag]).status.success());
    assert!(
        !docker(&["image", "inspect", &tag]).status.success(),
        "the tag is gone before the load"
    );

    let bytes = std::fs::read(&tar).unwrap();
    let r = http
        .put(format!("{url}/v1/blobs/imagetarball"))
        .bearer_auth(SECRET)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut req = request("i1", "echo from-object-image", None, &job);
    req.image = "unused/name:tag".into();
    req.image_blob = Some("imagetarball".into());
    let resp: TaskResponse = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(SECRET)
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        resp.end,
        TaskEndReport::Exited { code: 0 },
        "{}",
        resp.stderr_preview
    );
    let out = http
        .get(format!("{url}/v1/blobs/i1out"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(out, "from-object-image\n");
    // Private to this node: named after its task directory.
    let root = dir.path().join("tasks");
    let private = format!(
        "insitu-loaded/n{:016x}-imagetarball:latest",
        insitu_job_model::plan::stable_hash(root.to_string_lossy().as_bytes())
    );
    assert!(
        docker(&["image", "inspect", &private]).status.success(),
        "the image was loaded from the object, under a node-private name"
    );
    assert!(
        !docker(&["image", "inspect", &tag]).status.success(),
        "the tarball's own tag was not left for others to use"
    );
    // Deleting the object's blob drops its image (once no container uses
    // it: the group ends first).
    let r = http
        .delete(format!("{url}/v1/groups/acme/{job}/0"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http
        .delete(format!("{url}/v1/blobs/imagetarball"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while docker(&["image", "inspect", &private]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the image of a deleted object was left behind"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A blob that is not an image archive.
    let r = http
        .put(format!("{url}/v1/blobs/notanimage"))
        .bearer_auth(SECRET)
        .body("plain text")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut bad = request("i2", "true", None, &format!("{job}b"));
    bad.image_blob = Some("notanimage".into());
    let r = http
        .post(format!("{url}/v1/tasks"))
        .bearer_auth(SECRET)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "ImageNotFoundError");

    let _ = http
        .delete(format!("{url}/v1/groups/acme/{job}/0"))
        .bearer_auth(SECRET)
        .send()
        .await;
    let _ = docker(&["rmi", &tag]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_input_is_fed_while_the_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node_id = format!("streamnode{}", std::process::id());
    let url = start_node(dir.path(), &node_id).await;
    let http = reqwest::Client::new();
    let job = format!("sjob{}", std::process::id());
    let r = http
        .put(format!("{url}/v1/blobs/piece1"))
        .bearer_auth(SECRET)
        .body("a\nb\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut req = request("s1", "cat; echo done", None, &job);
    req.input_stream = true;
    let task = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            http.post(format!("{url}/v1/tasks"))
                .bearer_auth(SECRET)
                .json(&req)
                .send()
                .await
                .unwrap()
                .json::<TaskResponse>()
                .await
                .unwrap()
        })
    };
    let stream = format!("{url}/v1/streams/acme/{job}/s1");
    // A local blob, then bytes sent in the request, in order.
    let r = http
        .post(format!("{stream}/append?blob=piece1"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{stream}/append"))
        .bearer_auth(SECRET)
        .body("c\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The task has not seen the end of its input yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    let r = http
        .post(format!("{stream}/end"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let resp = task.await.unwrap();
    assert_eq!(resp.end, TaskEndReport::Exited { code: 0 });
    let out = http
        .get(format!("{url}/v1/blobs/s1out"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(out, "a\nb\nc\ndone\n");
    let _ = http
        .delete(format!("{url}/v1/groups/acme/{job}/0"))
        .bearer_auth(SECRET)
        .send()
        .await;
}
