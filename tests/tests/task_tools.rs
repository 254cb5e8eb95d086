//! What a task can use besides its input (the task-tools issue): assets,
//! objects mounted read-only into every task of a phase; its own S3
//! endpoint, with the helpers `mget` and `mls`. The real binary, real
//! nodes, real containers under runc and, where installed, gVisor.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use insitu_e2e::sign::{sha256_hex, Signer};
use insitu_e2e::{
    gvisor_installed, insitu_bin, run_job, unique, wait_until, Cluster, RawClient, Tenant,
};

async fn put(c: &RawClient, path: &str, body: &[u8]) {
    let r = c.send("PUT", path, &[], &[], body.to_vec()).await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "PUT {path}: {text}");
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
    // Inputs until both nodes hold some (where an object goes is the
    // cluster's choice): at least 8.
    let mut inputs = Vec::new();
    let nodes_with_inputs = || {
        let nodes = cluster.data_dir().join("nodes");
        let mut with: Vec<String> = cluster
            .blob_files()
            .into_iter()
            .filter(|(_, size)| *size == 2)
            .filter_map(|(p, _)| {
                let rel = p.strip_prefix(&nodes).ok()?;
                Some(
                    rel.components()
                        .next()?
                        .as_os_str()
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .collect();
        with.sort();
        with.dedup();
        with.len()
    };
    for i in 0..64 {
        if i >= 8 && nodes_with_inputs() == 2 {
            break;
        }
        let key = format!("in/{i}");
        put(
            &c,
            &format!("/{bucket}/{key}"),
            if i % 2 == 0 { b"a\n" } else { b"b\n" },
        )
        .await;
        inputs.push(format!("{bucket}/{key}"));
    }
    assert_eq!(nodes_with_inputs(), 2, "every input landed on one node");
    let n = inputs.len();
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
        assert_eq!(status["counters"]["outputs"], n, "{runtime}: {status}");
        for i in 0..n {
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
        assert_eq!(total, 2 * n as u64 + 2 * assets, "{runtime}: {phase}");
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

fn runtimes() -> Vec<&'static str> {
    let mut r = vec!["runc"];
    if gvisor_installed() {
        r.push("runsc");
    } else {
        eprintln!("runsc is not installed here: checked under runc only");
    }
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_reads_what_its_tenant_may_read_through_its_endpoint() {
    // Two nodes, one replica: some objects a task reads are on its node,
    // others come from the other node.
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("reader").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("reader");
    c.create_bucket(&b).await.unwrap();
    for i in 0..6 {
        put(&c, &format!("/{b}/ref/{i}"), format!("r{i}\n").as_bytes()).await;
    }
    // More keys than one listing page.
    for i in 0..1003 {
        put(&c, &format!("/{b}/list/k{i:04}"), b"x").await;
    }
    let other = cluster.create_tenant("reader-other").expect("tenant");
    let oc = RawClient::new(&cluster.endpoint, &other);
    let ob = unique("other");
    oc.create_bucket(&ob).await.unwrap();
    put(&oc, &format!("/{ob}/secret.txt"), b"secret").await;
    let r = oc
        .send(
            "PUT",
            &format!("/{ob}/pub.txt"),
            &[],
            &[("x-amz-acl", "public-read")],
            b"public\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inputs: Vec<String> = (0..2).map(|i| format!("{b}/ref/{i}")).collect();
    let exec = format!(
        "cat >/dev/null; for i in 0 1 2 3 4 5; do mget {b}/ref/$i; done; \
         mls {b}/list/ | wc -l; mls {b}/list/k100 | head -1; \
         mget {ob}/pub.txt; \
         mget {ob}/secret.txt 2>&1 >/dev/null && echo LEAKED; \
         mget {b}/ref/missing 2>&1 >/dev/null && echo FOUND; \
         wget -O /dev/null http://127.0.0.1:9555/{b}/ref/0 2>&1 | grep -o 403 | head -1"
    );
    for runtime in runtimes() {
        let spec = serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "runtime": runtime, "exec": exec }],
            "inputs": inputs,
            "output": format!("{b}/out-{runtime}/"),
        });
        let (status, errors) = run_job(&cluster, &t, &spec);
        assert_eq!(status["state"], "done", "{runtime}: {status} {errors:?}");
        assert!(errors.is_empty(), "{runtime}: {errors:?}");
        let out = get_text(&c, &format!("{b}/out-{runtime}/{b}/ref/0")).await;
        let want = format!(
            "r0\nr1\nr2\nr3\nr4\nr5\n1003\n{b}/list/k1000\npublic\n\
             mget: {ob}/secret.txt: AccessDenied: Access Denied\n\
             mget: {b}/ref/missing: NoSuchKey: The specified key does not exist.\n403\n"
        );
        assert_eq!(out, want, "{runtime}");
    }
}

/// One HTTP/1.1 request over a Unix socket: status and body.
fn over_socket(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).expect("connect to the endpoint socket");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A refusal may come (and the endpoint close) before the body is
    // sent, as from any HTTP server: the answer is what counts.
    let _ = s.write_all(body);
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A request signed with `creds` (access key, secret) as any SDK would.
fn signed_over_socket(
    socket: &Path,
    creds: &(String, String),
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let signer = Signer::new(&creds.0, &creds.1);
    let host = "127.0.0.1:9555";
    let signed = signer.sign(
        method,
        path,
        &[],
        &[("host", host)],
        &sha256_hex(body),
        chrono::Utc::now(),
    );
    let mut headers = signed.headers.clone();
    headers.push(("host".into(), host.into()));
    over_socket(
        socket,
        method,
        &insitu_e2e::encode_path(path),
        &headers,
        body,
    )
}

fn creds_in(text: &str) -> Option<(String, String)> {
    let var = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    Some((var("AWS_ACCESS_KEY_ID")?, var("AWS_SECRET_ACCESS_KEY")?))
}

/// Files named `name` under `dir`, at any depth.
fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            find_files(&p, name, out);
        } else if e.file_name() == name {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn task_credentials_allow_reads_only_and_die_with_their_task() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("creds").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("creds");
    c.create_bucket(&b).await.unwrap();
    put(&c, &format!("/{b}/in/quick"), b"quick").await;
    put(&c, &format!("/{b}/in/slow"), b"slow").await;
    // Both tasks print their credentials; the slow one then stays alive.
    let exec = "env | grep '^AWS_'; if [ \"$(cat)\" = slow ]; then sleep 20; fi";
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
        "inputs": [format!("{b}/in/quick"), format!("{b}/in/slow")],
        "output": format!("{b}/out/"),
    });
    let file = cluster.dir.path().join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let job = Command::new(insitu_bin())
        .args(["job", "run", "--watch", "--spec", file.to_str().unwrap()])
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // The quick task's output (its credentials) is committed while the
    // slow one still runs in the same container.
    let quick_out = format!("{b}/out/{b}/in/quick");
    let mut quick = None;
    for _ in 0..150 {
        let r = c
            .send("GET", &format!("/{quick_out}"), &[], &[], Vec::new())
            .await
            .unwrap();
        if r.status() == 200 {
            quick = creds_in(&r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quick = quick.expect("the quick task's output, with its credentials");
    // The slow task's credentials, read from its stdout on the node.
    let tasks_dir = cluster.node_dir("node-0").join("tasks");
    let mut slow = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            let mut outs = Vec::new();
            find_files(&tasks_dir, "stdout", &mut outs);
            slow = outs
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .filter_map(|s| creds_in(&s))
                .find(|c| c.0 != quick.0);
            slow.is_some()
        }),
        "the slow task's stdout under {}",
        tasks_dir.display()
    );
    let slow = slow.unwrap();
    let mut sockets = Vec::new();
    find_files(&tasks_dir, "s3.sock", &mut sockets);
    assert_eq!(sockets.len(), 1, "one container, one endpoint: {sockets:?}");
    let socket = &sockets[0];

    // A running task reads what its tenant may read...
    let (status, body) = signed_over_socket(socket, &slow, "GET", &format!("/{b}/in/quick"), b"");
    assert_eq!((status, body.as_str()), (200, "quick"));
    // ...writes under its job's output place (a named output, staged)...
    let (status, text) = signed_over_socket(socket, &slow, "PUT", &format!("/{b}/out/extra"), b"x");
    assert_eq!(status, 200, "{text}");
    // ...and nothing else: no writes elsewhere, deletes or bucket operations.
    for (method, path, body) in [
        ("PUT", format!("/{b}/elsewhere"), b"x".as_slice()),
        ("DELETE", format!("/{b}/in/quick"), b"".as_slice()),
        ("PUT", format!("/{}", unique("newbucket")), b"".as_slice()),
        ("GET", "/".to_string(), b"".as_slice()),
    ] {
        let (status, text) = signed_over_socket(socket, &slow, method, &path, body);
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(
            text.contains("<Code>AccessDenied</Code>"),
            "{method} {path}: {text}"
        );
    }
    assert_eq!(get_text(&c, &format!("{b}/in/quick")).await, "quick");
    // A wrong secret, an unsigned request, or the ended task's own
    // credentials are refused on the same socket while it still serves.
    let forged = (slow.0.clone(), "not-the-secret".to_string());
    let (status, text) = signed_over_socket(socket, &forged, "GET", &format!("/{b}/in/quick"), b"");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    let (status, _) = over_socket(
        socket,
        "GET",
        &format!("/{b}/in/quick"),
        &[("host".into(), "x".into())],
        b"",
    );
    assert_eq!(status, 403);
    let (status, text) = signed_over_socket(socket, &quick, "GET", &format!("/{b}/in/quick"), b"");
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("InvalidAccessKeyId"), "{text}");
    // Task credentials are nothing to the gateway.
    let at_gateway = RawClient::new(
        &cluster.endpoint,
        &Tenant {
            tenant: "none".into(),
            access_key_id: slow.0.clone(),
            secret_access_key: slow.1.clone(),
        },
    );
    let r = at_gateway
        .send("GET", &format!("/{b}/in/quick"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let out = job.wait_with_output().unwrap();
    assert!(out.status.success(), "job run --watch failed");
    // The slow task's named output, committed with it.
    assert_eq!(get_text(&c, &format!("{b}/out/extra")).await, "x");
    // After the job, the endpoint is gone with its container.
    let mut left = Vec::new();
    find_files(&tasks_dir, "s3.sock", &mut left);
    assert!(left.is_empty(), "endpoint sockets left: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn named_outputs_are_committed_with_their_task_and_routed_to_reducers() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("named").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("named");
    c.create_bucket(&b).await.unwrap();
    let inputs: Vec<String> = (0..4).map(|i| format!("{b}/in/{i}")).collect();
    for i in 0..4 {
        put(&c, &format!("/{b}/in/{i}"), format!("a{i}").as_bytes()).await;
    }
    for runtime in runtimes() {
        // Map then 2 reducers: each map task writes three named outputs,
        // one routed to reducer 1, one also copied to its stdout.
        let map = "x=$(cat); echo \"one $x\" | mpipe one-$x; echo \"two $x\" | mpipe -r 1 two-$x; \
                   echo \"tee $x\" | mtee tee-$x; echo \"shared $x\" | mpipe shared; echo \"out $x\"";
        let spec = serde_json::json!({
            "phases": [
                { "type": "map", "image": "insitu-test/busybox:latest", "runtime": runtime, "exec": map },
                { "type": "reduce", "image": "insitu-test/busybox:latest", "runtime": runtime,
                  "count": 2, "exec": "sort" } ],
            "inputs": inputs,
            "output": format!("{b}/mr-{runtime}/"),
        });
        let (status, errors) = run_job(&cluster, &t, &spec);
        assert_eq!(status["state"], "done", "{runtime}: {status} {errors:?}");
        assert!(errors.is_empty(), "{runtime}: {errors:?}");
        let r0 = get_text(&c, &format!("{b}/mr-{runtime}/reduce.0")).await;
        let r1 = get_text(&c, &format!("{b}/mr-{runtime}/reduce.1")).await;
        let mut all: Vec<&str> = r0.lines().chain(r1.lines()).collect();
        all.sort();
        let mut want = Vec::new();
        for i in 0..4 {
            for kind in ["one", "two", "tee", "tee", "shared", "out"] {
                want.push(format!("{kind} a{i}"));
            }
        }
        want.sort();
        assert_eq!(all, want, "{runtime}: every output reached a reducer once");
        let routed: Vec<&str> = r1.lines().filter(|l| l.starts_with("two ")).collect();
        assert_eq!(
            routed.len(),
            4,
            "{runtime}: reducer 1 got every routed output: {r1}"
        );
        assert!(!r0.contains("two "), "{runtime}: {r0}");
        // One name from every task meets at one reducer.
        let shared = |r: &str| r.lines().filter(|l| l.starts_with("shared ")).count();
        assert!(
            (shared(&r0), shared(&r1)) == (4, 0) || (shared(&r0), shared(&r1)) == (0, 4),
            "{runtime}: {r0} / {r1}"
        );
    }

    // A final map phase: named outputs land under the output prefix, as
    // written, listed with the job's outputs; a failed task's are dropped;
    // a reducer is refused where the next phase is none.
    let map = "x=$(cat); if [ \"$x\" = a3 ]; then echo lost | mpipe lost-$x; exit 1; fi; \
               echo \"hello $x\" | mpipe greet/$x; echo z | mpipe -r 1 nope 2>&1; echo done";
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": map }],
        "inputs": inputs,
        "output": format!("{b}/final/"),
    });
    let (status, errors) = run_job(&cluster, &t, &spec);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(status["counters"]["outputs"], 6, "{status}");
    for i in 0..3 {
        assert_eq!(
            get_text(&c, &format!("{b}/final/greet/a{i}")).await,
            format!("hello a{i}\n")
        );
        let stdout = get_text(&c, &format!("{b}/final/{b}/in/{i}")).await;
        assert!(
            stdout.starts_with("mpipe: nope: InvalidArgument: x-insitu-reducer"),
            "{stdout}"
        );
        assert!(stdout.ends_with("done\n"), "{stdout}");
    }
    let r = c
        .send("GET", &format!("/{b}/final/lost-a3"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a failed task's named output is not visible"
    );
    let listed = Command::new(insitu_bin())
        .args(["job", "outputs", status["id"].as_str().unwrap()])
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&format!("{b}/final/greet/a0")), "{listed}");

    // With the bucket's root as the output place, the jobs' own objects
    // stay out of reach.
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "cat >/dev/null; echo x | mpipe _insitu/jobs/evil 2>&1; echo done" }],
        "inputs": [inputs[0].clone()],
        "output": format!("{b}/"),
    });
    let (status, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{status} {errors:?}");
    let out = get_text(&c, &format!("{b}/{b}/in/0")).await;
    assert_eq!(
        out,
        "mpipe: _insitu/jobs/evil: AccessDenied: _insitu/ is where jobs keep their own objects\ndone\n"
    );
}

