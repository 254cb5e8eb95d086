//! The catalog conformance suite: the same behaviour asked of every
//! backend through the public `Catalog` interface. Each test runs against
//! every backend `backends()` can open here.

use std::sync::Arc;

use insitu_catalog::*;
use insitu_job_model::records::{
    ErrorRecord, InputRecord, JobCounters, JobRecord, JobState, MemoOutput, MemoRecord,
    OutputRecord, PieceRecord, Seqs, TaskRecord, TaskState,
};
use insitu_job_model::{JobErrorCode, JobSpec};

struct Backend {
    catalog: Arc<dyn Catalog>,
    _dir: Option<tempfile::TempDir>,
    _pg: Option<testing::TestPostgres>,
}

/// A fresh, empty catalog of each backend: rocksdb in a temp dir, and
/// PostgreSQL on a throwaway server of its own.
async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("temp dir");
    let rocks = open_rocksdb(dir.path()).expect("open rocksdb");
    let pg = testing::TestPostgres::start().expect("throwaway PostgreSQL (scripts/setup)");
    let postgres = PgCatalog::connect(&pg.url("postgres"), 16)
        .await
        .expect("connect to PostgreSQL");
    vec![
        Backend {
            catalog: rocks,
            _dir: Some(dir),
            _pg: None,
        },
        Backend {
            catalog: Arc::new(postgres),
            _dir: None,
            _pg: Some(pg),
        },
    ]
}

fn obj(id: &str) -> ObjectRecord {
    ObjectRecord {
        size: 1,
        etag: format!("etag-{id}"),
        last_modified_ms: 0,
        owner: "t".into(),
        headers: ObjectHeaders::default(),
        acl: Acl::Canned(CannedAcl::Private),
        blob: BlobRef {
            id: id.into(),
            size: 1,
            replicas: vec!["node-0".into()],
        },
        parts_count: 0,
        part_sizes: vec![],
        upload_id: None,
        checksum: None,
    }
}

async fn with_bucket(c: &dyn Catalog) -> BucketRecord {
    c.create_tenant("t").await.unwrap();
    c.create_bucket("b", "t", Acl::Canned(CannedAcl::Private))
        .await
        .unwrap()
}

fn query(prefix: &str, delimiter: Option<&str>, after: Option<&str>, max: usize) -> ListQuery {
    ListQuery {
        prefix: prefix.into(),
        delimiter: delimiter.map(Into::into),
        start_after: after.map(Into::into),
        max,
    }
}

#[tokio::test]
async fn bucket_settings_change_one_at_a_time() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let bucket = with_bucket(c).await;
        let cors = CorsConfig {
            rules: vec![CorsRule {
                id: Some("r1".into()),
                allowed_methods: vec!["GET".into(), "PUT".into()],
                allowed_origins: vec!["https://*.example".into()],
                allowed_headers: vec!["*".into()],
                expose_headers: vec!["etag".into()],
                max_age_seconds: Some(600),
            }],
        };
        c.update_bucket(&bucket, BucketUpdate::Cors(Some(cors.clone())))
            .await
            .unwrap();
        c.update_bucket(
            &bucket,
            BucketUpdate::Acl(Acl::Canned(CannedAcl::PublicRead)),
        )
        .await
        .unwrap();
        let rec = c.get_bucket("b").await.unwrap().unwrap();
        assert_eq!(rec.acl, Acl::Canned(CannedAcl::PublicRead));
        assert_eq!(rec.cors.as_ref(), Some(&cors), "an ACL change keeps CORS");
        c.update_bucket(&bucket, BucketUpdate::Cors(None))
            .await
            .unwrap();
        let rec = c.get_bucket("b").await.unwrap().unwrap();
        assert_eq!(
            (rec.acl, rec.cors),
            (Acl::Canned(CannedAcl::PublicRead), None)
        );
        let mut gone = bucket.clone();
        gone.name = "nope".into();
        assert!(matches!(
            c.update_bucket(&gone, BucketUpdate::Cors(None)).await,
            Err(CatalogError::NoSuchBucket(_))
        ));
        // A bucket deleted and created again (by another tenant) is not the
        // one the caller was authorised for: nothing of its settings moves.
        c.delete_bucket("b").await.unwrap();
        c.create_bucket("b", "u", Acl::default()).await.unwrap();
        assert!(matches!(
            c.update_bucket(
                &bucket,
                BucketUpdate::Acl(Acl::Canned(CannedAcl::PublicRead))
            )
            .await,
            Err(CatalogError::NoSuchBucket(_))
        ));
        assert_eq!(
            c.get_bucket("b").await.unwrap().unwrap().acl,
            Acl::default()
        );
    }
}

