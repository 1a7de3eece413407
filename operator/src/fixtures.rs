//! An in-memory apiserver for reconcile tests: the tier between pure render tests and e2e
//! (after controller-rs's `fixtures.rs`). It serves `GET`, `LIST` (label-selected; metadata
//! only when asked for it), `POST`, server-side apply and merge `PATCH` (status included) and `DELETE` on objects
//! kept by path, records every write, and can be told to fail a path. Enough to run the real
//! reconciler against, not a Kubernetes: no defaulting, no validation, no watch.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One write the reconciler made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `POST`, `PATCH`, `DELETE`.
    pub method: String,
    /// Object path (a `POST` names the object it created).
    pub path: String,
    /// `apply`, `merge`, `json` for patches; empty otherwise.
    pub kind: String,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    writes: Vec<Write>,
    /// Paths (prefixes) answered with 500.
    failing: Vec<String>,
    version: u64,
}

/// The fake apiserver; cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code.as_u16()});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r
}

fn ok(code: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = code;
    r
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Whether `path` names a collection (`.../deployments`) rather than an object: after the group
/// and version, a collection has an odd number of segments (`plural`, `namespaces/ns/plural`).
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.first() {
        Some(&"api") => &segs[2.min(segs.len())..],
        _ => &segs[3.min(segs.len())..],
    };
    rest.len() % 2 == 1
}

fn selects(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
        // `key`: the label exists.
        None => !obj["metadata"]["labels"][term].is_null(),
    })
}

impl FakeApiServer {
    /// A client talking to this server.
    pub fn client(&self) -> kube::Client {
        let me = self.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    /// Stores `obj` at `path` (as if it had been created).
    pub fn insert(&self, path: &str, mut obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.version += 1;
        obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
        s.objects.insert(path.to_string(), obj);
    }

    /// The object at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// Answers requests to paths starting with `prefix` with 500 from now on.
    pub fn fail(&self, prefix: &str) {
        self.state.lock().unwrap().failing.push(prefix.to_string());
    }

    async fn handle(&self, req: Request<Body>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let metadata_only = parts
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("PartialObjectMetadata"));
        let content_type = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let mut s = self.state.lock().unwrap();
        if s.failing.iter().any(|p| path.starts_with(p.as_str())) {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("injected failure on {path}"));
        }
        // A status patch changes the object; it is recorded under its subresource path.
        let object_path = path.strip_suffix("/status").unwrap_or(&path).to_string();
        match parts.method {
            Method::GET if s.objects.contains_key(&object_path) => ok(StatusCode::OK, &s.objects[&object_path]),
            Method::GET => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(p, _)| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                    .map(|(_, o)| o.clone())
                    .collect();
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(|v| v.replace("%3D", "=").replace("%2F", "/").replace("%2C", ","));
                if !is_collection(&path) {
                    return status(StatusCode::NOT_FOUND, "NotFound", format!("{path} not found"));
                }
                let items = items.into_iter().filter(|o| selector.as_deref().is_none_or(|sel| selects(o, sel)));
                if !metadata_only {
                    let items: Vec<Value> = items.collect();
                    return ok(
                        StatusCode::OK,
                        &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                    );
                }
                let items: Vec<Value> = items
                    .map(|o| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}))
                    .collect();
                ok(
                    StatusCode::OK,
                    &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
                )
            }
            Method::POST => {
                let obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                // Events are recorded as writes and kept like any object.
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("generated-{}", s.version + 1));
                let object_path = format!("{path}/{name}");
                if s.objects.contains_key(&object_path) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", format!("{object_path} already exists"));
                }
                s.version += 1;
                let mut obj = obj;
                obj["metadata"]["resourceVersion"] = json!(s.version.to_string());
                s.objects.insert(object_path.clone(), obj.clone());
                s.writes.push(Write { method: "POST".into(), path: object_path, kind: String::new() });
                ok(StatusCode::CREATED, &obj)
            }
            Method::PATCH => {
                let patch: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let kind = if content_type.contains("apply-patch") {
                    "apply"
                } else if content_type.contains("merge-patch") {
                    "merge"
                } else {
                    "json"
                };
                s.version += 1;
                let version = s.version;
                let current = s.objects.get(&object_path).cloned();
                let mut obj = match (kind, current) {
                    ("apply", None) => patch.clone(),
                    (_, None) => return status(StatusCode::NOT_FOUND, "NotFound", format!("{object_path} not found")),
                    ("json", Some(mut o)) => {
                        // Only what the finalizer helper sends: add/remove of metadata.finalizers.
                        for op in patch.as_array().into_iter().flatten() {
                            if op["path"].as_str().is_some_and(|p| p.starts_with("/metadata/finalizers")) {
                                let list = o["metadata"]["finalizers"].as_array().cloned().unwrap_or_default();
                                let mut list: Vec<Value> = list;
                                match op["op"].as_str() {
                                    Some("add") => list.push(op["value"].clone()),
                                    Some("remove") => list.clear(),
                                    _ => {}
                                }
                                o["metadata"]["finalizers"] = json!(list);
                            }
                        }
                        o
                    }
                    (_, Some(mut o)) => {
                        merge(&mut o, &patch);
                        o
                    }
                };
                obj["metadata"]["resourceVersion"] = json!(version.to_string());
                s.objects.insert(object_path, obj.clone());
                s.writes.push(Write { method: "PATCH".into(), path, kind: kind.into() });
                ok(StatusCode::OK, &obj)
            }
            Method::DELETE => match s.objects.remove(&object_path) {
                Some(o) => {
                    s.writes.push(Write { method: "DELETE".into(), path: object_path, kind: String::new() });
                    ok(StatusCode::OK, &o)
                }
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{object_path} not found")),
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", parts.method.to_string()),
        }
    }
}
