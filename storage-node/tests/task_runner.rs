//! The task runner against the real Docker engine (scripts/setup starts it
//! and builds insitu-test/busybox:latest). No Docker means these fail.

use std::time::Duration;

use insitu_storage_node::task_runner::{GroupSpec, Limits, TaskEnd, TaskRunner, TaskSpec};

const IMAGE: &str = "insitu-test/busybox:latest";

async fn runner(dir: &std::path::Path, node: &str) -> TaskRunner {
    TaskRunner::connect(node, &dir.join("tasks"))
        .await
        .expect("the Docker engine must be running (scripts/setup starts it)")
}

fn group(job: &str, runtime: Option<&str>) -> GroupSpec {
    GroupSpec {
        tenant: "acme".into(),
        job: job.into(),
        phase: 0,
        image: IMAGE.into(),
        limits: Limits {
            memory_mb: 128,
            ..Limits::default()
        },
        runtime: runtime.map(str::to_string),
        assets: Vec::new(),
        tools: None,
    }
}

fn task(id: &str, exec: &str, input: Option<std::path::PathBuf>) -> TaskSpec {
    TaskSpec {
        task_id: id.into(),
        exec: exec.into(),
        input,
        env: vec![
            ("INSITU_JOB_ID".into(), "job-1".into()),
            ("INSITU_TASK_ID".into(), id.into()),
        ],
        timeout: Duration::from_secs(20),
        input_end: None,
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

#[tokio::test]
async fn tasks_run_next_to_their_input_in_one_hardened_container() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &unique("node")).await;
    let input = dir.path().join("blob");
    std::fs::write(&input, "one fish\ntwo fish\nred fish\n").unwrap();
    let g = r.start_group(&group(&unique("job"), None)).await.unwrap();

    let out = r
        .run_task(&g, &task("t1", "tr a-z A-Z", Some(input.clone())))
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&out.stdout).unwrap(),
        "ONE FISH\nTWO FISH\nRED FISH\n"
    );

    // A second task reuses the same container.
    let out = r
        .run_task(
            &g,
            &task(
                "t2",
                "wc -l; echo \"$INSITU_JOB_ID $INSITU_TASK_ID\"",
                Some(input.clone()),
            ),
        )
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0));
    let text = std::fs::read_to_string(&out.stdout).unwrap();
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["3", "job-1", "t2"]
    );
    assert!(r.container_exists(&g.container_id).await);

    // The isolation policy, seen from inside.
    let probe = "id -u; \
        touch /rootfs-test 2>/dev/null && echo rootfs-writable || echo rootfs-read-only; \
        (echo x > \"$INSITU_INPUT_FILE\") 2>/dev/null && echo input-writable || echo input-read-only; \
        ls /sys/class/net; \
        grep CapEff /proc/self/status; \
        grep NoNewPrivs /proc/self/status; \
        ls /insitu/in";
    let out = r
        .run_task(&g, &task("t3", probe, Some(input.clone())))
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0), "{}", out.stderr_preview);
    let text = std::fs::read_to_string(&out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "65534", "runs as nobody: {text}");
    assert_eq!(lines[1], "rootfs-read-only", "{text}");
    assert_eq!(lines[2], "input-read-only", "{text}");
    assert_eq!(lines[3], "lo", "no network but loopback: {text}");
    assert!(
        lines[4].ends_with("0000000000000000"),
        "no capabilities: {text}"
    );
    assert!(lines[5].ends_with('1'), "no new privileges: {text}");
    assert_eq!(
        std::fs::read_to_string(&input).unwrap(),
        "one fish\ntwo fish\nred fish\n",
        "the blob is untouched"
    );

    // A failing task: its exit status and stderr are kept.
    let out = r
        .run_task(&g, &task("t4", "echo oops >&2; exit 3", None))
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(3), "{}", out.stderr_preview);
    assert_eq!(out.stderr_preview, "oops\n");

    // Environment values reach the task exactly, whatever they contain;
    // tasks of one group run at the same time.
    let tricky = "it's \"quoted\" $HOME `x` \\ and\na second line";
    let mut t6 = task("t6", "printf '%s' \"$TRICKY\"", None);
    t6.env.push(("TRICKY".into(), tricky.into()));
    let slow_a = task("t7", "sleep 1; echo a", None);
    let slow_b = task("t8", "sleep 1; echo b", None);
    let started = std::time::Instant::now();
    let (o6, oa, ob) = tokio::join!(
        r.run_task(&g, &t6),
        r.run_task(&g, &slow_a),
        r.run_task(&g, &slow_b)
    );
    assert_eq!(
        std::fs::read_to_string(&o6.unwrap().stdout).unwrap(),
        tricky
    );
    assert_eq!(std::fs::read_to_string(&oa.unwrap().stdout).unwrap(), "a\n");
    assert_eq!(std::fs::read_to_string(&ob.unwrap().stdout).unwrap(), "b\n");
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "the two sleeps overlapped"
    );

    // A process a task leaves behind is gone once no task runs.
    let out = r
        .run_task(&g, &task("t9", "setsid sleep 1000 & echo started", None))
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0));
    let top = std::process::Command::new("docker")
        .args(["top", &g.container_id])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(
        !top.contains("sleep 1000"),
        "a stray survived its task: {top}"
    );

    // A task past its timeout: the container is destroyed.
    let mut slow = task("t5", "sleep 30", None);
    slow.timeout = Duration::from_secs(1);
    let out = r.run_task(&g, &slow).await.unwrap();
    assert_eq!(out.end, TaskEnd::TimedOut);
    assert!(
        !r.container_exists(&g.container_id).await,
        "timed-out container destroyed"
    );
    r.end_group(&g).await;
}

