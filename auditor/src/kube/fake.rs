//! A faked Kubernetes API server for tests: a `tower_test` mock service behind a real
//! `kube::Client`, answering list and watch requests with real-shaped JSON (lists with a
//! resourceVersion, watch streams of ADDED / MODIFIED / DELETED / ERROR events) from an
//! in-memory object store with an event history, and pod-proxy GETs from a script.
//!
//! Faults it can play: the whole server unreachable (transport errors, watches cut),
//! watches dropped, history compacted (a resumed watch gets `410 Gone` and must relist),
//! proxy targets that answer with an error or never answer.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock;

pub(crate) type FakeBody = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;
type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// What a pod-proxy GET gets.
#[derive(Clone, Debug)]
pub(crate) enum Proxy {
    /// 200 with this body.
    Ok(String),
    /// 200 with this body and these extra headers (as the API server passes them on).
    OkWithHeaders(String, Vec<(&'static str, String)>),
    /// This status with a `Status` object naming `message` (as the API server proxies
    /// an unreachable or failing backend).
    Status(u16, String),
    /// No answer at all.
    Hang,
}

struct Event {
    rv: u64,
    collection: &'static str,
    type_: &'static str,
    object: Value,
}

struct Watch {
    collection: &'static str,
    namespace: Option<String>,
    fields: Vec<(String, String)>,
    tx: Tx,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Event>,
    /// Events with an rv at or below this are gone: older watches get 410.
    compacted: u64,
    watches: Vec<Watch>,
    down: bool,
    requests: Vec<String>,
    proxy: HashMap<String, Proxy>,
    hanging: Vec<mock::SendResponse<Response<FakeBody>>>,
}

pub(crate) struct FakeApi {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const COLLECTIONS: [(&str, &str, &str); 6] = [
    ("v1", "Node", "/api/v1/nodes"),
    ("v1", "Pod", "/api/v1/pods"),
    ("v1", "Namespace", "/api/v1/namespaces"),
    ("v1", "Service", "/api/v1/services"),
    (
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "/apis/discovery.k8s.io/v1/endpointslices",
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ),
];

fn collection_of(obj: &Value) -> &'static str {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    COLLECTIONS
        .iter()
        .find(|(a, k, _)| *a == api && *k == kind)
        .map(|c| c.2)
        .unwrap_or_else(|| panic!("fake API server: no collection for {api} {kind}"))
}

fn list_kind(collection: &str) -> String {
    let kind = COLLECTIONS
        .iter()
        .find(|c| c.2 == collection)
        .map(|c| c.1)
        .unwrap_or("");
    format!("{kind}List")
}

fn full(bytes: impl Into<Bytes>) -> FakeBody {
    let (tx, rx) = mpsc::unbounded();
    let _ = tx.unbounded_send(Ok(Frame::data(bytes.into())));
    StreamBody::new(rx)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn json_response(code: u16, v: &Value) -> Response<FakeBody> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn selector(s: Option<&String>) -> Vec<(String, String)> {
    s.map(|s| {
        s.split(',')
            .filter(|t| !t.is_empty())
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.trim_end_matches('=').to_owned(), v.to_owned()))
            .collect()
    })
    .unwrap_or_default()
}

fn field(obj: &Value, path: &str) -> Option<String> {
    let mut v = obj;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn matches(
    obj: &Value,
    namespace: Option<&str>,
    fields: &[(String, String)],
    labels: &[(String, String)],
) -> bool {
    namespace.is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
        && fields
            .iter()
            .all(|(k, v)| field(obj, k).as_deref() == Some(v))
        && labels
            .iter()
            .all(|(k, v)| obj["metadata"]["labels"][k.as_str()].as_str() == Some(v))
}

impl FakeApi {
    /// A client on a new fake server (default namespace `default`).
    pub(crate) fn start() -> (FakeApi, ::kube::Client) {
        let (service, handle) = mock::pair::<Request<::kube::client::Body>, Response<FakeBody>>();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((req, send)) = handle.next_request().await {
                st.lock().unwrap().serve(req, send);
            }
        });
        (
            FakeApi { state, task },
            ::kube::Client::new(service, "default"),
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED` to the watches that match).
    pub(crate) fn apply(&self, object: Value) {
        self.with(|s| s.apply(object))
    }

    /// Deletes an object (`DELETED`); `namespace` is "" for cluster-scoped kinds.
    pub(crate) fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.with(|s| s.delete(kind, namespace, name))
    }

    /// Server unreachable: every request fails at the transport, open watches are cut.
    pub(crate) fn set_down(&self, down: bool) {
        self.with(|s| {
            s.down = down;
            if down {
                s.watches.clear();
            }
        })
    }

    /// Ends every open watch stream (as a load balancer or an API server restart would).
    pub(crate) fn drop_watches(&self) {
        self.with(|s| s.watches.clear())
    }

    /// Forgets the event history: a watch resumed from an older resourceVersion gets a
    /// 410 Gone `ERROR` event. With `tell_open_watches`, the open ones get it now.
    pub(crate) fn compact(&self, tell_open_watches: bool) {
        self.with(|s| {
            s.compacted = s.rv;
            s.history.clear();
            if tell_open_watches {
                let err = status(410, "Expired", "too old resource version");
                for w in s.watches.drain(..) {
                    let _ =
                        w.tx.unbounded_send(Ok(Frame::data(watch_line("ERROR", &err))));
                }
            }
        })
    }

    pub(crate) fn set_proxy(&self, namespace: &str, pod: &str, port: u16, p: Proxy) {
        self.with(|s| {
            s.proxy.insert(
                format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/flows"),
                p,
            );
        })
    }

    /// Every request so far, as `path?query` (decoded).
    pub(crate) fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    pub(crate) fn open_watches(&self) -> usize {
        self.with(|s| {
            s.watches.retain(|w| !w.tx.is_closed());
            s.watches.len()
        })
    }
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn publish(&mut self, collection: &'static str, type_: &'static str, object: Value) {
        let rv = self.rv;
        self.watches.retain(|w| {
            if w.collection != collection
                || !matches(&object, w.namespace.as_deref(), &w.fields, &[])
            {
                return true;
            }
            w.tx.unbounded_send(Ok(Frame::data(watch_line(type_, &object))))
                .is_ok()
        });
        self.history.push(Event {
            rv,
            collection,
            type_,
            object,
        });
    }

    fn apply(&mut self, mut object: Value) {
        let collection = collection_of(&object);
        let rv = self.next_rv();
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        let ns = meta["namespace"].as_str().unwrap_or("").to_owned();
        let name = meta["name"].as_str().unwrap_or("").to_owned();
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{collection}-{ns}-{name}").replace('/', "-"));
        }
        let existed = self
            .objects
            .insert((collection, ns, name), object.clone())
            .is_some();
        self.publish(
            collection,
            if existed { "MODIFIED" } else { "ADDED" },
            object,
        );
    }

    fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        let collection = COLLECTIONS
            .iter()
            .find(|c| c.1 == kind)
            .map(|c| c.2)
            .unwrap_or_else(|| panic!("fake API server: unknown kind {kind}"));
        let Some(mut object) =
            self.objects
                .remove(&(collection, namespace.to_owned(), name.to_owned()))
        else {
            panic!("fake API server: no {kind} {namespace}/{name} to delete");
        };
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(collection, "DELETED", object);
    }

    fn serve(
        &mut self,
        req: Request<::kube::client::Body>,
        send: mock::SendResponse<Response<FakeBody>>,
    ) {
        let uri = req.uri().clone();
        let path = uri.path().to_owned();
        let q = query(&uri);
        let mut line = path.clone();
        if let Some(raw) = uri.query() {
            line.push('?');
            line.push_str(&percent_decode(raw));
        }
        self.requests.push(line);
        if self.down {
            send.send_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused (fake API server is down)",
            ));
            return;
        }
        if req.method() != http::Method::GET {
            send.send_response(json_response(
                405,
                &status(405, "MethodNotAllowed", "only GET"),
            ));
            return;
        }
        if let Some(p) = self.proxy.get(&path).cloned() {
            match p {
                Proxy::Ok(body) => send.send_response(ndjson(body, &[])),
                Proxy::OkWithHeaders(body, headers) => send.send_response(ndjson(body, &headers)),
                Proxy::Status(code, message) => send.send_response(json_response(
                    code,
                    &status(code, "ServiceUnavailable", &message),
                )),
                Proxy::Hang => self.hanging.push(send),
            }
            return;
        }
        // /api/v1/pods, or /api/v1/namespaces/{ns}/pods for a namespaced list.
        let (collection, namespace) = match COLLECTIONS.iter().find(|c| c.2 == path) {
            Some(c) => (c.2, None),
            None => {
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                let found = match parts.as_slice() {
                    ["api", "v1", "namespaces", ns, res] => COLLECTIONS
                        .iter()
                        .find(|c| c.2 == format!("/api/v1/{res}"))
                        .map(|c| (c.2, Some((*ns).to_owned()))),
                    ["apis", g, v, "namespaces", ns, res] => COLLECTIONS
                        .iter()
                        .find(|c| c.2 == format!("/apis/{g}/{v}/{res}"))
                        .map(|c| (c.2, Some((*ns).to_owned()))),
                    _ => None,
                };
                match found {
                    Some(f) => f,
                    None => {
                        send.send_response(json_response(
                            404,
                            &status(
                                404,
                                "NotFound",
                                &format!("the server could not find {path}"),
                            ),
                        ));
                        return;
                    }
                }
            }
        };
        let fields = selector(q.get("fieldSelector"));
        let labels = selector(q.get("labelSelector"));
        if q.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, rx) = mpsc::unbounded();
            if from < self.compacted {
                let err = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {from} ({})", self.rv),
                );
                let _ = tx.unbounded_send(Ok(Frame::data(watch_line("ERROR", &err))));
            } else {
                for e in self.history.iter().filter(|e| {
                    e.rv > from
                        && e.collection == collection
                        && matches(&e.object, namespace.as_deref(), &fields, &labels)
                }) {
                    let _ = tx.unbounded_send(Ok(Frame::data(watch_line(e.type_, &e.object))));
                }
                self.watches.push(Watch {
                    collection,
                    namespace,
                    fields,
                    tx,
                });
            }
            send.send_response(Response::new(StreamBody::new(rx)));
            return;
        }
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|((c, _, _), o)| {
                *c == collection && matches(o, namespace.as_deref(), &fields, &labels)
            })
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({
            "kind": list_kind(collection),
            "apiVersion": COLLECTIONS.iter().find(|c| c.2 == collection).map(|c| c.0).unwrap_or("v1"),
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": items,
        });
        send.send_response(json_response(200, &list));
    }
}

/// A 200 `application/x-ndjson` answer with extra headers.
fn ndjson(body: String, headers: &[(&'static str, String)]) -> Response<FakeBody> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    for (k, v) in headers {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
}