#[tokio::test]
async fn an_object_acl_lands_only_on_the_object_that_was_checked() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let bucket = with_bucket(c).await;
        c.put_object("b", "k", &obj("first")).await.unwrap();
        let public = Acl::Canned(CannedAcl::PublicRead);
        assert!(c
            .set_object_acl(&bucket, "k", "first", public.clone())
            .await
            .unwrap());
        assert_eq!(c.get_object("b", "k").await.unwrap().unwrap().acl, public);
        c.put_object("b", "k", &obj("second")).await.unwrap();
        assert!(
            !c.set_object_acl(&bucket, "k", "first", public.clone())
                .await
                .unwrap(),
            "the object was replaced after the check"
        );
        assert_eq!(
            c.get_object("b", "k").await.unwrap().unwrap().acl,
            Acl::default()
        );
        assert!(!c
            .set_object_acl(&bucket, "missing", "x", public)
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn listing_orders_groups_and_pages() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        with_bucket(c).await;
        for k in ["a/1", "a/2", "b", "c/x/1", "c/y", "d", "é", "e\u{1}"] {
            c.put_object("b", k, &obj(k)).await.unwrap();
        }
        let p = c
            .list_objects("b", &query("", None, None, 100))
            .await
            .unwrap();
        let keys: Vec<_> = p.objects.iter().map(|(k, _)| k.as_str()).collect();
        // Byte order, as S3 lists: U+0001 before letters, é (0xC3..) last.
        assert_eq!(
            keys,
            ["a/1", "a/2", "b", "c/x/1", "c/y", "d", "e\u{1}", "é"]
        );

        let p = c
            .list_objects("b", &query("", Some("/"), None, 1000))
            .await
            .unwrap();
        let keys: Vec<_> = p.objects.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "d", "e\u{1}", "é"]);
        assert_eq!(p.common_prefixes, ["a/", "c/"]);

        // Pages of two, resumed from `last`, see every entry exactly once.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = c
                .list_objects("b", &query("", Some("/"), after.as_deref(), 2))
                .await
                .unwrap();
            seen.extend(p.objects.iter().map(|(k, _)| k.clone()));
            seen.extend(p.common_prefixes.iter().cloned());
            if !p.is_truncated {
                break;
            }
            after = p.last;
        }
        seen.sort();
        assert_eq!(seen, ["a/", "b", "c/", "d", "e\u{1}", "é"]);

        let p = c
            .list_objects("b", &query("c/", None, None, 10))
            .await
            .unwrap();
        assert_eq!(p.objects.len(), 2);
        let p = c
            .list_objects("b", &query("c/", Some("/"), None, 10))
            .await
            .unwrap();
        assert_eq!(p.common_prefixes, ["c/x/"]);
        assert_eq!(p.objects.len(), 1);
        // Another bucket's keys never leak into a listing.
        c.create_bucket("b2", "t", Acl::Canned(CannedAcl::Private))
            .await
            .unwrap();
        c.put_object("b2", "a/1", &obj("other")).await.unwrap();
        let p = c
            .list_objects("b", &query("", None, None, 100))
            .await
            .unwrap();
        assert_eq!(p.objects.len(), 8);
    }
}

#[tokio::test]
async fn overwrite_and_delete_queue_old_blobs_and_keep_the_owner_index() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        with_bucket(c).await;
        c.put_object("b", "k", &obj("one")).await.unwrap();
        c.put_object("b", "k", &obj("two")).await.unwrap();
        let gc = c.list_gc_after("", 10).await.unwrap();
        assert_eq!(gc.len(), 1);
        assert_eq!(gc[0].blob.id, "one");
        assert!(c.is_gc_queued("one").await.unwrap());
        assert!(c.owned_blob("one").await.unwrap().is_none());
        let (owner, blob) = c.owned_blob("two").await.unwrap().unwrap();
        assert_eq!(blob.id, "two");
        assert!(matches!(owner, BlobOwner::Object { ref key, .. } if key == "k"));
        assert!(matches!(
            c.delete_bucket("b").await,
            Err(CatalogError::BucketNotEmpty(_))
        ));
        assert!(c.delete_object("b", "k").await.unwrap());
        assert!(!c.delete_object("b", "k").await.unwrap());
        assert_eq!(c.list_gc_after("", 10).await.unwrap().len(), 2);
        assert!(c.scan_blobs("", 10).await.unwrap().is_empty());
        c.remove_gc("one").await.unwrap();
        assert!(!c.is_gc_queued("one").await.unwrap());
        c.delete_bucket("b").await.unwrap();
        c.create_bucket("b", "t", Acl::Canned(CannedAcl::Private))
            .await
            .unwrap();
        assert!(matches!(
            c.create_bucket("b", "u", Acl::Canned(CannedAcl::Private))
                .await,
            Err(CatalogError::BucketAlreadyExists(_))
        ));
        assert!(matches!(
            c.create_bucket("b", "t", Acl::Canned(CannedAcl::Private))
                .await,
            Err(CatalogError::BucketAlreadyOwnedByYou(_))
        ));
    }
}

