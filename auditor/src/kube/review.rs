//! Who may read `/flows`: the caller's bearer token, checked with the API server as
//! kube-rbac-proxy does. A TokenReview asks whether the token is valid for the audience
//! [`AUDIENCE`] and whose it is; a SubjectAccessReview asks whether that user may `get`
//! the non-resource URL `/flows` (the ClusterRole `auditor-flows-reader` in
//! deploy/rbac.yaml grants it).
//!
//! The token comes in [`TOKEN_HEADER`] (what `auditor collect` sends: kube-apiserver
//! strips `Authorization` from a pod-proxy request once it has authenticated the caller,
//! and passes other headers on), else in `Authorization: Bearer` (a direct caller).
//! `collect` mints the token with a TokenRequest for the ServiceAccount `auditor-collect`,
//! bound to the audience `auditor` and valid for minutes, so the caller's own credential
//! never reaches an agent, and a token sent to an agent cannot be replayed at the API
//! server.
//!
//! Decisions are cached per token (allowed: 60 s, refused: 10 s), at most
//! [`CACHE_ENTRIES`] of them. While the API server cannot be asked, `/flows` answers 503
//! (fail closed); `/metrics`, `/healthz` and `/livez` never need a token.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::kube::api::{Api, PostParams};
use ::kube::{Client, Config};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

/// The header `auditor collect` sends its token in.
pub const TOKEN_HEADER: &str = "auditor-authorization";
/// The audience the tokens must be bound to.
pub const AUDIENCE: &str = "auditor";
/// The non-resource URL a caller must be allowed to `get`.
pub const PATH: &str = "/flows";
/// Decisions kept at most (the cache is emptied when full).
pub const CACHE_ENTRIES: usize = 1024;
const ALLOWED_TTL: Duration = Duration::from_secs(60);
const REFUSED_TTL: Duration = Duration::from_secs(10);
/// A review that takes longer than this fails (503).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `/flows` request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        user: String,
    },
    /// No token, or one the API server does not vouch for (401).
    Unauthenticated(String),
    /// A known user without the right (403).
    Forbidden {
        user: String,
        reason: String,
    },
    /// The API server could not be asked (503).
    Unavailable(String),
}

impl Decision {
    /// The `reason` label of `auditor_flows_requests_denied_total`, None when allowed.
    pub fn denied_reason(&self) -> Option<&'static str> {
        match self {
            Decision::Allowed { .. } => None,
            Decision::Unauthenticated(_) => Some("unauthenticated"),
            Decision::Forbidden { .. } => Some("forbidden"),
            Decision::Unavailable(_) => Some("unavailable"),
        }
    }
}

/// The reasons of `auditor_flows_requests_denied_total`, exposed at 0.
pub const DENIED_REASONS: &[&str] = &["unauthenticated", "forbidden", "unavailable"];

/// Reviews tokens with the API server. The client is made on first use, on the runtime
/// that uses it (the HTTP server's own).
pub struct Reviewer {
    config: Option<Config>,
    client: tokio::sync::OnceCell<Result<Client, String>>,
    hasher: RandomState,
    cache: Mutex<HashMap<u64, (Decision, Instant)>>,
}

impl std::fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reviewer")
            .field(
                "api_server",
                &self.config.as_ref().map(|c| c.cluster_url.to_string()),
            )
            .finish_non_exhaustive()
    }
}

