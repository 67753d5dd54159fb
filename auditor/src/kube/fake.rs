//! A faked Kubernetes API server for tests: an in-memory object store with an event
//! history, answering list and watch requests with real-shaped JSON (lists with a
//! resourceVersion, watch streams of ADDED / MODIFIED / DELETED / ERROR events), pod-proxy
//! GETs (from a script, or forwarded to the pod's `status.podIP` as the API server does),
//! and the authentication API: TokenRequest, TokenReview, SubjectAccessReview.
//!
//! Two front ends share this state machine ([`State::answer`]):
//! - in unit tests, a `tower_test` mock service behind a real `kube::Client` ([`FakeApi`]);
//! - with the `fake-api` feature, an HTTPS server in its own process
//!   ([`server`], the `fake-apiserver` binary of the integration tests), driven by
//!   commands on its standard input.
//!
//! Authentication is off until a token is registered: then every request needs
//! `Authorization: Bearer <token>` of a known, unexpired token (else 401), and
//! pod proxy, token requests and reviews need a grant (else 403). Like kube-apiserver,
//! a proxied request reaches the pod without the caller's `Authorization` header.
//!
//! Faults it can play: the whole server unreachable (transport errors, watches cut),
//! watches dropped, history compacted (a resumed watch gets `410 Gone` and must relist),
//! proxy targets that answer with an error or never answer.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
#[cfg(test)]
use std::pin::pin;
#[cfg(test)]
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
#[cfg(test)]
use http::Request;
use http::{Response, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{json, Value};
#[cfg(test)]
use tokio::task::JoinHandle;
#[cfg(test)]
use tower_test::mock;

#[cfg(feature = "fake-api")]
pub mod server;

pub(crate) type FakeBody = StreamBody<mpsc::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>>;
type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// What a pod-proxy GET gets (scripted in unit tests).
#[cfg_attr(not(test), allow(dead_code))]
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

/// What the state machine makes of one request.
pub(crate) enum Answer {
    Respond(Response<FakeBody>),
    /// A transport error (the server is down).
    Refuse,
    /// Never answered.
    Hang,
    /// Pod proxy to a real backend: `http://{ip}:{port}{path_and_query}`.
    Forward {
        ip: String,
        port: u16,
        path_and_query: String,
    },
}

/// A token the fake API server accepts.
#[derive(Clone, Debug)]
struct Token {
    user: String,
    groups: Vec<String>,
    audiences: Vec<String>,
    /// Seconds since the epoch; None: never.
    expires: Option<u64>,
}

/// The API server's default token audience.
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

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
pub(crate) struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Event>,
    /// Events with an rv at or below this are gone: older watches get 410.
    compacted: u64,
    watches: Vec<Watch>,
    down: bool,
    requests: Vec<String>,
    proxy: HashMap<String, Proxy>,
    #[cfg(test)]
    hanging: Vec<mock::SendResponse<Response<FakeBody>>>,
    tokens: HashMap<String, Token>,
    /// Authentication is on (a token was registered with [`State::add_token`]).
    authn: bool,
    /// user -> "verb resource" (e.g. "get pods/proxy", "create tokenreviews") or
    /// "verb /path" (a non-resource URL), or "*".
    grants: HashMap<String, Vec<String>>,
    issued: u64,
    /// Token requests are refused with 403 (a caller without the grant, authn off).
    pub(crate) forbid_token_requests: bool,
    /// Collections (e.g. `/api/v1/nodes`) whose lists and watches are answered 403, as
    /// for a caller without the right to list them.
    pub(crate) forbid_list: Vec<&'static str>,
    /// Collections answered 404, as by a cluster without that CRD installed.
    pub(crate) not_installed: Vec<&'static str>,
}

#[cfg(test)]
pub(crate) struct FakeApi {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    service: mock::Mock<Request<::kube::client::Body>, Response<FakeBody>>,
}

#[cfg(test)]
impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const COLLECTIONS: [(&str, &str, &str); 8] = [
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
    (
        "policy.networking.k8s.io/v1alpha1",
        "AdminNetworkPolicy",
        "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies",
    ),
    (
        "policy.networking.k8s.io/v1alpha1",
        "BaselineAdminNetworkPolicy",
        "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies",
    ),
];

fn collection_of(obj: &Value) -> Result<&'static str, String> {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    COLLECTIONS
        .iter()
        .find(|(a, k, _)| *a == api && *k == kind)
        .map(|c| c.2)
        .ok_or_else(|| format!("no collection for apiVersion {api:?} kind {kind:?}"))
}