#[tokio::test]
async fn conditional_writes_hold_atomically() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let bucket = with_bucket(c).await;
        let none_match = WriteCondition::IfNoneMatchAny;
        c.put_object_checked(&bucket, "k", &obj("one"), &none_match)
            .await
            .unwrap();
        assert!(matches!(
            c.put_object_checked(&bucket, "k", &obj("two"), &none_match)
                .await,
            Err(CatalogError::PreconditionFailed)
        ));
        let wrong = WriteCondition::IfMatch("nope".into());
        assert!(matches!(
            c.put_object_checked(&bucket, "k", &obj("two"), &wrong)
                .await,
            Err(CatalogError::PreconditionFailed)
        ));
        let same = WriteCondition::IfNoneMatch("etag-one".into());
        assert!(matches!(
            c.put_object_checked(&bucket, "k", &obj("two"), &same).await,
            Err(CatalogError::PreconditionFailed)
        ));
        let right = WriteCondition::IfMatch("etag-one".into());
        c.put_object_checked(&bucket, "k", &obj("two"), &right)
            .await
            .unwrap();
        let other = WriteCondition::IfNoneMatch("etag-one".into());
        c.put_object_checked(&bucket, "k", &obj("two"), &other)
            .await
            .unwrap();
        c.put_object_checked(&bucket, "k", &obj("two"), &WriteCondition::IfMatchAny)
            .await
            .unwrap();
        // If-Match with no object under the key is NoSuchKey, as in S3.
        for cond in [
            WriteCondition::IfMatchAny,
            WriteCondition::IfMatch("etag-two".into()),
        ] {
            assert!(matches!(
                c.put_object_checked(&bucket, "absent", &obj("x"), &cond)
                    .await,
                Err(CatalogError::NoSuchKey(_))
            ));
        }
        assert_eq!(
            c.get_object("b", "k").await.unwrap().unwrap().blob.id,
            "two"
        );
        // A bucket deleted and re-created meanwhile is another bucket.
        c.delete_object("b", "k").await.unwrap();
        c.delete_bucket("b").await.unwrap();
        c.create_tenant("u").await.unwrap();
        c.create_bucket("b", "u", Acl::Canned(CannedAcl::Private))
            .await
            .unwrap();
        assert!(matches!(
            c.put_object_checked(&bucket, "k", &obj("three"), &WriteCondition::None)
                .await,
            Err(CatalogError::NoSuchBucket(_))
        ));
    }
}

