//! What the task endpoints on the nodes may read, for a task's tenant:
//! an object's current version and where its blob lives, or a page of a
//! bucket's listing. The node asks with the cluster secret and names the
//! tenant of the task it serves; the answer follows the S3 API's rules
//! (`s3::access`), so a task reads exactly what its tenant could read with
//! its own keys. Only metadata passes here: the node reads the bytes from a
//! holder of the blob.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use insitu_catalog::ListQuery;
use insitu_node_api::{
    Holder, TaskListEntry, TaskListQuery, TaskListing, TaskObject, TaskObjectQuery, TaskReadError,
};
use serde::de::DeserializeOwned;

use crate::auth::Principal;
use crate::body::read_small;
use crate::error::{S3Error, S3ErrorCode, S3Result};
use crate::limits::MAX_LIST_KEYS;
use crate::s3::access::{readable_bucket, readable_object};
use crate::Gateway;

/// Largest query a node sends (a key, a prefix, a tenant name).
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Whether a path is one of the task reads.
pub fn is_task_read(path: &str) -> bool {
    path == insitu_node_api::TASK_OBJECT_PATH || path == insitu_node_api::TASK_LIST_PATH
}

/// Answers `TASK_OBJECT_PATH` and `TASK_LIST_PATH`.
pub async fn handle(gw: &Gateway, parts: &Parts, body: Body) -> Response {
    let is_object = parts.uri.path() == insitu_node_api::TASK_OBJECT_PATH;
    if !crate::admin_api::from_cluster(gw, parts) || parts.method != http::Method::POST {
        return refusal(S3Error::access_denied());
    }
    let answer = match is_object {
        true => match query::<TaskObjectQuery>(body).await {
            Ok(q) => object(gw, &q).await.map(|o| Json(o).into_response()),
            Err(e) => Err(e),
        },
        false => match query::<TaskListQuery>(body).await {
            Ok(q) => list(gw, &q).await.map(|l| Json(l).into_response()),
            Err(e) => Err(e),
        },
    };
    answer.unwrap_or_else(refusal)
}

async fn query<Q: DeserializeOwned>(body: Body) -> S3Result<Q> {
    use futures::TryStreamExt;
    let raw = body
        .into_data_stream()
        .map_err(|e| S3Error::new(S3ErrorCode::IncompleteBody, e.to_string()));
    let bytes = read_small(Box::pin(raw), MAX_QUERY_BYTES).await?;
    serde_json::from_slice(&bytes).map_err(|e| S3Error::invalid_argument(e.to_string()))
}

fn task_principal(tenant: &str) -> Principal {
    Principal::User {
        tenant: tenant.to_string(),
        access_key_id: String::new(),
        is_root: false,
    }
}

async fn object(gw: &Gateway, q: &TaskObjectQuery) -> S3Result<TaskObject> {
    let who = task_principal(&q.tenant);
    let (_, obj) = readable_object(gw, &who, &q.bucket, &q.key).await?;
    if let Some(job) = &q.pin_for_job {
        // Held from the read until the pin is in the catalog: GC leaves
        // the version alone meanwhile.
        let _held = gw.inflight.hold(&obj.blob.id);
        let mut change = insitu_catalog::JobChange::default();
        change.require_running(&q.tenant, job);
        change.pin(job, obj.blob.clone());
        match gw.catalog.job_commit(change).await {
            Ok(()) => {}
            Err(insitu_catalog::CatalogError::Conflict(_)) => {
                return Err(S3Error::new(
                    S3ErrorCode::AccessDenied,
                    "the task's job has ended",
                ))
            }
            Err(e) => {
                tracing::warn!(job = %job, error = %e, "cannot pin a task's reference");
                return Err(S3Error::new(
                    S3ErrorCode::ServiceUnavailable,
                    "the reference cannot be recorded now; retry",
                ));
            }
        }
    }
    // Up replicas first: the node tries them in order.
    let mut holders: Vec<Holder> = obj
        .blob
        .replicas
        .iter()
        .filter_map(|n| {
            gw.nodes.addr_of(n).map(|addr| Holder {
                node: n.clone(),
                addr,
            })
        })
        .collect();
    holders.sort_by_key(|h| gw.nodes.state(&h.node) != Some(crate::nodes::NodeState::Up));
    Ok(TaskObject {
        etag: obj.etag,
        size: obj.size,
        last_modified_ms: obj.last_modified_ms,
        content_type: obj.headers.content_type,
        blob: obj.blob.id,
        holders,
        pinned: q.pin_for_job.is_some(),
    })
}

async fn list(gw: &Gateway, q: &TaskListQuery) -> S3Result<TaskListing> {
    let who = task_principal(&q.tenant);
    readable_bucket(gw, &who, &q.bucket).await?;
    let max = q.max_keys.clamp(1, MAX_LIST_KEYS);
    let page = gw
        .catalog
        .list_objects(
            &q.bucket,
            &ListQuery {
                prefix: q.prefix.clone(),
                delimiter: q.delimiter.clone().filter(|d| !d.is_empty()),
                start_after: q.after.clone().filter(|s| !s.is_empty()),
                max,
            },
        )
        .await?;
    Ok(TaskListing {
        objects: page
            .objects
            .into_iter()
            .map(|(key, o)| TaskListEntry {
                key,
                etag: o.etag,
                size: o.size,
                last_modified_ms: o.last_modified_ms,
            })
            .collect(),
        common_prefixes: page.common_prefixes,
        truncated: page.is_truncated,
        last: page.last,
    })
}

fn refusal(e: S3Error) -> Response {
    let status = e.code.status();
    let body = TaskReadError {
        code: e.code.as_str().to_string(),
        message: e.message,
    };
    (status, Json(body)).into_response()
}