impl Reviewer {
    /// `config`: how to reach the API server; None: every request is refused with 503
    /// (the agent was told to check callers but has no API server).
    pub fn new(config: Option<Config>) -> Self {
        Reviewer {
            config,
            client: tokio::sync::OnceCell::new(),
            hasher: RandomState::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The token of a request: [`TOKEN_HEADER`], else `Authorization`, as `Bearer <token>`.
    pub fn token(headers: &http::HeaderMap) -> Option<&str> {
        [TOKEN_HEADER, http::header::AUTHORIZATION.as_str()]
            .iter()
            .filter_map(|h| headers.get(*h))
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("Bearer ").map(str::trim))
            .filter(|t| !t.is_empty())
    }

    pub async fn check(&self, token: Option<&str>) -> Decision {
        let Some(token) = token else {
            return Decision::Unauthenticated(format!(
                "no bearer token: send one bound to the audience {AUDIENCE:?} in the \
                 {TOKEN_HEADER} or Authorization header (auditor collect does; by hand: \
                 kubectl create token auditor-collect -n auditor --audience {AUDIENCE})"
            ));
        };
        let key = self.hasher.hash_one(token);
        if let Some((d, at)) = self.lock().get(&key) {
            let ttl = if matches!(d, Decision::Allowed { .. }) {
                ALLOWED_TTL
            } else {
                REFUSED_TTL
            };
            if at.elapsed() < ttl {
                return d.clone();
            }
        }
        let decision = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(d) => d,
            Err(_) => Decision::Unavailable(format!(
                "the API server did not answer the token review within {} s",
                REVIEW_TIMEOUT.as_secs()
            )),
        };
        if !matches!(decision, Decision::Unavailable(_)) {
            let mut cache = self.lock();
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (decision.clone(), Instant::now()));
        }
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Decision, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn review(&self, token: &str) -> Decision {
        let client = self
            .client
            .get_or_init(|| async {
                match &self.config {
                    None => Err("no API server is configured (in-cluster config or --kubeconfig) to review tokens".to_owned()),
                    Some(c) => Client::try_from(c.clone()).map_err(|e| format!("API client: {e}")),
                }
            })
            .await;
        let client = match client {
            Ok(c) => c.clone(),
            Err(e) => return Decision::Unavailable(e.clone()),
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let reviewed = match Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) => r,
            Err(e) => return Decision::Unavailable(format!("TokenReview: {e}")),
        };
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let Some(name) = user.username.filter(|_| status.authenticated == Some(true)) else {
            return Decision::Unauthenticated(format!(
                "the API server does not accept this token for the audience {AUDIENCE:?}{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            ));
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(name.clone()),
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_owned()),
                    verb: Some("get".to_owned()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answered = match Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &access)
            .await
        {
            Ok(r) => r,
            Err(e) => return Decision::Unavailable(format!("SubjectAccessReview: {e}")),
        };
        match answered.status {
            Some(s) if s.allowed => Decision::Allowed { user: name },
            s => Decision::Forbidden {
                user: name.clone(),
                reason: format!(
                    "{name} may not get {PATH}{} (grant it the ClusterRole auditor-flows-reader, deploy/rbac.yaml)",
                    s.and_then(|s| s.reason)
                        .filter(|r| !r.is_empty())
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::fake::FakeApi;

    fn reviewer_on(client: Client) -> Reviewer {
        let r = Reviewer::new(None);
        let _ = r.client.set(Ok(client));
        r
    }

    #[tokio::test]
    async fn token_review_then_access_review_with_cache() {
        let (fake, client) = FakeApi::start();
        fake.with_state(|s| {
            s.add_token("agent-token", "system:serviceaccount:auditor:auditor", &[]);
            s.grant(
                "system:serviceaccount:auditor:auditor",
                "create tokenreviews",
            );
            s.grant(
                "system:serviceaccount:auditor:auditor",
                "create subjectaccessreviews",
            );
            s.grant(
                "system:serviceaccount:auditor:auditor-collect",
                "get /flows",
            );
        });
        let agent = fake.client_with_token("agent-token");
        let r = reviewer_on(agent);
        assert!(
            matches!(r.check(None).await, Decision::Unauthenticated(m) if m.contains("no bearer token"))
        );
        // A token of the API server's audience is not one for the agent.
        assert!(
            matches!(r.check(Some("agent-token")).await, Decision::Unauthenticated(m) if m.contains("audience"))
        );
        let minted = fake.with_state(|s| {
            s.token_request(
                "auditor",
                "auditor-collect",
                serde_json::json!({"spec": {"audiences": ["auditor"], "expirationSeconds": 600}}),
            )
        });
        let token = minted["status"]["token"].as_str().unwrap().to_owned();
        assert_eq!(
            r.check(Some(&token)).await,
            Decision::Allowed {
                user: "system:serviceaccount:auditor:auditor-collect".into()
            }
        );
        let other = fake.with_state(|s| {
            s.token_request(
                "auditor",
                "someone",
                serde_json::json!({"spec": {"audiences": ["auditor"]}}),
            )
        });
        let other = other["status"]["token"].as_str().unwrap().to_owned();
        assert!(
            matches!(r.check(Some(&other)).await, Decision::Forbidden { user, reason }
            if user == "system:serviceaccount:auditor:someone" && reason.contains("auditor-flows-reader"))
        );
        // Cached: the same answers while the API server is down.
        let asked = fake.requests().len();
        fake.set_down(true);
        assert!(matches!(
            r.check(Some(&token)).await,
            Decision::Allowed { .. }
        ));
        assert_eq!(fake.requests().len(), asked, "answered from the cache");
        // A new token cannot be reviewed: 503, not cached.
        assert!(matches!(
            r.check(Some("new")).await,
            Decision::Unavailable(_)
        ));
        fake.set_down(false);
        assert!(matches!(
            r.check(Some("new")).await,
            Decision::Unauthenticated(_)
        ));
        drop(client);
    }

    #[test]
    fn token_from_either_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Reviewer::token(&h), None);
        h.insert("authorization", "Bearer direct".parse().unwrap());
        assert_eq!(Reviewer::token(&h), Some("direct"));
        h.insert(TOKEN_HEADER, "Bearer proxied".parse().unwrap());
        assert_eq!(
            Reviewer::token(&h),
            Some("proxied"),
            "the proxied header wins"
        );
        h.insert(TOKEN_HEADER, "Basic x".parse().unwrap());
        assert_eq!(Reviewer::token(&h), Some("direct"));
    }

    #[tokio::test]
    async fn no_api_server_is_unavailable() {
        let r = Reviewer::new(None);
        assert!(
            matches!(r.check(Some("t")).await, Decision::Unavailable(m) if m.contains("no API server"))
        );
    }
}