#[tokio::test]
async fn concurrent_writers_of_one_key_leave_one_winner_and_no_leak() {
    for b in backends().await {
        let c = b.catalog.clone();
        let bucket = with_bucket(c.as_ref()).await;
        let mut tasks = Vec::new();
        for i in 0..32 {
            let c = c.clone();
            let bucket = bucket.clone();
            tasks.push(tokio::spawn(async move {
                let cond = if i % 2 == 0 {
                    WriteCondition::IfNoneMatchAny
                } else {
                    WriteCondition::None
                };
                c.put_object_checked(&bucket, "k", &obj(&format!("blob-{i:02}")), &cond)
                    .await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => won += 1,
                Err(CatalogError::PreconditionFailed) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert!(won >= 16, "every unconditional write succeeds");
        // Exactly one blob is referenced; every other written one is queued.
        let referenced = c.scan_blobs("", 100).await.unwrap();
        assert_eq!(referenced.len(), 1);
        let visible = c.get_object("b", "k").await.unwrap().unwrap();
        assert_eq!(referenced[0].1.id, visible.blob.id);
        let queued = c.list_gc_after("", 100).await.unwrap();
        assert_eq!(queued.len(), won - 1);
        assert!(queued.iter().all(|g| g.blob.id != visible.blob.id));
    }
}

#[tokio::test]
async fn many_writers_of_different_keys_in_one_bucket_all_succeed() {
    // The hot path: concurrent PUTs of new keys into one bucket. None may
    // fail for want of isolation (a serializable transaction reading the
    // absent key would abort its neighbours).
    for b in backends().await {
        let c = b.catalog.clone();
        let bucket = with_bucket(c.as_ref()).await;
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (c, bucket) = (c.clone(), bucket.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..4 {
                    let key = format!("in/{i:03}-{round}");
                    let blob = format!("blob-{i:03}-{round}");
                    c.put_object_checked(&bucket, &key, &obj(&blob), &WriteCondition::None)
                        .await?;
                }
                Ok::<(), CatalogError>(())
            }));
        }
        for t in tasks {
            t.await.unwrap().expect("every write of a new key succeeds");
        }
        let q = ListQuery {
            prefix: "in/".into(),
            max: 1000,
            ..Default::default()
        };
        assert_eq!(c.list_objects("b", &q).await.unwrap().objects.len(), 256);
    }
}

#[tokio::test]
async fn a_bucket_deleted_during_writes_keeps_no_object() {
    for b in backends().await {
        let c = b.catalog.clone();
        let bucket = with_bucket(c.as_ref()).await;
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (c, bucket) = (c.clone(), bucket.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("k{i}");
                c.put_object_checked(&bucket, &key, &obj(&format!("x{i}")), &WriteCondition::None)
                    .await
            }));
        }
        let deleted = c.delete_bucket("b").await;
        let mut written = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => written += 1,
                Err(CatalogError::NoSuchBucket(_)) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        match deleted {
            // Deleted: no write landed after it, and none before it (the
            // bucket was empty).
            Ok(()) => {
                assert!(c.get_bucket("b").await.unwrap().is_none());
                let q = ListQuery {
                    max: 100,
                    ..Default::default()
                };
                assert!(c.list_objects("b", &q).await.unwrap().objects.is_empty());
                assert_eq!(c.scan_blobs("", 100).await.unwrap().len(), 0);
            }
            Err(CatalogError::BucketNotEmpty(_)) => assert!(written > 0),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

#[tokio::test]
async fn multipart_parts_replace_list_and_complete() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        with_bucket(c).await;
        let up = UploadRecord {
            upload_id: "u1".into(),
            bucket: "b".into(),
            key: "big".into(),
            owner: "t".into(),
            initiated_ms: 0,
            headers: ObjectHeaders::default(),
            acl: Acl::Canned(CannedAcl::Private),
            nodes: vec!["node-0".into()],
            checksum: None,
        };
        c.create_upload(&up).await.unwrap();
        let part = |n: u32, id: &str| PartRecord {
            part_number: n,
            etag: format!("p{n}"),
            blob: obj(id).blob,
            last_modified_ms: 0,
            checksum: None,
        };
        for n in [3, 1, 2] {
            c.put_part("b", "big", "u1", &part(n, &format!("part-{n}")))
                .await
                .unwrap();
        }
        c.put_part("b", "big", "u1", &part(2, "part-2b"))
            .await
            .unwrap();
        assert!(c.is_gc_queued("part-2").await.unwrap());
        let (parts, more) = c.list_parts("u1", 0, 2).await.unwrap();
        assert_eq!(
            parts.iter().map(|p| p.part_number).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(more);
        let (parts, more) = c.list_parts("u1", 2, 10).await.unwrap();
        assert_eq!(parts.len(), 1);
        assert!(!more);
        let q = UploadQuery {
            max: 10,
            ..Default::default()
        };
        assert_eq!(c.list_uploads("b", &q).await.unwrap().uploads.len(), 1);
        assert!(matches!(
            c.put_part("b", "big", "nope", &part(1, "x")).await,
            Err(CatalogError::NoSuchUpload(_))
        ));
        // A condition that fails leaves the upload open.
        assert!(matches!(
            c.complete_upload("b", "big", "u1", &obj("whole"), &WriteCondition::IfMatchAny)
                .await,
            Err(CatalogError::NoSuchKey(_))
        ));
        assert!(c.get_upload("b", "big", "u1").await.unwrap().is_some());
        c.complete_upload(
            "b",
            "big",
            "u1",
            &obj("whole"),
            &WriteCondition::IfNoneMatchAny,
        )
        .await
        .unwrap();
        assert!(c.get_upload("b", "big", "u1").await.unwrap().is_none());
        assert_eq!(
            c.get_object("b", "big").await.unwrap().unwrap().blob.id,
            "whole"
        );
        for id in ["part-1", "part-2b", "part-3"] {
            assert!(c.is_gc_queued(id).await.unwrap(), "{id} queued");
        }
        assert!(c.list_uploads("b", &q).await.unwrap().uploads.is_empty());
    }
}

fn job(id: &str) -> JobRecord {
    JobRecord {
        id: id.into(),
        tenant: "t".into(),
        spec: JobSpec::parse(
            br#"{"phases":[{"type":"map","image":"busybox","exec":"wc -l"}],"inputs":["bkt/k"],"output":"bkt/o/"}"#,
        )
        .unwrap(),
        state: JobState::Queued,
        created_ms: 0,
        done_ms: None,
        input_closed: true,
        prefix_cursor: None,
        seq: Seqs::default(),
        phases: vec![Default::default()],
        counters: JobCounters::default(),
    }
}

