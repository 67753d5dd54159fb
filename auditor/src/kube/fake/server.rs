//! The fake API server as a process of its own (`fake-apiserver`, a binary of the
//! integration tests): the state machine of [`super`] served over HTTPS on a loopback
//! address, with a certificate signed by a CA made at start (written to `--ca-out`, for
//! the kubeconfigs of the real `auditor` binaries), driven by commands on standard input.
//!
//! Why our own state machine and not an emulator from PyPI: the unit tests already pin
//! its behaviour against kube-rs (lists with a resourceVersion, watch resumption, 410
//! Gone, the outage faults), it forwards pod-proxy requests to a real backend as
//! kube-apiserver does (without the caller's `Authorization` header), and it answers
//! TokenRequest, TokenReview and SubjectAccessReview. The emulators we looked at (kwok
//! needs a real kube-apiserver and etcd; the Python mocks serve only CRUD) do neither.
//!
//! Commands, one JSON object per line; each is answered with one line, `ok`, `ok <JSON>`
//! or `error: <why>`:
//! - `{"apply": OBJECT}` (a `kind: List` applies its items), `{"delete": {"kind": K,
//!   "namespace": NS, "name": N}}`;
//! - `{"down": true}`: the listener is closed (connections are refused) and every open
//!   connection is cut; `{"down": false}` listens again on the same address;
//! - `{"compact": true}`: the event history is forgotten (resumed watches get 410);
//!   `{"drop_watches": true}`;
//! - `{"token": {"token": T, "user": U, "groups": [..]}}`, `{"grant": {"user": U, "rule":
//!   "get pods/proxy"}}` (see [`super::State::grant`]);
//! - `{"requests": true}`: every request so far (`ok ["/api/v1/pods?...", ..]`).
//!
//! Standard input closed: the process exits.

use std::convert::Infallible;
use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::watch;
use tokio_rustls::rustls;

use super::{json_response, status, Answer, State};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;
type Backend = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

struct Opts {
    listen: SocketAddr,
    ca_out: Option<PathBuf>,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let mut o = Opts {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca_out: None,
    };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                o.listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v}: {e} (expected IP:PORT)"))?;
            }
            "--ca-out" => o.ca_out = Some(PathBuf::from(value("--ca-out")?)),
            "-h" | "--help" => {
                return Err("usage: fake-apiserver [--listen 127.0.0.1:0] [--ca-out FILE]\n\
                            commands on stdin, one JSON object per line (see auditor::kube::fake::server)"
                    .to_owned())
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(o)
}

/// A CA and a serving certificate for 127.0.0.1 and localhost signed by it.
fn certificates() -> Result<(String, rustls::ServerConfig), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let e = |e: rcgen::Error| format!("make the test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "auditor fake API server CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(e)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).map_err(e)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth().with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
        })
        .map_err(|e| format!("TLS configuration: {e}"))?;
    Ok((ca_cert.pem(), config))
}

/// The `fake-apiserver` process: returns its exit code.
pub fn main(args: impl Iterator<Item = String>) -> i32 {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fake-apiserver: {e}");
            return 2;
        }
    };
    let (ca_pem, tls) = match certificates() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-apiserver: {e}");
            return 1;
        }
    };
    if let Some(path) = &opts.ca_out {
        if let Err(e) = std::fs::write(path, &ca_pem) {
            eprintln!("fake-apiserver: write {}: {e}", path.display());
            return 1;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fake-apiserver: tokio runtime: {e}");
            return 1;
        }
    };
    let state = Arc::new(Mutex::new(State::default()));
    let (down_tx, down_rx) = watch::channel(false);
    let (cut_tx, cut_rx) = watch::channel(0u64);
    let listener = match runtime.block_on(bind(opts.listen)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake-apiserver: listen on {}: {e}", opts.listen);
            return 1;
        }
    };
    let addr = listener.local_addr().unwrap_or(opts.listen);
    println!("listening https://{addr}");
    let _ = std::io::stdout().flush();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let backend: Backend =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    runtime.spawn(serve(
        listener,
        addr,
        acceptor,
        state.clone(),
        backend,
        down_rx,
        cut_rx,
    ));
    // Commands until stdin closes.
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let reply = command(&state, &down_tx, &cut_tx, &line);
        println!("{reply}");
        let _ = std::io::stdout().flush();
    }
    0
}