/// Whether the fake serves objects of this apiVersion and kind.
#[cfg(test)]
pub(crate) fn collection_for_tests(obj: &Value) -> bool {
    collection_of(obj).is_ok()
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

#[cfg(test)]
impl FakeApi {
    /// A client on a new fake server (default namespace `default`).
    pub(crate) fn start() -> (FakeApi, ::kube::Client) {
        use http_body_util::BodyExt as _;
        let (service, handle) = mock::pair::<Request<::kube::client::Body>, Response<FakeBody>>();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let answer = st.lock().unwrap().answer(&parts, &body);
                match answer {
                    Answer::Respond(r) => send.send_response(r),
                    Answer::Refuse => send.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused (fake API server is down)",
                    )),
                    Answer::Hang => st.lock().unwrap().hanging.push(send),
                    Answer::Forward {
                        ip,
                        port,
                        path_and_query,
                    } => send.send_response(json_response(
                        503,
                        &status(
                            503,
                            "ServiceUnavailable",
                            &format!("error trying to reach service: the in-process fake cannot dial {ip}:{port} for {path_and_query}"),
                        ),
                    )),
                }
            }
        });
        (
            FakeApi {
                state,
                task,
                service: service.clone(),
            },
            ::kube::Client::new(service, "default"),
        )
    }

    /// Another client of this server, sending `Authorization: Bearer <token>`.
    pub(crate) fn client_with_token(&self, token: &str) -> ::kube::Client {
        let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
            .unwrap_or_else(|e| panic!("token {token:?}: {e}"));
        let service = tower::ServiceExt::map_request(
            self.service.clone(),
            move |mut r: Request<::kube::client::Body>| {
                r.headers_mut()
                    .insert(http::header::AUTHORIZATION, value.clone());
                r
            },
        );
        ::kube::Client::new(service, "default")
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Direct access to the state (tokens, grants, token requests).
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        self.with(f)
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED` to the watches that match).
    pub(crate) fn apply(&self, object: Value) {
        self.with(|s| s.apply(object))
            .unwrap_or_else(|e| panic!("fake API server: {e}"))
    }

    /// Deletes an object (`DELETED`); `namespace` is "" for cluster-scoped kinds.
    pub(crate) fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.with(|s| s.delete(kind, namespace, name))
            .unwrap_or_else(|e| panic!("fake API server: {e}"))
    }

    /// Server unreachable: every request fails at the transport, open watches are cut.
    pub(crate) fn set_down(&self, down: bool) {
        self.with(|s| s.set_down(down))
    }

    /// Ends every open watch stream (as a load balancer or an API server restart would).
    pub(crate) fn drop_watches(&self) {
        self.with(|s| s.watches.clear())
    }

    /// Forgets the event history: a watch resumed from an older resourceVersion gets a
    /// 410 Gone `ERROR` event. With `tell_open_watches`, the open ones get it now.
    pub(crate) fn compact(&self, tell_open_watches: bool) {
        self.with(|s| s.compact(tell_open_watches))
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

    pub(crate) fn set_down(&mut self, down: bool) {
        self.down = down;
        if down {
            self.watches.clear();
        }
    }

    pub(crate) fn compact(&mut self, tell_open_watches: bool) {
        self.compacted = self.rv;
        self.history.clear();
        if tell_open_watches {
            let err = status(410, "Expired", "too old resource version");
            for w in self.watches.drain(..) {
                let _ =
                    w.tx.unbounded_send(Ok(Frame::data(watch_line("ERROR", &err))));
            }
        }
    }

    pub(crate) fn apply(&mut self, mut object: Value) -> Result<(), String> {
        let collection = collection_of(&object)?;
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
        Ok(())
    }

    pub(crate) fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> Result<(), String> {
        let collection = COLLECTIONS
            .iter()
            .find(|c| c.1 == kind)
            .map(|c| c.2)
            .ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let Some(mut object) =
            self.objects
                .remove(&(collection, namespace.to_owned(), name.to_owned()))
        else {
            return Err(format!("no {kind} {namespace}/{name} to delete"));
        };
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.publish(collection, "DELETED", object);
        Ok(())
    }

    /// Registers a token (authentication is on from the first one).
    pub(crate) fn add_token(&mut self, token: &str, user: &str, groups: &[String]) {
        self.authn = true;
        self.tokens.insert(
            token.to_owned(),
            Token {
                user: user.to_owned(),
                groups: groups.to_vec(),
                audiences: vec![API_AUDIENCE.to_owned()],
                expires: None,
            },
        );
    }

    /// Lets `user` do `rule`: "verb resource" ("get pods/proxy"), "verb /path" or "*".
    pub(crate) fn grant(&mut self, user: &str, rule: &str) {
        self.grants
            .entry(user.to_owned())
            .or_default()
            .push(rule.to_owned());
    }

    fn allowed(&self, user: &str, groups: &[String], rule: &str) -> bool {
        std::iter::once(user)
            .chain(groups.iter().map(String::as_str))
            .filter_map(|who| self.grants.get(who))
            .flatten()
            .any(|g| g == "*" || g == rule)
    }

    /// The caller of `parts`: Ok(None) with authentication off, Err(401) for a missing,
    /// unknown or expired token.
    fn authenticate(&self, parts: &http::request::Parts) -> Result<Option<Token>, Answer> {
        if !self.authn {
            return Ok(None);
        }
        let bearer = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer.and_then(|t| self.valid_token(t, &[])) {
            Some(t) => Ok(Some(t)),
            None => Err(Answer::Respond(json_response(
                401,
                &status(401, "Unauthorized", "Unauthorized"),
            ))),
        }
    }

    /// A known, unexpired token; with `audiences`, one it was issued for.
    fn valid_token(&self, token: &str, audiences: &[String]) -> Option<Token> {
        let t = self.tokens.get(token)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if t.expires.is_some_and(|e| e <= now) {
            return None;
        }
        let wanted: Vec<&str> = if audiences.is_empty() {
            vec![API_AUDIENCE]
        } else {
            audiences.iter().map(String::as_str).collect()
        };
        t.audiences
            .iter()
            .any(|a| wanted.contains(&a.as_str()))
            .then(|| t.clone())
    }

    fn forbidden(who: &Option<Token>, rule: &str) -> Answer {
        let user = who.as_ref().map(|t| t.user.as_str()).unwrap_or("");
        Answer::Respond(json_response(
            403,
            &status(403, "Forbidden", &format!("User \"{user}\" cannot {rule}")),
        ))
    }

    /// Answers one request (its head and whole body).
    pub(crate) fn answer(&mut self, parts: &http::request::Parts, body: &[u8]) -> Answer {
        let uri = parts.uri.clone();
        let path = uri.path().to_owned();
        let q = query(&uri);
        let mut line = path.clone();
        if let Some(raw) = uri.query() {
            line.push('?');
            line.push_str(&percent_decode(raw));
        }
        self.requests.push(line);
        if self.down {
            return Answer::Refuse;
        }
        let who = match self.authenticate(parts) {
            Ok(w) => w,
            Err(a) => return a,
        };
        let may = |s: &State, rule: &str| match &who {
            None => true,
            Some(t) => s.allowed(&t.user, &t.groups, rule),
        };
        let parts_of: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if parts.method == http::Method::POST {
            let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            return match parts_of.as_slice() {
                ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
                    if !may(self, "create tokenreviews") {
                        return Self::forbidden(&who, "create tokenreviews");
                    }
                    Answer::Respond(json_response(201, &self.token_review(input)))
                }
                ["apis", "authorization.k8s.io", "v1", "subjectaccessreviews"] => {
                    if !may(self, "create subjectaccessreviews") {
                        return Self::forbidden(&who, "create subjectaccessreviews");
                    }
                    Answer::Respond(json_response(201, &self.access_review(input)))
                }
                ["api", "v1", "namespaces", ns, "serviceaccounts", sa, "token"] => {
                    if self.forbid_token_requests || !may(self, "create serviceaccounts/token") {
                        return Self::forbidden(&who, "create serviceaccounts/token");
                    }
                    let (ns, sa) = ((*ns).to_owned(), (*sa).to_owned());
                    Answer::Respond(json_response(201, &self.token_request(&ns, &sa, input)))
                }
                _ => Answer::Respond(json_response(
                    405,
                    &status(405, "MethodNotAllowed", &format!("POST {path}")),
                )),
            };
        }
        if parts.method != http::Method::GET {
            return Answer::Respond(json_response(
                405,
                &status(405, "MethodNotAllowed", "only GET and POST"),
            ));
        }
        // Pod proxy: /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/{rest}
        if let ["api", "v1", "namespaces", ns, "pods", target, "proxy", rest @ ..] =
            parts_of.as_slice()
        {
            if !may(self, "get pods/proxy") {
                return Self::forbidden(&who, "get pods/proxy");
            }
            if let Some(p) = self.proxy.get(&path).cloned() {
                return match p {
                    Proxy::Ok(body) => Answer::Respond(ndjson(body, &[])),
                    Proxy::OkWithHeaders(body, headers) => Answer::Respond(ndjson(body, &headers)),
                    Proxy::Status(code, message) => Answer::Respond(json_response(
                        code,
                        &status(code, "ServiceUnavailable", &message),
                    )),
                    Proxy::Hang => Answer::Hang,
                };
            }
            let (pod, port) = target.split_once(':').unwrap_or((target, "80"));
            let found = self
                .objects
                .get(&("/api/v1/pods", (*ns).to_owned(), pod.to_owned()))
                .and_then(|o| o["status"]["podIP"].as_str().map(str::to_owned));
            let Some(ip) = found else {
                return Answer::Respond(json_response(
                    404,
                    &status(404, "NotFound", &format!("pods \"{pod}\" not found")),
                ));
            };
            let mut path_and_query = format!("/{}", rest.join("/"));
            if let Some(raw) = uri.query() {
                path_and_query.push('?');
                path_and_query.push_str(raw);
            }
            return Answer::Forward {
                ip,
                port: port.parse().unwrap_or(80),
                path_and_query,
            };
        }
        // /api/v1/pods, or /api/v1/namespaces/{ns}/pods for a namespaced list.
        let (collection, namespace) = match COLLECTIONS.iter().find(|c| c.2 == path) {
            Some(c) => (c.2, None),
            None => {
                let found = match parts_of.as_slice() {
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
                        return Answer::Respond(json_response(
                            404,
                            &status(
                                404,
                                "NotFound",
                                &format!("the server could not find {path}"),
                            ),
                        ));
                    }
                }
            }
        };
        if self.not_installed.contains(&collection) {
            return Answer::Respond(json_response(
                404,
                &status(
                    404,
                    "NotFound",
                    &format!("the server could not find the requested resource {collection}"),
                ),
            ));
        }
        if self.forbid_list.contains(&collection) {
            let user = who.as_ref().map(|t| t.user.as_str()).unwrap_or("");
            return Answer::Respond(json_response(
                403,
                &status(
                    403,
                    "Forbidden",
                    &format!("User \"{user}\" cannot list resource {collection}"),
                ),
            ));
        }
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
            return Answer::Respond(Response::new(StreamBody::new(rx)));
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
        Answer::Respond(json_response(200, &list))
    }

    /// `POST tokenreviews`: who holds `spec.token`, for `spec.audiences`.
    fn token_review(&self, input: Value) -> Value {
        let token = input["spec"]["token"].as_str().unwrap_or("");
        let audiences = strings(&input["spec"]["audiences"]);
        let status = match self.valid_token(token, &audiences) {
            Some(t) => json!({
                "authenticated": true,
                "user": {"username": t.user, "groups": t.groups},
                "audiences": if audiences.is_empty() { t.audiences.clone() } else { audiences.clone() },
            }),
            None => json!({
                "authenticated": false,
                "error": "invalid bearer token, token lookup failed or audience mismatch",
            }),
        };
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
               "metadata": {}, "spec": input["spec"], "status": status})
    }

    /// `POST subjectaccessreviews`: may `spec.user` do the resource or non-resource verb.
    fn access_review(&self, input: Value) -> Value {
        let spec = &input["spec"];
        let user = spec["user"].as_str().unwrap_or("");
        let groups = strings(&spec["groups"]);
        let rule = if let Some(n) = spec.get("nonResourceAttributes") {
            format!(
                "{} {}",
                n["verb"].as_str().unwrap_or(""),
                n["path"].as_str().unwrap_or("")
            )
        } else {
            let r = &spec["resourceAttributes"];
            let mut res = r["resource"].as_str().unwrap_or("").to_owned();
            if let Some(sub) = r["subresource"].as_str().filter(|s| !s.is_empty()) {
                res = format!("{res}/{sub}");
            }
            format!("{} {res}", r["verb"].as_str().unwrap_or(""))
        };
        let allowed = self.allowed(user, &groups, &rule);
        let mut status = json!({"allowed": allowed});
        if !allowed {
            status["reason"] = json!(format!("no RBAC rule lets {user} {rule}"));
        }
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "metadata": {}, "spec": input["spec"], "status": status})
    }

    /// `POST serviceaccounts/{sa}/token`: a new token for the service account.
    pub(crate) fn token_request(&mut self, ns: &str, sa: &str, input: Value) -> Value {
        self.issued += 1;
        let token = format!("fake-sa-token-{ns}-{sa}-{}", self.issued);
        let mut audiences = strings(&input["spec"]["audiences"]);
        if audiences.is_empty() {
            audiences.push(API_AUDIENCE.to_owned());
        }
        let secs = input["spec"]["expirationSeconds"].as_u64().unwrap_or(3600);
        let now = std::time::SystemTime::now();
        let expires = now + std::time::Duration::from_secs(secs);
        let expires_secs = expires
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.tokens.insert(
            token.clone(),
            Token {
                user: format!("system:serviceaccount:{ns}:{sa}"),
                groups: vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".to_owned(),
                ],
                audiences: audiences.clone(),
                expires: Some(expires_secs),
            },
        );
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "metadata": {"name": sa, "namespace": ns},
               "spec": {"audiences": audiences, "expirationSeconds": secs},
               "status": {"token": token,
                          "expirationTimestamp": humantime::format_rfc3339_seconds(expires).to_string()}})
    }
}

/// The strings of a JSON array (none for anything else).
pub(crate) fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
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