fn task(seq: u64) -> TaskRecord {
    TaskRecord {
        pin: None,
        id: insitu_job_model::plan::map_task_id(seq),
        phase: 0,
        input: Some(format!("b/in{seq}")),
        reducer: None,
        state: TaskState::Queued,
        node: None,
        attempts: 0,
    }
}

#[tokio::test]
async fn a_job_change_commits_state_lists_and_outputs_together() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let bucket = with_bucket(c).await;
        let mut rec = job("j1");
        let mut ch = JobChange::default();
        for seq in 0..5 {
            ch.add_input(
                "j1",
                seq,
                InputRecord {
                    etag: None,
                    input: format!("b/in{seq}"),
                },
            );
            ch.put_task("j1", seq, task(seq));
        }
        ch.put_reducer(
            "j1",
            TaskRecord {
                pin: None,
                id: "r1-0".into(),
                phase: 1,
                input: None,
                reducer: Some(0),
                state: TaskState::Queued,
                node: None,
                attempts: 0,
            },
        );
        rec.seq.input = 5;
        ch.put_job(&rec);
        c.job_commit(ch).await.unwrap();
        assert!(c.job_has_input("j1", "b/in3").await.unwrap());
        assert!(!c.job_has_input("j1", "b/in9").await.unwrap());
        assert!(!c.job_has_input("j2", "b/in3").await.unwrap());
        let tasks = c.job_tasks("j1", None, 2).await.unwrap();
        assert_eq!(tasks.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1]);
        let tasks = c.job_tasks("j1", Some(1), 10).await.unwrap();
        assert_eq!(tasks.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3, 4]);
        let inputs = c
            .job_inputs("j1", InputList::All, Some(3), 10)
            .await
            .unwrap();
        assert_eq!(
            inputs,
            [(
                4,
                InputRecord {
                    etag: None,
                    input: "b/in4".into()
                }
            )]
        );
        assert_eq!(c.job_reducer("j1", 1, 0).await.unwrap().unwrap().id, "r1-0");
        assert!(c.job_reducer("j1", 1, 1).await.unwrap().is_none());

        // A task outcome: its output object, list entries and new state,
        // all at once.
        let mut done = task(2);
        done.state = TaskState::Done;
        let mut ch = JobChange::default();
        ch.put_task("j1", 2, done);
        ch.put_object(&bucket, "out/2", obj("out-2"));
        ch.add_output(
            "j1",
            0,
            OutputRecord {
                etag: None,
                input_etag: None,
                phase: 0,
                task: "m00000002".into(),
                object: "b/out/2".into(),
                size: 1,
            },
        );
        ch.add_piece(
            "j1",
            1,
            0,
            0,
            PieceRecord {
                pin: None,
                bucket: "b".into(),
                key: "out/2".into(),
                size: 1,
            },
        );
        ch.add_error(
            "j1",
            0,
            ErrorRecord {
                input_etag: None,
                phase: 0,
                task: "m00000003".into(),
                input: "b/in3".into(),
                code: JobErrorCode::UserTaskError,
                message: "exit 1".into(),
                stderr: None,
                node: None,
            },
        );
        ch.add_failed_input(
            "j1",
            0,
            InputRecord {
                etag: None,
                input: "b/in3".into(),
            },
        );
        rec.counters.outputs = 1;
        ch.put_job(&rec);
        c.job_commit(ch).await.unwrap();
        let tasks = c.job_tasks("j1", Some(1), 1).await.unwrap();
        assert_eq!(tasks[0].1.state, TaskState::Done);
        assert_eq!(c.job_outputs("j1", None, 10).await.unwrap().len(), 1);
        assert_eq!(c.job_errors("j1", None, 10).await.unwrap().len(), 1);
        assert_eq!(
            c.job_inputs("j1", InputList::Failed, None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(c.job_pieces("j1", 1, 0, None, 10).await.unwrap().len(), 1);
        assert!(c.job_pieces("j1", 1, 1, None, 10).await.unwrap().is_empty());
        assert!(c.get_object("b", "out/2").await.unwrap().is_some());
        assert_eq!(c.job("t", "j1").await.unwrap().unwrap().counters.outputs, 1);

        // A change whose output bucket has gone changes nothing at all.
        let mut gone = bucket.clone();
        gone.created_ms += 1;
        let mut ch = JobChange::default();
        ch.put_object(&gone, "out/3", obj("out-3"));
        ch.add_output(
            "j1",
            1,
            OutputRecord {
                etag: None,
                input_etag: None,
                phase: 0,
                task: "m00000003".into(),
                object: "b/out/3".into(),
                size: 1,
            },
        );
        let mut later = rec.clone();
        later.counters.outputs = 2;
        ch.put_job(&later);
        assert!(c.job_commit(ch).await.is_err());
        assert_eq!(c.job_outputs("j1", None, 10).await.unwrap().len(), 1);
        assert_eq!(c.job("t", "j1").await.unwrap().unwrap().counters.outputs, 1);
        assert!(c.get_object("b", "out/3").await.unwrap().is_none());

        // Deleting intermediate objects queues their blobs.
        let mut ch = JobChange::default();
        ch.delete_object("b", "out/2");
        c.job_commit(ch).await.unwrap();
        assert!(c.is_gc_queued("out-2").await.unwrap());
    }
}