fn command(
    state: &Mutex<State>,
    down: &watch::Sender<bool>,
    cut: &watch::Sender<u64>,
    line: &str,
) -> String {
    let cmd: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return format!("error: not a JSON command: {e}"),
    };
    let Some((name, arg)) = cmd.as_object().and_then(|o| o.iter().next()) else {
        return "error: expected an object with one key".to_owned();
    };
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    let done = match name.as_str() {
        "apply" if arg["kind"] == "List" => arg["items"]
            .as_array()
            .into_iter()
            .flatten()
            .try_for_each(|o| st.apply(o.clone())),
        "apply" => st.apply(arg.clone()),
        "delete" => st.delete(&s(arg, "kind"), &s(arg, "namespace"), &s(arg, "name")),
        "down" => {
            let on = arg.as_bool() == Some(true);
            st.set_down(on);
            down.send_replace(on);
            if on {
                cut.send_modify(|n| *n += 1);
            }
            Ok(())
        }
        "compact" => {
            st.compact(true);
            Ok(())
        }
        "drop_watches" => {
            st.watches.clear();
            Ok(())
        }
        "token" => {
            let groups = super::strings(&arg["groups"]);
            st.add_token(&s(arg, "token"), &s(arg, "user"), &groups);
            Ok(())
        }
        "grant" => {
            st.grant(&s(arg, "user"), &s(arg, "rule"));
            Ok(())
        }
        "requests" => return format!("ok {}", Value::from(st.requests.clone())),
        other => Err(format!("unknown command {other:?}")),
    };
    match done {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// A listener that can be bound again on the same address right after it was closed.
async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn serve(
    first: tokio::net::TcpListener,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Mutex<State>>,
    backend: Backend,
    mut down: watch::Receiver<bool>,
    cut: watch::Receiver<u64>,
) {
    let mut listener = Some(first);
    loop {
        let Some(l) = listener.take() else {
            // Down: wait to be up, then listen again.
            while *down.borrow_and_update() {
                if down.changed().await.is_err() {
                    return;
                }
            }
            match bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    eprintln!("fake-apiserver: listen again on {addr}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                listener = Some(l);
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let state = state.clone();
                let backend = backend.clone();
                let mut cut = cut.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        handle(state.clone(), backend.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = cut.changed() => {}
                    }
                });
            }
            changed = down.changed() => {
                if changed.is_err() {
                    return;
                }
                if *down.borrow_and_update() {
                    drop(l); // connections are refused while down
                } else {
                    listener = Some(l);
                }
            }
        }
    }
}

fn boxed<B>(r: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    r.map(|b| b.map_err(Into::into).boxed())
}

async fn handle(
    state: Arc<Mutex<State>>,
    backend: Backend,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let answer = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .answer(&parts, &body);
    match answer {
        Answer::Respond(r) => Ok(r.map(|b| {
            b.map_err(|never: Infallible| -> BoxError { match never {} })
                .boxed()
        })),
        Answer::Refuse => Err("the fake API server is down".into()),
        Answer::Hang => {
            futures::future::pending::<()>().await;
            Err("unreachable".into())
        }
        Answer::Forward {
            ip,
            port,
            path_and_query,
        } => {
            let mut forwarded = Request::get(format!("http://{ip}:{port}{path_and_query}"));
            for (k, v) in &parts.headers {
                // kube-apiserver authenticated the caller and drops the credential; the
                // pod never sees it. Hop-by-hop headers are the connection's.
                if !matches!(
                    k.as_str(),
                    "authorization"
                        | "host"
                        | "connection"
                        | "keep-alive"
                        | "te"
                        | "transfer-encoding"
                        | "upgrade"
                ) {
                    forwarded = forwarded.header(k, v);
                }
            }
            let forwarded = forwarded.body(Empty::new())?;
            match backend.request(forwarded).await {
                Ok(mut r) => {
                    r.headers_mut().remove(http::header::TRANSFER_ENCODING);
                    r.headers_mut().remove(http::header::CONNECTION);
                    Ok(boxed(r))
                }
                Err(e) => {
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    Ok(json_response(
                        503,
                        &status(
                            503,
                            "ServiceUnavailable",
                            &format!("error trying to reach service: dial tcp {ip}:{port}: {why}"),
                        ),
                    )
                    .map(|b| {
                        b.map_err(|never: Infallible| -> BoxError { match never {} })
                            .boxed()
                    }))
                }
            }
        }
    }
}
