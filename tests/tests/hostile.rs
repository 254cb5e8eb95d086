//! Hostile tasks, as real jobs in real containers: each attack must fail,
//! and the node must stay healthy (the job goes on and completes).

use std::process::Command;

use std::time::Duration;

use insitu_e2e::{insitu_bin, job_cli, unique, wait_until, Cluster, RawClient, Tenant};

/// One attack per input key, run one after another in one node's
/// container (one task slot), so a container destroyed by one attack is
/// replaced for the next.
const ATTACKS: &str = r#"
case "$INSITU_INPUT_KEY" in
  symlink)
    # Make the node read a host file as root through our stdout.
    out=$(readlink /proc/$$/fd/1); rm -f "$out"; ln -s /etc/shadow "$out"; echo "planted at $out" >&2 ;;
  network)
    n=$(ls /sys/class/net | tr '\n' ' ')
    # The gateway, the storage node and the test's own listeners are all on
    # the host's loopback.
    r=""
    for t in "gateway $GATEWAY_PORT" "node $NODE_PORT" "listener $HOST_TCP_PORT"; do
      # Refused is 1; a connection that stays open is cut at 3 s.
      set -- $t; timeout 3 nc -w 2 127.0.0.1 "$2" </dev/null >/dev/null 2>&1; [ $? = 1 ] || r="$r $1"
    done
    wget -q -T 2 -O - "http://127.0.0.1:$GATEWAY_PORT/_insitu/v1/health" >/dev/null 2>&1 && r="$r http"
    echo hostile | nc -u -w 1 127.0.0.1 "$HOST_UDP_PORT" >/dev/null 2>&1
    echo "isolated: $n${r:+reached:$r}"
    echo "routes: $(($(wc -l < /proc/net/route) - 1))" ;;
  remount)
    mount -o remount,rw / 2>/dev/null && echo remounted
    mkdir -p /tmp/m && mount -t tmpfs none /tmp/m 2>/dev/null && echo mounted
    chmod 666 "$INSITU_INPUT_FILE" 2>/dev/null && echo chmod-input
    chmod 777 /bin 2>/dev/null && echo chmod-rootfs
    echo done ;;
  proc)
    # Through /proc: other processes' roots and working directories, and
    # their environments.
    for p in /proc/[0-9]*; do
      cat "$p/root$SECRET_BLOB" "$p/cwd$SECRET_BLOB" 2>/dev/null
      ls "$p/root$DATA_DIR" 2>/dev/null
    done
    grep -rls "TOP""SECRET" /proc/[0-9]*/root/insitu /proc/[0-9]*/environ /var/lib/docker 2>/dev/null | head -1
    echo done ;;
  rootfs)
    (touch /bin/planted || chmod 777 /bin) 2>/dev/null && echo writable || echo read-only ;;
  input)
    (echo x >> "$INSITU_INPUT_FILE") 2>/dev/null && echo writable || echo read-only ;;
  outdir)
    # More files than stdout and stderr: output space past its cap.
    d=$(dirname "$(readlink /proc/$$/fd/1)")
    (touch /insitu/out/extra || touch "$d/extra") 2>/dev/null && echo writable || echo read-only ;;
  guess)
    # Another tenant's blob, by its path on the node, and the node's data.
    cat "$SECRET_BLOB" 2>/dev/null || echo unreachable
    ls "$DATA_DIR" >/dev/null 2>&1 && echo listed || echo no-data-dir
    grep -rl "TOP""SECRET" /insitu /tmp 2>/dev/null | head -1 ;;
  setuid)
    # A setuid copy of the shell: /tmp is nosuid and noexec, and the copy
    # is the task user's own anyway.
    cp /bin/busybox /tmp/sh 2>/dev/null; chmod 4755 /tmp/sh 2>/dev/null
    /tmp/sh id -u 2>/dev/null || id -u ;;
  escalate)
    id -u; grep CapEff /proc/self/status; (cat /etc/shadow /proc/1/root/etc/shadow) 2>/dev/null | wc -c ;;
  stray)
    setsid sleep 1000 & echo started ;;
  afterstray)
    ps | grep -v grep | grep -c "sleep 1000" || true ;;
  fill)
    dd if=/dev/zero of=/tmp/fill bs=1M count=400 ;;
  hog)
    dd if=/dev/zero of=/dev/null bs=600M count=1 ;;
  forkbomb)
    i=0; while [ $i -lt 700 ]; do sleep 5 & i=$((i + 1)); done; wait ;;
  after)
    echo still-serving ;;