#[tokio::test]
async fn jobs_list_per_tenant_and_across_tenants() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        for (tenant, id) in [("t", "j1"), ("t", "j2"), ("u", "j3"), ("t", "j4")] {
            let mut rec = job(id);
            rec.tenant = tenant.into();
            let mut ch = JobChange::default();
            ch.put_job(&rec);
            c.job_commit(ch).await.unwrap();
        }
        let ids = |v: Vec<JobRecord>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(
            ids(c.jobs("t", None, 10).await.unwrap()),
            ["j1", "j2", "j4"]
        );
        assert_eq!(ids(c.jobs("t", Some("j1"), 1).await.unwrap()), ["j2"]);
        assert_eq!(ids(c.jobs("u", None, 10).await.unwrap()), ["j3"]);
        assert_eq!(
            ids(c.all_jobs(None, 10).await.unwrap()),
            ["j1", "j2", "j4", "j3"]
        );
        assert_eq!(
            ids(c.all_jobs(Some(("t", "j4")), 10).await.unwrap()),
            ["j3"]
        );
        assert!(c.job("u", "j1").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn tenants_keys_and_nodes() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        c.create_tenant("t").await.unwrap();
        assert!(matches!(
            c.create_tenant("t").await,
            Err(CatalogError::TenantExists(_))
        ));
        c.ensure_tenant("t").await.unwrap();
        let key = AccessKeyRecord {
            access_key_id: "AK".into(),
            secret_access_key: "secret".into(),
            tenant: "t".into(),
            created_ms: 0,
        };
        c.put_access_key(&key).await.unwrap();
        c.put_access_key(&key).await.unwrap();
        let mut other = key.clone();
        other.secret_access_key = "other".into();
        assert!(matches!(
            c.put_access_key(&other).await,
            Err(CatalogError::KeyExists(_))
        ));
        other.tenant = "nobody".into();
        other.access_key_id = "AK2".into();
        assert!(matches!(
            c.put_access_key(&other).await,
            Err(CatalogError::NoSuchTenant(_))
        ));
        assert_eq!(c.get_access_key("AK").await.unwrap().unwrap().tenant, "t");
        let policy = TenantPolicy {
            max_memory_mb: Some(64),
            ..Default::default()
        };
        assert!(c.set_tenant_policy("t", &policy).await.unwrap());
        assert!(!c.set_tenant_policy("nobody", &policy).await.unwrap());
        assert_eq!(
            c.get_tenant("t")
                .await
                .unwrap()
                .unwrap()
                .policy
                .max_memory_mb,
            Some(64)
        );

        let node = NodeRecord {
            id: "node-0".into(),
            addr: "http://127.0.0.1:1".into(),
            registered_ms: 0,
            draining: false,
            removed: false,
            key_sha256: None,
        };
        c.put_node(&node).await.unwrap();
        assert!(c.set_node_draining("node-0", true).await.unwrap());
        assert!(!c.set_node_draining("node-9", true).await.unwrap());
        c.remove_node("node-0").await.unwrap();
        let n = c.get_node("node-0").await.unwrap().unwrap();
        assert!(n.draining && n.removed);
        assert_eq!(c.list_nodes().await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = open_rocksdb(dir.path()).unwrap();
        c.create_tenant("t").await.unwrap();
        c.create_bucket("b", "t", Acl::Canned(CannedAcl::PublicRead))
            .await
            .unwrap();
        c.put_object("b", "k", &obj("one")).await.unwrap();
    }
    let c = open_rocksdb(dir.path()).unwrap();
    assert_eq!(
        c.get_bucket("b").await.unwrap().unwrap().acl,
        Acl::Canned(CannedAcl::PublicRead)
    );
    assert_eq!(
        c.get_object("b", "k").await.unwrap().unwrap().blob.id,
        "one"
    );
}

