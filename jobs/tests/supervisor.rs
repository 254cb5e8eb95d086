//! The supervisor's state machine against a fake node client and a real
//! embedded catalog: placement by locality, retries, task errors, reducer
//! feeding, access checks and cancellation, with no HTTP and no Docker.
//! (The same paths run end to end, with real nodes and containers, in
//! `tests/tests/jobs.rs`.)

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use insitu_catalog::{Acl, BlobRef, CannedAcl, Catalog, ObjectHeaders, ObjectRecord};
use insitu_jobs::records::{JobRecord, JobState};
use insitu_jobs::{
    BlobHold, BlobHolds, JobList, JobSpec, NodeCallError, NodeClient, NodeResult, Peers,
    Supervisor, SupervisorConfig, SupervisorParts,
};
use insitu_node_api::{TaskEndReport, TaskRequest, TaskResponse};

/// What a fake node does when asked to run a map task.
#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// Exits 0 with 10 bytes of stdout.
    Succeed,
    /// The call fails without an answer (a connection reset).
    Drop,
    /// Exits with status 1.
    Exit1,
    /// Never answers (the task runs on).
    Hang,
}

#[derive(Default)]
struct Calls {
    /// (node, input blob) of each map task run.
    maps: Vec<(String, Option<String>)>,
    /// (node, stream, blob) appended to a reducer's input, in order.
    appends: Vec<(String, String, String)>,
    ended: HashSet<String>,
    groups_ended: Vec<(String, String, u32)>,
    /// (blob, node, new id) of each copy made.
    copies: Vec<(String, String, String)>,
    /// (node, blob) of each blob removed.
    deleted: Vec<(String, String)>,
    /// Times a node was asked whether it has room.
    room_asked: usize,
}

struct FakeNodes {
    nodes: Vec<String>,
    behaviour: HashMap<String, Behaviour>,
    /// Whether a node has room for a copy.
    room: bool,
    /// Whether every copy to a node fails.
    copies_fail: bool,
    calls: Mutex<Calls>,
    stream_ended: tokio::sync::Notify,
}

impl FakeNodes {
    fn new(nodes: &[&str]) -> Self {
        Self {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            behaviour: HashMap::new(),
            room: true,
            copies_fail: false,
            calls: Mutex::default(),
            stream_ended: tokio::sync::Notify::new(),
        }
    }

    fn with(mut self, node: &str, b: Behaviour) -> Self {
        self.behaviour.insert(node.to_string(), b);
        self
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap()
    }
}

fn exited(code: i64, stdout_size: u64) -> TaskResponse {
    TaskResponse {
        end: TaskEndReport::Exited { code },
        stdout_size,
        stdout_md5: "0123456789abcdef0123456789abcdef".into(),
        pieces: Vec::new(),
        named: Vec::new(),
        stderr_kept: false,
        stderr_size: 0,
        stderr_preview: if code == 0 {
            String::new()
        } else {
            "boom\n".into()
        },
        read_through_endpoint: false,
        image_id: "sha256:fake-image".into(),
    }
}

#[async_trait]
impl NodeClient for FakeNodes {
    fn node_ids(&self) -> Vec<String> {
        self.nodes.clone()
    }