fn job_command(cluster: &Cluster, t: &Tenant) -> Command {
    let mut cmd = Command::new(insitu_bin());
    cmd.arg("job")
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn job_logs_follow_shows_a_running_tasks_lines_while_it_runs() {
    // Two nodes, one replica: the tasks run on both, and the follower
    // reads every node.
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("logs").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("logs");
    c.create_bucket(&b).await.unwrap();
    let mut inputs = Vec::new();
    for i in 0..4 {
        put(&c, &format!("/{b}/in/{i}"), format!("doc{i}\n").as_bytes()).await;
        inputs.push(format!("{b}/in/{i}"));
    }
    // Each task says hello on stderr, then waits (through its endpoint)
    // for the test's go-ahead, says goodbye and ends.
    let exec = format!(
        "echo \"hello from $(cat)\" >&2; \
         n=0; until mget {b}/go >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 600 ] && exit 9; done; \
         echo \"goodbye $INSITU_INPUT_KEY\" >&2; [ \"$INSITU_INPUT_KEY\" = in/3 ] && exit 3; echo out"
    );
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
        "inputs": inputs,
        "output": format!("{b}/out/"),
    });
    let id = insitu_e2e::submit_job(&cluster, &t, &spec);

    let mut follower = job_command(&cluster, &t)
        .args(["logs", &id, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.iter().filter(|l| l.contains("hello from")).count() < 4 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("the follower did not show every task's first line: {seen:?}"),
        }
    }
    if let Ok(Some(code)) = follower.try_wait() {
        let mut err = String::new();
        follower
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        panic!("the follower ended before the job ({code}): {err}");
    }
    // Shown while the tasks still run: nothing has let them go yet.
    let status = job_command(&cluster, &t)
        .args(["status", &id])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["phases"][0]["tasks"]["done"], 0, "{status}");
    // Each line is labelled with its task and input, several tasks running.
    for i in 0..4 {
        let line = seen
            .iter()
            .find(|l| l.ends_with(&format!("hello from doc{i}")))
            .unwrap_or_else(|| panic!("no hello from doc{i}: {seen:?}"));
        assert!(
            line.starts_with('[') && line.contains(&format!(" {b}/in/{i}] ")),
            "{line}"
        );
    }
    // A snapshot (no --follow) of one task shows only that task's lines,
    // and ends while the job runs on.
    let task = seen[0][1..].split(' ').next().unwrap().to_string();
    let snapshot = job_command(&cluster, &t)
        .args(["logs", &id, "--task", &task])
        .output()
        .unwrap();
    assert!(
        snapshot.status.success(),
        "{}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    let snapshot = String::from_utf8_lossy(&snapshot.stdout).into_owned();
    assert_eq!(snapshot.lines().count(), 1, "{snapshot}");
    assert!(snapshot.starts_with(&format!("[{task} ")), "{snapshot}");

    put(&c, &format!("/{b}/go"), b"go").await;
    // The follower ends by itself once the job does, with every task's
    // last line (written just before each task ended).
    assert!(
        wait_until(Duration::from_secs(120), || matches!(
            follower.try_wait(),
            Ok(Some(_))
        )),
        "the follower did not end with the job"
    );
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    assert!(follower.wait().unwrap().success());
    // The failed task's last line came through as well.
    let status = job_command(&cluster, &t)
        .args(["status", &id])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["counters"]["errors"], 1, "{status}");
    for i in 0..4 {
        let byes = seen
            .iter()
            .filter(|l| l.ends_with(&format!("goodbye in/{i}")))
            .count();
        assert_eq!(byes, 1, "goodbye in/{i} once: {seen:?}");
    }
    assert_eq!(seen.len(), 8, "each line once: {seen:?}");
    // A job of another tenant's is not found.
    let other = cluster.create_tenant("logs-other").expect("tenant");
    let out = job_command(&cluster, &other)
        .args(["logs", &id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("ResourceNotFound"),
        "{err}"
    );
}