#[tokio::test]
async fn a_jobs_pins_hold_until_its_lease_is_released() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let blob = BlobRef {
            id: "pinned-1".into(),
            size: 3,
            replicas: vec!["node-0".into()],
        };
        assert_eq!(c.pinned_blob("pinned-1").await.unwrap(), None);
        for id in ["jp", "jq"] {
            let mut ch = JobChange::default();
            ch.put_job(&job(id));
            ch.pin(id, blob.clone());
            c.job_commit(ch).await.unwrap();
        }
        assert_eq!(c.pinned_blob("pinned-1").await.unwrap(), Some(blob.clone()));
        // A blob whose id begins like a pinned one's is not pinned.
        assert_eq!(c.pinned_blob("pinned-").await.unwrap(), None);
        // One job ends: the other still holds the blob.
        let mut ch = JobChange::default();
        ch.release_lease("jp");
        c.job_commit(ch).await.unwrap();
        assert_eq!(c.pinned_blob("pinned-1").await.unwrap(), Some(blob.clone()));
        let mut ch = JobChange::default();
        ch.release_lease("jq");
        c.job_commit(ch).await.unwrap();
        assert_eq!(c.pinned_blob("pinned-1").await.unwrap(), None);
        // Pinned and released in one change: nothing kept.
        let mut ch = JobChange::default();
        ch.put_job(&job("jr"));
        ch.pin("jr", blob.clone());
        ch.release_lease("jr");
        c.job_commit(ch).await.unwrap();
        assert_eq!(c.pinned_blob("pinned-1").await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_change_that_requires_a_running_job_is_refused_once_it_ended() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let blob = BlobRef {
            id: "ref-1".into(),
            size: 3,
            replicas: vec!["node-0".into()],
        };
        let pin_if_running = |job: &str| {
            let mut ch = JobChange::default();
            ch.require_running("t", job);
            ch.pin(job, blob.clone());
            ch
        };
        // No such job.
        assert!(matches!(
            c.job_commit(pin_if_running("nope")).await,
            Err(CatalogError::Conflict(_))
        ));
        let mut rec = job("jrun");
        let mut ch = JobChange::default();
        ch.put_job(&rec);
        c.job_commit(ch).await.unwrap();
        c.job_commit(pin_if_running("jrun")).await.unwrap();
        assert_eq!(c.pinned_blob("ref-1").await.unwrap(), Some(blob.clone()));
        // It ends (cancelled: the lease stays until its cleanup is done).
        rec.state = JobState::Cancelled;
        let mut ch = JobChange::default();
        ch.put_job(&rec);
        c.job_commit(ch).await.unwrap();
        assert!(matches!(
            c.job_commit(pin_if_running("jrun")).await,
            Err(CatalogError::Conflict(_))
        ));
        let mut ch = JobChange::default();
        ch.release_lease("jrun");
        c.job_commit(ch).await.unwrap();
        assert_eq!(c.pinned_blob("ref-1").await.unwrap(), None);
    }
}

#[tokio::test]
async fn an_ended_jobs_pins_are_released_page_by_page() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let blob = |i: usize| BlobRef {
            id: format!("paged-{i}"),
            size: 1,
            replicas: vec!["node-0".into()],
        };
        let mut ch = JobChange::default();
        ch.put_job(&job("jpaged"));
        for i in 0..5 {
            ch.pin("jpaged", blob(i));
        }
        // Another job's pin of one of them stays.
        ch.pin("jother", blob(0));
        c.job_commit(ch).await.unwrap();
        let mut released = Vec::new();
        loop {
            let n = c.release_pins("jpaged", 2).await.unwrap();
            released.push(n);
            if n < 2 {
                break;
            }
        }
        assert_eq!(released, vec![2, 2, 1]);
        assert_eq!(c.pinned_blob("paged-0").await.unwrap(), Some(blob(0)));
        for i in 1..5 {
            assert_eq!(c.pinned_blob(&format!("paged-{i}")).await.unwrap(), None);
        }
        assert_eq!(c.release_pins("jpaged", 2).await.unwrap(), 0);
    }
}