#[tokio::test]
async fn a_task_over_its_memory_limit_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &unique("node")).await;
    let mut spec = group(&unique("job"), None);
    spec.limits.memory_mb = 32;
    spec.limits.scratch_mb = 8;
    let g = r.start_group(&spec).await.unwrap();
    // dd holds one 200 MB block in memory.
    let out = r
        .run_task(
            &g,
            &task("hog", "dd if=/dev/zero of=/dev/null bs=200M count=1", None),
        )
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Killed("memory".into()));
    assert!(!r.container_exists(&g.container_id).await);
    r.end_group(&g).await;
}

#[tokio::test]
async fn a_restarted_node_reaps_containers_it_does_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let node = unique("node");
    let first = runner(dir.path(), &node).await;
    let g = first
        .start_group(&group(&unique("job"), None))
        .await
        .unwrap();
    assert!(first.container_exists(&g.container_id).await);
    drop(first);

    let second = runner(dir.path(), &node).await;
    let reaped = second.reap(|_| false).await.unwrap();
    assert_eq!(reaped, 1);
    assert!(!second.container_exists(&g.container_id).await);
}

#[tokio::test]
async fn unknown_images_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &unique("node")).await;
    let mut spec = group(&unique("job"), None);
    // A registry on loopback that does not exist: the pull is tried and
    // fails without any traffic leaving the machine.
    spec.image = "127.0.0.1:9/insitu-test/does-not-exist:never".into();
    let err = r.start_group(&spec).await.unwrap_err();
    assert!(
        matches!(
            err,
            insitu_storage_node::task_runner::TaskError::ImageNotFound(_)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn gvisor_runs_tasks_when_installed() {
    if std::process::Command::new("runsc")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("runsc is not installed here; gVisor is covered where it is");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &unique("node")).await;
    let g = r
        .start_group(&group(&unique("job"), Some("runsc")))
        .await
        .unwrap();
    let out = r
        .run_task(
            &g,
            &task("g1", "dmesg 2>/dev/null | head -1; echo done", None),
        )
        .await
        .unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0), "{}", out.stderr_preview);
    let text = std::fs::read_to_string(&out.stdout).unwrap();
    assert!(
        text.contains("gVisor") && text.ends_with("done\n"),
        "ran under gVisor: {text}"
    );
    r.end_group(&g).await;

    // A sandbox that fails to start leaves nothing behind: no container
    // (removing it ends its runsc gofer and sandbox processes), no
    // directory, no scratch mount.
    let empty = dir.path().join("empty.tar");
    let tar = std::process::Command::new("tar")
        .args(["-cf"])
        .arg(&empty)
        .args(["--files-from", "/dev/null"])
        .status()
        .unwrap();
    assert!(tar.success());
    let image = format!("insitu-test/empty:{}", unique("e"));
    let imported = std::process::Command::new("docker")
        .args(["import"])
        .arg(&empty)
        .arg(&image)
        .output()
        .unwrap();
    assert!(imported.status.success());
    let mut spec = group(&unique("job"), Some("runsc"));
    spec.image = image.clone();
    assert!(
        r.start_group(&spec).await.is_err(),
        "an image without /bin/sh cannot start"
    );
    let root = std::fs::canonicalize(dir.path().join("tasks")).unwrap();
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=insitu.root={}", root.display()))
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a container was left");
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "a directory was left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*root.to_string_lossy()),
        "a mount was left"
    );
    let _ = std::process::Command::new("docker")
        .args(["rmi", &image])
        .output();
}