esac"#;

/// Whether any process on the host runs this command line.
fn host_runs(cmdline: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tasks_fail_and_the_node_stays_healthy() {
    hostile_suite(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tasks_fail_under_gvisor_too() {
    if !insitu_e2e::gvisor_installed() {
        eprintln!("runsc is not registered with Docker here; gVisor is covered where it is");
        return;
    }
    hostile_suite(Some("runsc")).await;
}

async fn hostile_suite(runtime: Option<&str>) {
    let cluster = Cluster::start_with_args(1, Some(1), &["--task-slots", "1"]).expect("cluster");
    let t = cluster.create_tenant("mallory").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("hostile");
    c.create_bucket(&bucket).await.unwrap();
    // Another tenant's secret, on the same node.
    let victim = cluster.create_tenant("victim").expect("tenant");
    let vc = RawClient::new(&cluster.endpoint, &victim);
    let vbucket = unique("victim");
    vc.create_bucket(&vbucket).await.unwrap();
    let secret = format!("TOPSECRET-{}", unique("s"));
    vc.send(
        "PUT",
        &format!("/{vbucket}/secret"),
        &[],
        &[],
        secret.clone().into_bytes(),
    )
    .await
    .unwrap();
    let secret_blob = cluster
        .blob_files()
        .into_iter()
        .find(|(p, _)| std::fs::read(p).is_ok_and(|b| b == secret.as_bytes()))
        .map(|(p, _)| p)
        .expect("the secret's blob file");
    // Listeners on the host's loopback that no task may reach.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    udp.set_nonblocking(true).unwrap();
    let nodes = cluster.admin(&["nodes"]).expect("nodes");
    let node_port: u16 = nodes["nodes"][0]["addr"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("a node address in {nodes}"));
    let cases = [
        "symlink",
        "outdir",
        "guess",
        "network",
        "remount",
        "proc",
        "rootfs",
        "input",
        "escalate",
        "setuid",
        "stray",
        "afterstray",
        "fill",
        "hog",
        "forkbomb",
        "after",
    ];
    for k in cases {
        let r = c
            .send(
                "PUT",
                &format!("/{bucket}/{k}"),
                &[],
                &[],
                b"data\n".to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": ATTACKS, "memory_mb": 256, "runtime": runtime,
                     "timeout_s": 60,
                     "env": { "GATEWAY_PORT": cluster.port().to_string(),
                              "NODE_PORT": node_port.to_string(),
                              "HOST_TCP_PORT": tcp.local_addr().unwrap().port().to_string(),
                              "HOST_UDP_PORT": udp.local_addr().unwrap().port().to_string(),
                              "SECRET_BLOB": secret_blob.display().to_string(),
                              "DATA_DIR": cluster.data_dir().display().to_string() } }],
        "inputs": cases.iter().map(|k| format!("{bucket}/{k}")).collect::<Vec<_>>(),
        "output": format!("{bucket}/o/"),
    });
    let spec_file = cluster.dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = job_cli(
        &cluster,
        &t,
        &["run", "--spec", spec_file.to_str().unwrap(), "--watch"],
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        status["state"],
        "done",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = status["id"].as_str().unwrap().to_string();

    let get = |k: &str| {
        let c = &c;
        let loc = format!("/{bucket}/o/{bucket}/{k}");
        async move {
            let r = c.send("GET", &loc, &[], &[], vec![]).await.unwrap();
            assert_eq!(r.status(), 200, "{loc}");
            r.text().await.unwrap()
        }
    };
    assert_eq!(get("guess").await, "unreachable\nno-data-dir\n");
    let network = get("network").await;
    assert_eq!(
        network, "isolated: lo \nroutes: 0\n",
        "no interface but loopback, no route, nothing reached"
    );
    assert!(
        tcp.accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a task connected to the host"
    );
    assert!(
        udp.recv(&mut [0u8; 64])
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a task's datagram reached the host"
    );
    assert_eq!(get("remount").await, "done\n");
    let proc = get("proc").await;
    assert_eq!(proc, "done\n", "nothing of the victim's through /proc");
    assert_eq!(get("rootfs").await, "read-only\n");
    assert_eq!(get("input").await, "read-only\n");
    assert_eq!(get("setuid").await, "65534\n");
    let escalate = get("escalate").await;
    let lines: Vec<&str> = escalate.lines().collect();
    assert_eq!(lines[0], "65534", "{escalate}");
    assert!(lines[1].ends_with("0000000000000000"), "{escalate}");
    assert_eq!(lines[2].trim(), "0", "no shadow file readable: {escalate}");
    assert_eq!(get("stray").await, "started\n");
    assert_eq!(get("afterstray").await.trim(), "0", "the stray is gone");

    let errors = job_cli(&cluster, &t, &["errors", &id]);
    let errors: Vec<serde_json::Value> = String::from_utf8_lossy(&errors.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let error_for = |k: &str| {
        errors
            .iter()
            .find(|e| e["input"] == format!("{bucket}/{k}"))
            .unwrap_or_else(|| panic!("no error for {k}: {errors:?}"))
            .clone()
    };
    // The symlink could not even be planted (the task's directory is the
    // node's); had it been, the node would refuse it. Either way nothing
    // of the host's comes back.
    if let Some(e) = errors
        .iter()
        .find(|e| e["input"] == format!("{bucket}/symlink"))
    {
        assert_eq!(e["code"], "UserTaskError", "{e}");
    } else {
        let out = get("symlink").await;
        assert!(!out.contains("root:"), "{out}");
    }
    assert_eq!(get("outdir").await, "read-only\n");
    // The limit is named, under runc and under gVisor alike.
    let stopped = |e: &serde_json::Value, resource: &str| {
        e["code"] == "TaskKilledError" && e["message"].as_str().unwrap().contains(resource)
    };
    let fill = error_for("fill");
    assert!(stopped(&fill, "disk"), "{fill}");
    let hog = error_for("hog");
    assert!(stopped(&hog, "memory"), "{hog}");
    let bomb = error_for("forkbomb");
    assert!(stopped(&bomb, "pids"), "{bomb}");
    // The next task got a fresh container and ran.
    assert_eq!(get("after").await, "still-serving\n");
    let others = errors
        .iter()
        .filter(|e| e["input"] != format!("{bucket}/symlink"))
        .count();
    assert_eq!(others, 3, "{errors:?}");
    // Nothing of the host's came back as an output.
    let listing = c
        .send(
            "GET",
            &format!("/{bucket}"),
            &[("list-type", "2")],
            &[],
            vec![],
        )
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("o/symlink"), "{listing}");
    // Unbounded output stops at the phase's cap.
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "yes insitu", "output_mb": 1, "timeout_s": 60, "runtime": runtime }],
        "inputs": [format!("{bucket}/network")],
        "output": format!("{bucket}/big/"),
    });
    let (_, errors) = run_for_errors(&cluster, &t, &spec_file, &spec);
    assert!(
        errors.contains("TaskKilledError") && errors.contains("output"),
        "{errors}"
    );

    // A task that ignores SIGTERM and leaves a process behind is stopped at
    // its timeout, and nothing of it survives: no container, no process.
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "trap '' TERM; setsid sh -c \"trap '' TERM; exec sleep 1237\" & sleep 1237",
                     "timeout_s": 2, "runtime": runtime }],
        "inputs": [format!("{bucket}/network")],
        "output": format!("{bucket}/term/"),
    });
    let (id, errors) = run_for_errors(&cluster, &t, &spec_file, &spec);
    assert!(errors.contains("TaskTimeoutError"), "{errors}");
    let label = format!("insitu.job={id}");
    let gone = wait_until(Duration::from_secs(15), || {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={label}")])
            .output()
            .unwrap();
        ps.stdout.is_empty() && !host_runs("sleep 1237")
    });
    assert!(gone, "the timed-out task's container or processes survived");

    // The node is healthy: it still takes and serves objects.
    let r = c
        .send("PUT", &format!("/{bucket}/after"), &[], &[], b"ok".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_never_share_a_container_or_its_leftovers() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let a = cluster.create_tenant("alice").expect("tenant");
    let b = cluster.create_tenant("bob").expect("tenant");
    let mut buckets = Vec::new();
    for t in [&a, &b] {
        let c = RawClient::new(&cluster.endpoint, t);
        let bucket = unique("share");
        c.create_bucket(&bucket).await.unwrap();
        let r = c
            .send("PUT", &format!("/{bucket}/in"), &[], &[], b"x\n".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        buckets.push((c, bucket));
    }
    let spec = |bucket: &str, out: &str, exec: &str| {
        let spec = serde_json::json!({
            "phases": [{ "type": "map", "image": "insitu-test/busybox:latest", "exec": exec }],
            "inputs": [format!("{bucket}/in")],
            "output": format!("{bucket}/{out}/"),
        });
        let path = cluster.dir.path().join(format!("{out}-{bucket}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        path
    };
    // Each job's task names its container (the hostname) and leaves files.
    // While both run, each looks for the other's file through /proc.
    // For 6 s, so the two tasks overlap even with slow container starts.
    let leave =
        "echo left-$INSITU_JOB_ID > /tmp/left-behind; echo left > /insitu/out/left-behind; \
                 i=0; while [ $i -lt 12 ]; do \
                   cat /proc/[0-9]*/root/tmp/left-behind 2>/dev/null | grep -v $INSITU_JOB_ID; \
                   sleep 0.5; i=$((i + 1)); \
                 done | sort -u; hostname";
    let (ca, bucket_a) = &buckets[0];
    let (cb, bucket_b) = &buckets[1];
    let (spec_a, spec_b) = (
        spec(bucket_a, "first", leave),
        spec(bucket_b, "first", leave),
    );
    let (out_a, out_b) = tokio::join!(
        tokio::task::spawn_blocking({
            let (cluster_ep, a) = (cluster.endpoint.clone(), a.clone());
            move || run_spec(&cluster_ep, &a, &spec_a)
        }),
        tokio::task::spawn_blocking({
            let (cluster_ep, b) = (cluster.endpoint.clone(), b.clone());
            move || run_spec(&cluster_ep, &b, &spec_b)
        })
    );
    assert_eq!(out_a.unwrap()["state"], "done");
    assert_eq!(out_b.unwrap()["state"], "done");
    let host_a = host(ca, &format!("/{bucket_a}/first/{bucket_a}/in")).await;
    let host_b = host(cb, &format!("/{bucket_b}/first/{bucket_b}/in")).await;
    assert!(!host_a.trim().is_empty());
    assert_ne!(host_a, host_b, "two tenants' jobs ran in one container");
    assert!(
        !host_a.contains("left-") && !host_b.contains("left-"),
        "a job saw the other tenant's file: {host_a} {host_b}"
    );

    // A second job of the same tenant finds nothing of the first.
    let look = "hostname; ls -a /tmp /insitu/out /insitu/in; cat /tmp/left-behind /insitu/out/left-behind 2>/dev/null; true";
    let second = run_spec(&cluster.endpoint, &a, &spec(bucket_a, "second", look));
    assert_eq!(second["state"], "done");
    let seen = host(ca, &format!("/{bucket_a}/second/{bucket_a}/in")).await;
    assert!(
        !seen.starts_with(&host_a),
        "the container was reused: {seen}"
    );
    assert!(
        !seen.contains("left"),
        "files of the first job were visible: {seen}"
    );
}

async fn host(c: &RawClient, loc: &str) -> String {
    c.send("GET", loc, &[], &[], vec![])
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Runs a job spec to its end with `insitu job run --watch`; its status.
/// Runs `spec` (written to `spec_file`) to its end; the job's id and its
/// error records, one JSON line each.
fn run_for_errors(
    cluster: &Cluster,
    tenant: &Tenant,
    spec_file: &std::path::Path,
    spec: &serde_json::Value,
) -> (String, String) {
    std::fs::write(spec_file, spec.to_string()).expect("spec file");
    let status = run_spec(&cluster.endpoint, tenant, spec_file);
    let id = status["id"].as_str().expect("a job id").to_string();
    let errors = job_cli(cluster, tenant, &["errors", &id]);
    (id, String::from_utf8_lossy(&errors.stdout).into_owned())
}

fn run_spec(endpoint: &str, tenant: &Tenant, spec: &std::path::Path) -> serde_json::Value {
    let out = Command::new(insitu_bin())
        .args(["job", "run", "--watch", "--spec"])
        .arg(spec)
        .env("INSITU_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", &tenant.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &tenant.secret_access_key)
        .output()
        .expect("insitu job");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("{}", String::from_utf8_lossy(&out.stderr));
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_policy_bounds_a_tenants_jobs() {
    let cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("bounded").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("bounded");
    c.create_bucket(&bucket).await.unwrap();
    c.send("PUT", &format!("/{bucket}/in"), &[], &[], b"x\n".to_vec())
        .await
        .unwrap();
    // gVisor where it is installed (scripts/setup registers it with Docker).
    let gvisor = insitu_e2e::gvisor_installed();
    let mut args = vec![
        "tenant",
        "policy",
        "bounded",
        "--set",
        "--max-memory-mb",
        "128",
        "--default-timeout-s",
        "30",
    ];
    if gvisor {
        args.extend(["--runtime", "runsc"]);
    }
    let policy = cluster.admin(&args).expect("policy");
    assert_eq!(policy["policy"]["max_memory_mb"], 128, "{policy}");
    assert_eq!(policy["policy"]["default_timeout_s"], 30, "{policy}");
    // A default beyond a maximum is refused.
    assert!(cluster
        .admin(&[
            "tenant",
            "policy",
            "bounded",
            "--set",
            "--max-memory-mb",
            "64",
            "--default-memory-mb",
            "128"
        ])
        .is_err());
    let spec = |extra: serde_json::Value, out: &str| {
        let mut phase = serde_json::json!({ "type": "map", "image": "insitu-test/busybox:latest",
                                            "exec": "uname -r" });
        if let (Some(p), Some(e)) = (phase.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        let spec = serde_json::json!({ "phases": [phase], "inputs": [format!("{bucket}/in")],
                                       "output": format!("{bucket}/{out}/") });
        let path = cluster.dir.path().join(format!("{out}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        path
    };
    // Beyond the tenant's maximum: refused, naming the field.
    let out = Command::new(insitu_bin())
        .args(["job", "run", "--spec"])
        .arg(spec(serde_json::json!({ "memory_mb": 256 }), "big"))
        .env("INSITU_ENDPOINT", &cluster.endpoint)
        .env("AWS_ACCESS_KEY_ID", &t.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &t.secret_access_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("InvalidArgumentError") && err.contains("phases[0].memory_mb"),
        "{err}"
    );
    // Within it (the default held to the maximum), under the tenant's runtime.
    let status = run_spec(&cluster.endpoint, &t, &spec(serde_json::json!({}), "ok"));
    assert_eq!(status["state"], "done");
    assert_eq!(status["counters"]["outputs"], 1, "{status}");
    let kernel = host(&c, &format!("/{bucket}/ok/{bucket}/in")).await;
    if gvisor {
        // gVisor reports its own kernel version.
        assert_eq!(kernel.trim(), "4.4.0", "ran under runsc");
    } else {
        assert!(!kernel.trim().is_empty());
    }
}

/// What a node's task directory left on the host: containers labelled
/// with it, mounts and loop devices under it, and group directories in it.
fn task_leftovers(tasks_dir: &std::path::Path) -> Vec<String> {
    let root = tasks_dir.display().to_string();
    let mut found = Vec::new();
    let ps = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=insitu.root={root}"),
        ])
        .output()
        .expect("docker ps");
    for id in String::from_utf8_lossy(&ps.stdout).split_whitespace() {
        found.push(format!("container {id}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines().filter(|l| l.contains(&root)) {
        found.push(format!("mount {line}"));
    }
    for dev in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let backing = std::fs::read_to_string(dev.path().join("loop/backing_file"));
        if backing.is_ok_and(|b| b.starts_with(&root)) {
            found.push(format!("loop device {:?}", dev.file_name()));
        }
    }
    for dir in std::fs::read_dir(tasks_dir).into_iter().flatten().flatten() {
        found.push(format!("directory {:?}", dir.file_name()));
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_node_leaves_nothing_of_its_tasks_behind() {
    crash_and_restart(None).await;
    if insitu_e2e::gvisor_installed() {
        crash_and_restart(Some("runsc")).await;
    }
}

async fn crash_and_restart(runtime: Option<&str>) {
    let mut cluster = Cluster::start_with(1, Some(1)).expect("cluster");
    let t = cluster.create_tenant("crash").expect("tenant");
    let c = RawClient::new(&cluster.endpoint, &t);
    let bucket = unique("crash");
    c.create_bucket(&bucket).await.unwrap();
    for k in ["a", "b"] {
        let r = c
            .send("PUT", &format!("/{bucket}/{k}"), &[], &[], b"x\n".to_vec())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let spec = serde_json::json!({
        "phases": [{ "type": "map", "image": "insitu-test/busybox:latest",
                     "exec": "setsid sleep 1000 & sleep 1000", "runtime": runtime }],
        "inputs": [format!("{bucket}/a"), format!("{bucket}/b")],
        "output": format!("{bucket}/o/"),
    });
    let spec_file = cluster.dir.path().join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let out = job_cli(
        &cluster,
        &t,
        &["run", "--spec", spec_file.to_str().unwrap()],
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!id.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let tasks_dir = cluster.node_dir("node-0").join("tasks");
    // Its container runs, with its scratch space mounted on a loop device.
    let busy = wait_until(Duration::from_secs(60), || {
        let left = task_leftovers(&tasks_dir);
        ["container", "mount", "loop device", "directory"]
            .iter()
            .all(|kind| left.iter().any(|l| l.starts_with(kind)))
    });
    assert!(busy, "no running task: {:?}", task_leftovers(&tasks_dir));

    // The node dies; the job is cancelled while it is down, so its
    // container belongs to a finished job no live node knows.
    cluster.kill9_node("node-0");
    let cancel = job_cli(&cluster, &t, &["cancel", &id]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    assert!(!task_leftovers(&tasks_dir).is_empty());
    cluster.start_node("node-0", &[]).expect("node restart");
    let clean = wait_until(Duration::from_secs(30), || {
        task_leftovers(&tasks_dir).is_empty()
    });
    assert!(
        clean,
        "left after the restart: {:?}",
        task_leftovers(&tasks_dir)
    );
}