fn memo(created_ms: i64, key: &str) -> MemoRecord {
    MemoRecord {
        created_ms,
        job: "j1".into(),
        task: "t1".into(),
        outputs: vec![MemoOutput {
            bucket: "out".into(),
            key: key.into(),
            etag: format!("etag-{key}"),
            size: 3,
            blob: format!("blob-{key}"),
        }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memo_entries_are_per_tenant_replaced_deleted_and_capped_oldest_first() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        assert_eq!(c.memo_get("t", "fp1").await.unwrap(), None);
        c.memo_put("t", "fp1", &memo(10, "a"), 3).await.unwrap();
        c.memo_put("t", "fp2", &memo(20, "b"), 3).await.unwrap();
        // Another tenant's entries are its own, and not counted here.
        c.memo_put("u", "fp1", &memo(5, "u"), 3).await.unwrap();
        assert_eq!(c.memo_get("t", "fp1").await.unwrap(), Some(memo(10, "a")));
        assert_eq!(c.memo_get("u", "fp1").await.unwrap(), Some(memo(5, "u")));
        // A replacement is not a new entry, and gets its new age.
        c.memo_put("t", "fp1", &memo(30, "a2"), 3).await.unwrap();
        assert_eq!(c.memo_get("t", "fp1").await.unwrap(), Some(memo(30, "a2")));
        c.memo_put("t", "fp3", &memo(40, "c"), 3).await.unwrap();
        // Past the cap of 3: the oldest (fp2, 20) goes, the rest stay.
        c.memo_put("t", "fp4", &memo(50, "d"), 3).await.unwrap();
        assert_eq!(c.memo_get("t", "fp2").await.unwrap(), None);
        for fp in ["fp1", "fp3", "fp4"] {
            assert!(c.memo_get("t", fp).await.unwrap().is_some(), "{fp}");
        }
        // A deleted entry frees its place: the next put evicts nothing.
        // Only the entry as it was read: one written since stays.
        c.memo_delete("t", "fp3", Some(39)).await.unwrap();
        assert!(c.memo_get("t", "fp3").await.unwrap().is_some());
        c.memo_delete("t", "fp3", Some(40)).await.unwrap();
        c.memo_delete("t", "fp3", None).await.unwrap();
        assert_eq!(c.memo_get("t", "fp3").await.unwrap(), None);
        c.memo_put("t", "fp5", &memo(60, "e"), 3).await.unwrap();
        for fp in ["fp1", "fp4", "fp5"] {
            assert!(c.memo_get("t", fp).await.unwrap().is_some(), "{fp}");
        }
        // An entry written with an age older than all others is still kept
        // when it is the one that pushes past the cap.
        c.memo_put("t", "fp6", &memo(1, "f"), 3).await.unwrap();
        assert!(c.memo_get("t", "fp6").await.unwrap().is_some());
        assert_eq!(c.memo_get("t", "fp1").await.unwrap(), None);
        assert_eq!(c.memo_get("u", "fp1").await.unwrap(), Some(memo(5, "u")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memo_entries_go_when_a_blob_they_name_is_forgotten() {
    for b in backends().await {
        let c = b.catalog.as_ref();
        let two = |created_ms: i64, first: &str, second: &str| {
            let mut rec = memo(created_ms, first);
            rec.outputs.extend(memo(created_ms, second).outputs);
            rec
        };
        // fp1 and fp2 of t both name blob-shared; u's fp1 too; fp3 not.
        c.memo_put("t", "fp1", &two(10, "a", "shared"), 10)
            .await
            .unwrap();
        c.memo_put("t", "fp2", &two(20, "shared", "b"), 10)
            .await
            .unwrap();
        c.memo_put("t", "fp3", &memo(30, "c"), 10).await.unwrap();
        c.memo_put("u", "fp1", &memo(40, "shared"), 10)
            .await
            .unwrap();
        assert_eq!(c.memo_forget_blob("blob-none").await.unwrap(), 0);
        assert_eq!(c.memo_forget_blob("blob-shared").await.unwrap(), 3);
        for (tenant, fp) in [("t", "fp1"), ("t", "fp2"), ("u", "fp1")] {
            assert_eq!(c.memo_get(tenant, fp).await.unwrap(), None, "{tenant} {fp}");
        }
        assert_eq!(c.memo_get("t", "fp3").await.unwrap(), Some(memo(30, "c")));
        // Forgotten once: a second call finds nothing.
        assert_eq!(c.memo_forget_blob("blob-shared").await.unwrap(), 0);
        // An entry replaced by one naming other blobs is not forgotten
        // for the blobs it no longer names.
        c.memo_put("t", "fp4", &memo(50, "old"), 10).await.unwrap();
        c.memo_put("t", "fp4", &memo(60, "new"), 10).await.unwrap();
        assert_eq!(c.memo_forget_blob("blob-old").await.unwrap(), 0);
        assert_eq!(c.memo_get("t", "fp4").await.unwrap(), Some(memo(60, "new")));
        // The counts went down with the entries: t holds fp3 and fp4, so
        // with a cap of 3 one more entry evicts nothing.
        c.memo_put("t", "fp5", &memo(70, "e"), 3).await.unwrap();
        for fp in ["fp3", "fp4", "fp5"] {
            assert!(c.memo_get("t", fp).await.unwrap().is_some(), "{fp}");
        }
        // An entry evicted by the cap leaves no row behind that would
        // forget a later entry's blob wrongly (and forgets nothing).
        c.memo_put("t", "fp6", &memo(80, "f"), 3).await.unwrap();
        assert_eq!(c.memo_get("t", "fp3").await.unwrap(), None);
        assert_eq!(c.memo_forget_blob("blob-c").await.unwrap(), 0);
        assert_eq!(c.memo_forget_blob("blob-f").await.unwrap(), 1);
    }
}