/// What a task writes to the launcher's own stdout, without a line end,
/// is not held in the node's memory: the container's tasks fail and the
/// group is not used again, and a new group runs as before.
#[tokio::test]
async fn a_task_flooding_the_launchers_stdout_fails_its_container() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &unique("node")).await;
    let g = r.start_group(&group(&unique("job"), None)).await.unwrap();
    // The task's shell's parent is the launcher's subshell; its parent
    // is the launcher.
    let flood = "L=$(cut -d' ' -f4 /proc/$PPID/stat); \\
        head -c 1048576 /dev/zero | tr '\\0' x > /proc/$L/fd/1; sleep 5";
    let outcome = r.run_task(&g, &task("flood", flood, None)).await;
    assert!(
        outcome.is_err(),
        "the flood was taken as an answer: {outcome:?}"
    );
    let later = r.run_task(&g, &task("later", "echo hi", None)).await;
    assert!(later.is_err(), "the flooded launcher still ran: {later:?}");
    r.end_group(&g).await;

    let g = r.start_group(&group(&unique("job"), None)).await.unwrap();
    let out = r.run_task(&g, &task("t", "echo hi", None)).await.unwrap();
    assert_eq!(out.end, TaskEnd::Exited(0));
    assert_eq!(std::fs::read_to_string(&out.stdout).unwrap(), "hi\n");
    r.end_group(&g).await;
}

/// A job's end kills what runs in its container before it answers: a
/// task still running when its group is retired is gone when the call
/// returns (the container's removal goes on in the background), and the
/// task ends with an error rather than waiting out its timeout.
#[tokio::test]
async fn retiring_a_group_kills_its_running_task() {
    let dir = tempfile::tempdir().unwrap();
    let r = std::sync::Arc::new(runner(dir.path(), &unique("node")).await);
    let g = r.start_group(&group(&unique("job"), None)).await.unwrap();
    let marker = format!("{}", 4000 + std::process::id() % 1000);
    let running = {
        let (r, g) = (r.clone(), g.clone());
        let exec = format!("sleep {marker}");
        tokio::spawn(async move { r.run_task(&g, &task("long", &exec, None)).await })
    };
    let alive = || {
        std::process::Command::new("pgrep")
            .args(["-f", &format!("^sleep {marker}$")])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    for _ in 0..100 {
        if alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(alive(), "the task started");
    r.retire_group(g).await;
    assert!(
        !alive(),
        "the task's process outlived its group's retirement"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the task ended")
        .unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}