/// The nodes whose task directory holds a container's directory now.
fn nodes_running_tasks(cluster: &Cluster, nodes: usize) -> Vec<String> {
    (0..nodes)
        .map(|i| format!("node-{i}"))
        .filter(|id| {
            std::fs::read_dir(cluster.node_dir(id).join("tasks"))
                .map(|d| d.flatten().any(|e| e.path().is_dir()))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_killed_with_its_node_after_emitting_leaves_only_its_retrys_outputs() {
    // Three nodes, two replicas: the input has a second holder to rerun
    // on, and writes go on with one node gone.
    let cluster = Cluster::start_with(3, Some(2)).expect("cluster");
    let t = cluster.create_tenant("once").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("once");
    c.create_bucket(&b).await.unwrap();
    put(&c, &format!("/{b}/in/0"), b"x").await;
    // Every attempt marks what it writes with a mark of its own, emits two
    // named outputs, says so, then waits for the test's go-ahead.
    let exec = format!(
        "m=$(cat /proc/sys/kernel/random/uuid); cat >/dev/null; \
         echo \"a $m\" | mpipe part/a; echo \"b $m\" | mpipe part/b; \
         echo \"emitted $m\" >&2; \
         n=0; until mget {b}/go >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 600 ] && exit 9; done; \
         echo \"stdout $m\""
    );
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
        "inputs": [format!("{b}/in/0")],
        "output": format!("{b}/out/"),
    });
    let id = insitu_e2e::submit_job(&cluster, &t, &spec);
    // The first attempt's mark, once it has emitted its outputs.
    let emitted = |cluster: &Cluster| -> Vec<String> {
        let out = job_command(cluster, &t)
            .args(["logs", &id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split("emitted ").nth(1).map(str::to_string))
            .collect()
    };
    let mut first = Vec::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            first = emitted(&cluster);
            !first.is_empty()
        }),
        "the first attempt never said it emitted"
    );
    let first = first[0].clone();
    let running = nodes_running_tasks(&cluster, 3);
    assert_eq!(running.len(), 1, "one node runs the task: {running:?}");
    cluster.kill9_node(&running[0]);
    // The retry, on the other holder, emits with a mark of its own.
    let mut second = Vec::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            second = emitted(&cluster)
                .into_iter()
                .filter(|m| *m != first)
                .collect();
            !second.is_empty()
        }),
        "no retry emitted its outputs"
    );
    let second = second[0].clone();
    // A write may first be placed on the dead node and answer 503
    // ("retry"), as S3 clients expect: retried, as they do.
    let mut tries = 0;
    loop {
        let r = c
            .send("PUT", &format!("/{b}/go"), &[], &[], b"go".to_vec())
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap_or_default());
        tries += 1;
        assert!(tries < 20, "the go-ahead could not be written");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = job_command(&cluster, &t)
        .args(["wait", &id])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("wait: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["counters"]["errors"], 0, "{status}");
    assert!(
        status["counters"]["retries"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    // Exactly the retry's outputs, each once: the two named ones and stdout.
    let outputs = job_command(&cluster, &t)
        .args(["outputs", &id])
        .output()
        .unwrap();
    let mut listed: Vec<String> = String::from_utf8_lossy(&outputs.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut want = vec![
        format!("{b}/out/part/a"),
        format!("{b}/out/part/b"),
        format!("{b}/out/{b}/in/0"),
    ];
    want.sort();
    assert_eq!(listed, want, "each output listed once");
    assert_eq!(
        get_text(&c, &format!("{b}/out/part/a")).await,
        format!("a {second}\n")
    );
    assert_eq!(
        get_text(&c, &format!("{b}/out/part/b")).await,
        format!("b {second}\n")
    );
    assert_eq!(
        get_text(&c, &format!("{b}/out/{b}/in/0")).await,
        format!("stdout {second}\n")
    );
    // Nothing else under the output prefix: the killed attempt left
    // nothing visible.
    let r = c
        .send(
            "GET",
            &format!("/{b}"),
            &[("list-type", "2"), ("prefix", "out/")],
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let listing = r.text().await.unwrap();
    assert_eq!(listing.matches("<Key>").count(), 3, "{listing}");
    assert!(!listing.contains(&first));
}

/// The task of `an_sdk_in_the_task_uses_its_endpoint_unchanged`, run by
/// the image's own Python with boto3 configured only by the environment.
const BOTO3_TASK: &str = r#"
import os, sys
import boto3
from botocore.exceptions import ClientError

b = os.environ["B"]
word = sys.stdin.read().strip()
s3 = boto3.client("s3")
out_bucket, out_prefix = os.environ["INSITU_OUTPUT_PLACE"].split("/", 1)

table = dict(l.split("\t") for l in open("/insitu/assets/%s/tables/lookup.tsv" % b).read().splitlines())
side = s3.get_object(Bucket=b, Key="side/note.txt")["Body"].read().decode()
listed = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="in/")["Contents"]]

s3.put_object(Bucket=out_bucket, Key=out_prefix + "one-" + word, Body=("one %s\n" % word).encode())
s3.put_object(Bucket=out_bucket, Key=out_prefix + "two-" + word, Body=("two %s %s\n" % (word, table[word])).encode())
routed = boto3.client("s3")
def to_reducer_1(request, **kwargs):
    request.headers["x-insitu-reducer"] = "1"
routed.meta.events.register("before-sign.s3.PutObject", to_reducer_1)
routed.put_object(Bucket=out_bucket, Key=out_prefix + "routed-" + word, Body=("routed %s %s\n" % (word, side.strip())).encode())

refused = []
for what, call in [
    ("delete", lambda: s3.delete_object(Bucket=b, Key="side/note.txt")),
    ("create", lambda: s3.create_bucket(Bucket=b + "-more")),
    ("outside", lambda: s3.put_object(Bucket=b, Key="side/evil", Body=b"x")),
]:
    try:
        call()
        refused.append(what + "=allowed")
    except ClientError as e:
        refused.append("%s=%s" % (what, e.response["Error"]["Code"]))
print("stdout %s listed=%d %s" % (word, len(listed), " ".join(refused)))
"#;

/// A last phase's task that gives its output headers, and is refused
/// metadata over S3's 2 KiB.
const BOTO3_FINAL: &str = r#"
import os, sys
import boto3
from botocore.exceptions import ClientError

word = sys.stdin.read().strip()
s3 = boto3.client("s3")
out_bucket, out_prefix = os.environ["INSITU_OUTPUT_PLACE"].split("/", 1)
s3.put_object(Bucket=out_bucket, Key=out_prefix + "table.csv", Body=b"a,b\n1,2\n",
              ContentType="text/csv", ContentDisposition="attachment; filename=table.csv",
              Metadata={"origin": word})
try:
    s3.put_object(Bucket=out_bucket, Key=out_prefix + "big", Body=b"x", Metadata={"m": "v" * 3000})
    print("too-large=allowed")
except ClientError as e:
    print("too-large=%s" % e.response["Error"]["Code"])
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_sdk_in_the_task_uses_its_endpoint_unchanged() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("sdk").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let b = unique("sdk");
    c.create_bucket(&b).await.unwrap();
    put(&c, &format!("/{b}/code/task.py"), BOTO3_TASK.as_bytes()).await;
    put(
        &c,
        &format!("/{b}/tables/lookup.tsv"),
        b"a\tapple\nb\tbanana\n",
    )
    .await;
    put(&c, &format!("/{b}/side/note.txt"), b"noted\n").await;
    let words = ["a", "b", "a"];
    let mut inputs = Vec::new();
    for (i, w) in words.iter().enumerate() {
        put(&c, &format!("/{b}/in/{i}"), w.as_bytes()).await;
        inputs.push(format!("{b}/in/{i}"));
    }
    for runtime in runtimes() {
        let spec = serde_json::json!({
            "phases": [
                { "type": "map", "image": "insitu-test/python-boto3:latest", "runtime": runtime,
                  "exec": format!("python3 /insitu/assets/{b}/code/task.py"),
                  "env": { "B": b },
                  "assets": [format!("{b}/code/task.py"), format!("{b}/tables/lookup.tsv")] },
                { "type": "reduce", "image": "insitu-test/busybox:latest", "runtime": runtime,
                  "count": 2, "exec": "sort" } ],
            "inputs": inputs,
            "output": format!("{b}/sdk-{runtime}/"),
        });
        let (status, errors) = run_job(&cluster, &t, &spec);
        assert_eq!(status["state"], "done", "{runtime}: {status} {errors:?}");
        assert!(errors.is_empty(), "{runtime}: {errors:?}");
        let r0 = get_text(&c, &format!("{b}/sdk-{runtime}/reduce.0")).await;
        let r1 = get_text(&c, &format!("{b}/sdk-{runtime}/reduce.1")).await;
        let mut all: Vec<&str> = r0.lines().chain(r1.lines()).collect();
        all.sort();
        let mut want: Vec<String> = Vec::new();
        for w in words {
            let fruit = if w == "a" { "apple" } else { "banana" };
            want.push(format!("one {w}"));
            want.push(format!("two {w} {fruit}"));
            want.push(format!("routed {w} noted"));
            want.push(format!(
                "stdout {w} listed=3 delete=AccessDenied create=AccessDenied outside=AccessDenied"
            ));
        }
        want.sort();
        assert_eq!(all, want, "{runtime}: every output reached a reducer once");
        let routed = r1.lines().filter(|l| l.starts_with("routed ")).count();
        assert_eq!(
            routed, 3,
            "{runtime}: reducer 1 got every routed output: {r1}"
        );
        assert!(!r0.contains("routed "), "{runtime}: {r0}");
    }
    // In a last phase a named output keeps the headers its PUT gave it.
    put(&c, &format!("/{b}/code/final.py"), BOTO3_FINAL.as_bytes()).await;
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/python-boto3:latest",
                     "exec": format!("python3 /insitu/assets/{b}/code/final.py"),
                     "assets": [format!("{b}/code/final.py")] }],
        "inputs": [inputs[0].clone()],
        "output": format!("{b}/typed/"),
    });
    let (status, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{status} {errors:?}");
    let r = c
        .send(
            "HEAD",
            &format!("/{b}/typed/table.csv"),
            &[],
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/csv");
    assert_eq!(
        header("content-disposition"),
        "attachment; filename=table.csv"
    );
    assert_eq!(header("x-amz-meta-origin"), "a");
    let out = get_text(&c, &format!("{b}/typed/{b}/in/0")).await;
    assert_eq!(out, "too-large=MetadataTooLarge\n", "{out}");

    // The refused calls changed nothing.
    assert_eq!(get_text(&c, &format!("{b}/side/note.txt")).await, "noted\n");
    let r = c
        .send("HEAD", &format!("/{b}/side/evil"), &[], &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_map_job_reads_an_asset_and_an_object_writes_named_outputs_and_references_one() {
    let cluster = Cluster::start_with(2, Some(1)).expect("cluster");
    let t = cluster.create_tenant("mcat").expect("tenant");
    let other = cluster.create_tenant("mcat-other").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let o = RawClient::new(&cluster.endpoint, &other);
    let b = unique("mcat");
    c.create_bucket(&b).await.unwrap();
    let private = unique("mcat-private");
    o.create_bucket(&private).await.unwrap();
    put(&o, &format!("/{private}/secret"), b"SECRET\n").await;
    put(&c, &format!("/{b}/tables/t.txt"), b"T").await;
    put(&c, &format!("/{b}/side/note.txt"), b"S").await;
    let inputs: Vec<String> = (0..4).map(|i| format!("{b}/in/{i}")).collect();
    for i in 0..4 {
        put(&c, &format!("/{b}/in/{i}"), format!("a{i}").as_bytes()).await;
    }
    for runtime in runtimes() {
        for i in 0..4 {
            let body = format!("ref a{i}\n");
            put(&c, &format!("/{b}/refs/a{i}.txt"), body.as_bytes()).await;
        }
        // Each map task: an asset, an object read with mget, three named
        // outputs (one routed to reducer 1), and one reference, after
        // which it waits: the referenced objects are then overwritten, and
        // the reducers must read the versions referenced.
        let go = format!("go-{runtime}");
        let map = format!(
            "x=$(cat); t=$(cat /insitu/assets/{b}/tables/t.txt); s=$(mget {b}/side/note.txt); \
             echo \"one $x $t\" | mpipe one-$x; echo \"two $x $s\" | mpipe two-$x; \
             echo \"routed $x\" | mpipe -r 1 routed-$x; mcat {b}/refs/$x.txt; echo \"emitted $x\" >&2; \
             n=0; until mget {b}/{go} >/dev/null 2>&1; do sleep 0.2; n=$((n+1)); [ $n -gt 600 ] && exit 9; done; true"
        );
        let spec = serde_json::json!({
            "phases": [
                { "type": "map", "image": "insitu-test/busybox:latest", "runtime": runtime,
                  "exec": map, "assets": [format!("{b}/tables/t.txt")] },
                { "type": "reduce", "image": "insitu-test/busybox:latest", "runtime": runtime,
                  "count": 2, "exec": "sort" } ],
            "inputs": inputs,
            "output": format!("{b}/mc-{runtime}/"),
        });
        let id = insitu_e2e::submit_job(&cluster, &t, &spec);
        assert!(
            wait_until(Duration::from_secs(120), || {
                let out = job_command(&cluster, &t)
                    .args(["logs", &id])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .matches("emitted a")
                    .count()
                    == 4
            }),
            "{runtime}: the map tasks never all emitted"
        );
        for i in 0..4 {
            put(&c, &format!("/{b}/refs/a{i}.txt"), b"CHANGED\n").await;
        }
        put(&c, &format!("/{b}/{go}"), b"go").await;
        let out = job_command(&cluster, &t)
            .args(["wait", &id])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(status["state"], "done", "{runtime}: {status}");
        let errors = job_command(&cluster, &t)
            .args(["errors", &id])
            .output()
            .unwrap();
        assert_eq!(
            status["counters"]["errors"],
            0,
            "{runtime}: {status} {}",
            String::from_utf8_lossy(&errors.stdout)
        );
        let r0 = get_text(&c, &format!("{b}/mc-{runtime}/reduce.0")).await;
        let r1 = get_text(&c, &format!("{b}/mc-{runtime}/reduce.1")).await;
        let mut all: Vec<&str> = r0.lines().chain(r1.lines()).collect();
        all.sort();
        let mut want = Vec::new();
        for i in 0..4 {
            want.push(format!("one a{i} T"));
            want.push(format!("two a{i} S"));
            want.push(format!("routed a{i}"));
            want.push(format!("ref a{i}"));
        }
        want.sort();
        assert_eq!(
            all, want,
            "{runtime}: each output once, references as referenced"
        );
        assert_eq!(
            r1.lines().filter(|l| l.starts_with("routed ")).count(),
            4,
            "{runtime}: {r1}"
        );
        assert!(!r0.contains("routed "), "{runtime}: {r0}");
        // The final outputs, listed by name.
        let listed = job_command(&cluster, &t)
            .args(["outputs", &id])
            .output()
            .unwrap();
        let mut listed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                format!("{b}/mc-{runtime}/reduce.0"),
                format!("{b}/mc-{runtime}/reduce.1")
            ]
        );
    }

    // In a last phase a reference is listed as the object itself, with its
    // ETag, and nothing is copied; another tenant's private object is
    // refused.
    put(&c, &format!("/{b}/refs/final.txt"), b"final\n").await;
    let map =
        format!("cat >/dev/null; mcat {b}/refs/final.txt; mcat {private}/secret 2>&1; echo done");
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": map }],
        "inputs": [inputs[0].clone()],
        "output": format!("{b}/last/"),
    });
    let (status, errors) = run_job(&cluster, &t, &spec);
    assert!(errors.is_empty(), "{status} {errors:?}");
    let id = status["id"].as_str().unwrap().to_string();
    let outputs = c
        .get_json(&format!("/_insitu/v1/jobs/{id}/outputs"))
        .await
        .unwrap();
    let outputs = outputs["outputs"].as_array().unwrap().clone();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    let reference = outputs
        .iter()
        .find(|o| o["object"] == format!("{b}/refs/final.txt"))
        .unwrap_or_else(|| panic!("the reference is listed: {outputs:?}"));
    assert_eq!(reference["size"], 6);
    assert!(
        reference["etag"].as_str().is_some_and(|e| e.len() == 32),
        "{reference}"
    );
    let stdout = get_text(&c, &format!("{b}/last/{b}/in/0")).await;
    assert!(
        stdout.starts_with(&format!("mcat: {private}/secret: AccessDenied")),
        "{stdout}"
    );
    let r = c
        .send(
            "GET",
            &format!("/{b}"),
            &[("list-type", "2"), ("prefix", "last/")],
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let listing = r.text().await.unwrap();
    assert_eq!(
        listing.matches("<Key>").count(),
        1,
        "only stdout was written: {listing}"
    );
}