    fn is_up(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n == node)
    }

    fn place_more(&self, _: &str, _: usize, _: u64, _: &[String]) -> NodeResult<Vec<String>> {
        Ok(Vec::new())
    }

    fn has_room(&self, _: &str, _: u64) -> bool {
        self.calls().room_asked += 1;
        self.room
    }

    async fn copy_to(&self, blob: &BlobRef, node: &str, new_id: &str) -> NodeResult<()> {
        self.calls()
            .copies
            .push((blob.id.clone(), node.into(), new_id.into()));
        match self.copies_fail {
            true => Err(NodeCallError::Failed("the copy broke off".into())),
            false => Ok(()),
        }
    }

    async fn delete(&self, node: &str, blob: &str) -> NodeResult<()> {
        self.calls().deleted.push((node.into(), blob.into()));
        Ok(())
    }

    async fn prepare_image(
        &self,
        _: &str,
        _: &TaskRequest,
        _: Duration,
    ) -> NodeResult<Option<String>> {
        Ok(Some("sha256:fake-image".into()))
    }

    async fn run_task(
        &self,
        node: &str,
        req: &TaskRequest,
        _: Duration,
    ) -> NodeResult<TaskResponse> {
        if req.input_stream {
            // A reducer: it answers once its input has ended.
            let stream = format!("{}/{}/{}", req.tenant, req.job, req.task_id);
            loop {
                let wait = self.stream_ended.notified();
                if self.calls().ended.contains(&stream) {
                    return Ok(exited(0, 5));
                }
                wait.await;
            }
        }
        self.calls()
            .maps
            .push((node.to_string(), req.input_blob.clone()));
        match self
            .behaviour
            .get(node)
            .copied()
            .unwrap_or(Behaviour::Succeed)
        {
            Behaviour::Succeed => Ok(exited(0, 10)),
            Behaviour::Exit1 => Ok(exited(1, 0)),
            Behaviour::Drop => Err(NodeCallError::Failed("connection reset".into())),
            Behaviour::Hang => futures::future::pending().await,
        }
    }

    async fn stream_append_blob(&self, node: &str, stream: &str, blob: &str) -> NodeResult<()> {
        self.calls()
            .appends
            .push((node.into(), stream.into(), blob.into()));
        Ok(())
    }

    async fn stream_append_copy(&self, node: &str, stream: &str, blob: &BlobRef) -> NodeResult<()> {
        self.stream_append_blob(node, stream, &blob.id).await
    }

    async fn stream_end(&self, _: &str, stream: &str) -> NodeResult<()> {
        self.calls().ended.insert(stream.to_string());
        self.stream_ended.notify_waiters();
        Ok(())
    }

    async fn end_group(&self, node: &str, _: &str, job: &str, phase: u32) -> NodeResult<()> {
        self.calls()
            .groups_ended
            .push((node.into(), job.into(), phase));
        Ok(())
    }

    async fn read_logs(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &insitu_node_api::LogRequest,
    ) -> NodeResult<insitu_node_api::LogResponse> {
        Ok(Default::default())
    }
}

/// A gateway that sees no live peer (the leases tell it of the others).
struct Alone {
    id: String,
    lease_ms: i64,
}

impl Peers for Alone {
    fn id(&self) -> &str {
        &self.id
    }
    fn lease_ms(&self) -> i64 {
        self.lease_ms
    }
    fn least_loaded(&self, _: u32) -> String {
        self.id.clone()
    }
    fn peer_addr(&self, _: &str) -> Option<String> {
        None
    }
    fn alone(&self) -> bool {
        true
    }
}

struct NoHolds;

impl BlobHolds for NoHolds {
    fn hold(&self, _: &str) -> BlobHold {
        BlobHold::new(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    catalog: Arc<dyn Catalog>,
    nodes: Arc<FakeNodes>,
    sv: Arc<Supervisor>,
}

/// A catalog with tenants alice and bob, alice's buckets `src` and `out`,
/// and bob's private bucket `secret`.
async fn setup(nodes: FakeNodes) -> Setup {
    setup_waiting(nodes, Duration::MAX).await
}

/// The same, with delay scheduling's wait set.
async fn setup_waiting(nodes: FakeNodes, locality_wait: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let catalog = insitu_catalog::open_rocksdb(&dir.path().join("catalog")).unwrap();
    for t in ["alice", "bob"] {
        catalog.create_tenant(t).await.unwrap();
    }
    for (b, owner) in [("src", "alice"), ("out", "alice"), ("secret", "bob")] {
        catalog
            .create_bucket(b, owner, Acl::Canned(CannedAcl::Private))
            .await
            .unwrap();
    }
    let nodes = Arc::new(nodes);
    let sv = supervisor_waiting(&catalog, nodes.clone(), "gw-a", 10_000, locality_wait);
    Setup {
        _dir: dir,
        catalog,
        nodes,
        sv,
    }
}

fn supervisor(
    catalog: &Arc<dyn Catalog>,
    nodes: Arc<FakeNodes>,
    id: &str,
    lease_ms: i64,
) -> Arc<Supervisor> {
    supervisor_waiting(catalog, nodes, id, lease_ms, Duration::MAX)
}

fn supervisor_waiting(
    catalog: &Arc<dyn Catalog>,
    nodes: Arc<FakeNodes>,
    id: &str,
    lease_ms: i64,
    locality_wait: Duration,
) -> Arc<Supervisor> {
    Supervisor::new(SupervisorParts {
        catalog: catalog.clone(),
        nodes,
        holds: Arc::new(NoHolds),
        peers: Arc::new(Alone {
            id: id.into(),
            lease_ms,
        }),
        config: SupervisorConfig {
            replicas: 1,
            task_slots: 4,
            locality_wait,
            tenant_max_tasks: 0,
            tenant_max_jobs: 0,
            task_maxima: Default::default(),
        },
    })
}

async fn put(catalog: &dyn Catalog, bucket: &str, key: &str, blob: &str, replicas: &[&str]) {
    let owner = if bucket == "secret" { "bob" } else { "alice" };
    let rec = ObjectRecord {
        size: 100,
        etag: "0123456789abcdef0123456789abcdef".into(),
        last_modified_ms: 1,
        owner: owner.into(),
        headers: ObjectHeaders::default(),
        acl: Acl::Canned(CannedAcl::Private),
        blob: BlobRef {
            id: blob.into(),
            size: 100,
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
        },
        parts_count: 0,
        part_sizes: Vec::new(),
        upload_id: None,
        checksum: None,
    };
    catalog.put_object(bucket, key, &rec).await.unwrap();
}

fn spec(phases: &str, inputs: &[&str]) -> JobSpec {
    let json = format!(
        r#"{{ "phases": {phases}, "inputs": {}, "output": "out/res/" }}"#,
        serde_json::to_string(inputs).unwrap()
    );
    JobSpec::parse(json.as_bytes()).unwrap()
}

const MAP: &str = r#"[{ "type": "map", "image": "img", "exec": "wc -l" }]"#;
const MAP_REDUCE: &str = r#"[{ "type": "map", "image": "img", "exec": "wc -l" },
    { "type": "reduce", "image": "img", "count": 1, "exec": "cat" }]"#;

async fn until_ended(sv: &Supervisor, id: &str) -> JobRecord {
    for _ in 0..400 {
        let rec = sv.get("alice", id).await.unwrap();
        if rec.state.is_final() {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not end within 20 s");
}

async fn list(sv: &Supervisor, id: &str, which: JobList) -> Vec<serde_json::Value> {
    let (page, more) = sv.list_items(id, which, None, 100).await.unwrap();
    assert!(!more);
    page.into_iter().map(|(_, v)| v).collect()
}

#[tokio::test]
async fn map_tasks_run_on_a_holder_of_their_input_and_commit_one_output_each() {
    let s = setup(FakeNodes::new(&["n1", "n2", "n3"])).await;
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1"]).await;
    put(s.catalog.as_ref(), "src", "b", "blob-b", &["n3"]).await;
    let job =
        s.sv.create("alice", spec(MAP, &["src/a", "src/b"]))
            .await
            .unwrap();
    let rec = until_ended(&s.sv, &job.id).await;
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(
        (
            rec.counters.outputs,
            rec.counters.errors,
            rec.counters.retries
        ),
        (2, 0, 0)
    );
    let mut maps = s.nodes.calls().maps.clone();
    maps.sort();
    assert_eq!(
        maps,
        vec![
            ("n1".to_string(), Some("blob-a".to_string())),
            ("n3".to_string(), Some("blob-b".to_string())),
        ]
    );
    // Each output is an object of the output bucket, on the node that ran it.
    for out in list(&s.sv, &job.id, JobList::Outputs).await {
        let loc = out["object"].as_str().unwrap();
        let key = loc.strip_prefix("out/").unwrap();
        let obj = s.catalog.get_object("out", key).await.unwrap().unwrap();
        assert_eq!(obj.size, 10);
        assert_eq!(obj.owner, "alice");
        assert_eq!(obj.blob.replicas.len(), 1);
    }
    // Done: its containers are ended on every node.
    let groups = s.nodes.calls().groups_ended.len();
    assert_eq!(groups, 3);
}

#[tokio::test]
async fn an_internal_failure_is_retried_on_another_holder_and_counted() {
    let nodes = FakeNodes::new(&["n1", "n2"]).with("n1", Behaviour::Drop);
    let s = setup(nodes).await;
    // Held by both; n1 wins placement by name on a tie, and drops the call.
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1", "n2"]).await;
    let job = s.sv.create("alice", spec(MAP, &["src/a"])).await.unwrap();
    let rec = until_ended(&s.sv, &job.id).await;
    assert_eq!(
        (rec.counters.outputs, rec.counters.errors),
        (1, 0),
        "{rec:?}"
    );
    let maps: Vec<String> = s.nodes.calls().maps.iter().map(|m| m.0.clone()).collect();
    assert!(maps.ends_with(&["n2".to_string()]), "{maps:?}");
    assert_eq!(rec.counters.retries, (maps.len() - 1) as u64);
    assert!(rec.counters.retries >= 1);
}

#[tokio::test]
async fn a_task_that_exits_non_zero_fails_with_its_own_error_and_is_not_retried() {
    let s = setup(FakeNodes::new(&["n1"]).with("n1", Behaviour::Exit1)).await;
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1"]).await;
    let job = s.sv.create("alice", spec(MAP, &["src/a"])).await.unwrap();
    let rec = until_ended(&s.sv, &job.id).await;
    assert_eq!(rec.state, JobState::Done);
    assert_eq!(
        (
            rec.counters.outputs,
            rec.counters.errors,
            rec.counters.retries
        ),
        (0, 1, 0)
    );
    assert_eq!(s.nodes.calls().maps.len(), 1);
    let errors = list(&s.sv, &job.id, JobList::Errors).await;
    assert_eq!(errors[0]["code"], "UserTaskError");
    assert_eq!(errors[0]["input"], "src/a");
    assert!(errors[0]["message"].as_str().unwrap().contains("boom"));
    let failed = list(&s.sv, &job.id, JobList::FailedInputs).await;
    assert_eq!(failed.len(), 1);
}

#[tokio::test]
async fn a_reducer_is_fed_every_map_output_and_then_sees_the_end_of_its_input() {
    let s = setup(FakeNodes::new(&["n1", "n2"])).await;
    for (i, n) in ["n1", "n2", "n1"].iter().enumerate() {
        put(
            s.catalog.as_ref(),
            "src",
            &format!("k{i}"),
            &format!("blob-{i}"),
            &[n],
        )
        .await;
    }
    let job =
        s.sv.create("alice", spec(MAP_REDUCE, &["src/k0", "src/k1", "src/k2"]))
            .await
            .unwrap();
    let rec = until_ended(&s.sv, &job.id).await;
    assert_eq!(
        (rec.counters.outputs, rec.counters.errors),
        (1, 0),
        "{rec:?}"
    );
    {
        let calls = s.nodes.calls();
        assert_eq!(calls.maps.len(), 3);
        // One reducer, one stream: all three map outputs, then its end.
        let streams: HashSet<&String> = calls.appends.iter().map(|a| &a.1).collect();
        assert_eq!(streams.len(), 1);
        assert_eq!(calls.appends.len(), 3);
        assert!(calls.ended.contains(*streams.iter().next().unwrap()));
    }
    let out = list(&s.sv, &job.id, JobList::Outputs).await;
    assert_eq!(out[0]["phase"], 1);
    assert_eq!(out[0]["size"], 5);
}

#[tokio::test]
async fn an_input_the_tenant_may_not_read_fails_with_access_denied_and_never_runs() {
    let s = setup(FakeNodes::new(&["n1"])).await;
    put(s.catalog.as_ref(), "secret", "x", "blob-x", &["n1"]).await;
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1"]).await;
    let job =
        s.sv.create("alice", spec(MAP, &["secret/x", "src/a", "src/missing"]))
            .await
            .unwrap();
    let rec = until_ended(&s.sv, &job.id).await;
    assert_eq!((rec.counters.outputs, rec.counters.errors), (1, 2));
    let maps = s.nodes.calls().maps.clone();
    assert_eq!(maps, vec![("n1".to_string(), Some("blob-a".to_string()))]);
    let mut codes: Vec<(String, String)> = list(&s.sv, &job.id, JobList::Errors)
        .await
        .iter()
        .map(|e| (e["input"].to_string(), e["code"].to_string()))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            (r#""secret/x""#.into(), r#""AccessDeniedError""#.into()),
            (
                r#""src/missing""#.into(),
                r#""ResourceNotFoundError""#.into()
            ),
        ]
    );
}

/// A map job of five inputs, each with its one replica on n1.
async fn five_inputs_on_n1(s: &Setup) -> JobRecord {
    let inputs: Vec<String> = (0..5).map(|i| format!("src/in{i}")).collect();
    for i in 0..5 {
        let (key, blob) = (format!("in{i}"), format!("blob-{i}"));
        put(s.catalog.as_ref(), "src", &key, &blob, &["n1"]).await;
    }
    let names: Vec<&str> = inputs.iter().map(String::as_str).collect();
    s.sv.create("alice", spec(MAP, &names)).await.unwrap()
}

/// Delay scheduling: five inputs all on n1, whose four slots stay taken
/// (its tasks never end). With a wait of 100 ms, the fifth task runs on
/// n2 on a copy of its input, made for it and removed after it; with no
/// wait set (the `Duration::MAX` of `setup`), it waits for n1.
#[tokio::test]
async fn past_its_wait_a_job_runs_a_map_task_on_a_node_without_its_input() {
    for wait in [Some(Duration::from_millis(100)), None] {
        let nodes = FakeNodes::new(&["n1", "n2"]).with("n1", Behaviour::Hang);
        let s = setup_waiting(nodes, wait.unwrap_or(Duration::MAX)).await;
        let job = five_inputs_on_n1(&s).await;
        let on_n2 = || {
            let calls = s.nodes.calls();
            calls
                .maps
                .iter()
                .filter(|m| m.0 == "n2")
                .cloned()
                .collect::<Vec<_>>()
        };
        for _ in 0..60 {
            if !on_n2().is_empty() && !s.nodes.calls().deleted.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let n1_runs = s.nodes.calls().maps.iter().filter(|m| m.0 == "n1").count();
        assert_eq!(n1_runs, 4, "n1's slots are all taken");
        match wait {
            Some(_) => {
                let ran = on_n2();
                assert_eq!(ran.len(), 1, "one task ran away from its input: {ran:?}");
                let copies = s.nodes.calls().copies.clone();
                assert_eq!(copies.len(), 1, "{copies:?}");
                let (from, to, copy) = &copies[0];
                assert!(from.starts_with("blob-") && to == "n2" && copy.starts_with("in-"));
                assert_eq!(ran[0].1.as_deref(), Some(copy.as_str()), "it read the copy");
                assert_eq!(
                    s.nodes.calls().deleted,
                    vec![("n2".to_string(), copy.clone())],
                    "the copy goes once the task has run"
                );
                // Counted as remote bytes once committed.
                let mut remote = 0;
                for _ in 0..100 {
                    remote = s.sv.get("alice", &job.id).await.unwrap().phases[0].bytes_remote;
                    if remote > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(remote, 100);
            }
            None => {
                assert!(on_n2().is_empty(), "no wait set: it waits for n1");
                assert!(s.nodes.calls().copies.is_empty());
            }
        }
        s.sv.cancel("alice", &job.id).await.unwrap();
    }
}

/// Delay scheduling's limits: a node without room for the copy takes no
/// task away from its input (and the driver does not spin: it looks
/// again after each wait), and a task whose input cannot be copied fails
/// after its attempts rather than going back and forth for ever.
#[tokio::test]
async fn a_task_goes_away_only_where_its_input_can_be_copied_and_not_for_ever() {
    for (room, copies_fail) in [(false, false), (true, true)] {
        let mut nodes = FakeNodes::new(&["n1", "n2"]).with("n1", Behaviour::Hang);
        nodes.room = room;
        nodes.copies_fail = copies_fail;
        let s = setup_waiting(nodes, Duration::from_millis(50)).await;
        let job = five_inputs_on_n1(&s).await;
        if room {
            // Three copies, each an attempt, then the task fails.
            let mut errors = Vec::new();
            for _ in 0..100 {
                errors = list(&s.sv, &job.id, JobList::Errors).await;
                if !errors.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0]["code"], "InternalError", "{errors:?}");
            let copies = s.nodes.calls().copies.len();
            assert_eq!(copies, 3, "one copy per attempt");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(s.nodes.calls().copies.len(), 3, "and no more");
        } else {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let calls = s.nodes.calls();
            assert!(calls.copies.is_empty(), "{:?}", calls.copies);
            assert!(calls.maps.iter().all(|m| m.0 == "n1"), "{:?}", calls.maps);
            // Asked about once per wait (50 ms), not on every turn of a
            // spinning driver.
            assert!(
                (5..=40).contains(&calls.room_asked),
                "n2 asked {} times in 1 s",
                calls.room_asked
            );
        }
        assert!(s.nodes.calls().maps.iter().all(|m| m.0 != "n2"));
        s.sv.cancel("alice", &job.id).await.unwrap();
    }
}

#[tokio::test]
async fn cancelling_a_running_job_records_its_aborted_tasks_and_ends_its_containers() {
    let s = setup(FakeNodes::new(&["n1", "n2"]).with("n1", Behaviour::Hang)).await;
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1"]).await;
    let job = s.sv.create("alice", spec(MAP, &["src/a"])).await.unwrap();
    for _ in 0..200 {
        if !s.nodes.calls().maps.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(s.nodes.calls().maps.len(), 1, "the task never started");
    let rec = s.sv.cancel("alice", &job.id).await.unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    // Cancelling again is refused: the job has ended.
    assert!(s.sv.cancel("alice", &job.id).await.is_err());
    for _ in 0..200 {
        if s.nodes.calls().groups_ended.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let nodes: HashSet<String> = s
        .nodes
        .calls()
        .groups_ended
        .iter()
        .map(|g| g.0.clone())
        .collect();
    assert_eq!(nodes.len(), 2, "containers ended on every node");
    let errors = list(&s.sv, &job.id, JobList::Errors).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "JobCancelledError");
    // Another tenant cannot see it.
    assert!(s.sv.get("bob", &job.id).await.is_err());
}

#[tokio::test]
async fn a_job_whose_lease_expires_is_taken_over_and_the_old_driver_is_fenced() {
    // Gateway A's node never answers, and A never renews its lease.
    let s = setup(FakeNodes::new(&["n1"]).with("n1", Behaviour::Hang)).await;
    let a = supervisor(&s.catalog, s.nodes.clone(), "gw-a", 300);
    put(s.catalog.as_ref(), "src", "a", "blob-a", &["n1"]).await;
    let job = a.create("alice", spec(MAP, &["src/a"])).await.unwrap();
    for _ in 0..200 {
        if !s.nodes.calls().maps.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(a.drives(&job.id));
    // Gateway B, whose node answers, claims the expired lease and resumes.
    let b_nodes = Arc::new(FakeNodes::new(&["n1"]));
    let b = supervisor(&s.catalog, b_nodes.clone(), "gw-b", 10_000);
    let mut rec = None;
    for _ in 0..400 {
        b.own_jobs().await;
        let r = s.catalog.job("alice", &job.id).await.unwrap().unwrap();
        if r.state.is_final() {
            rec = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rec = rec.expect("gateway B did not finish the job");
    assert_eq!(rec.state, JobState::Done);
    // The attempt A started counts as a retry; the output is B's, once.
    assert_eq!(
        (
            rec.counters.outputs,
            rec.counters.errors,
            rec.counters.retries
        ),
        (1, 0, 1)
    );
    assert_eq!(b_nodes.calls().maps.len(), 1);
    assert_eq!(list(&b, &job.id, JobList::Outputs).await.len(), 1);
    // A learns at its next commit, or its next ownership turn, that the
    // job moved, and stops driving it.
    a.own_jobs().await;
    for _ in 0..100 {
        if !a.drives(&job.id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.drives(&job.id), "the fenced driver still runs");
}
