//! A stand-in for Google's securetoken key server on 127.0.0.1 (a free
//! port), serving test keys in either of Google's forms, and Firebase ID
//! tokens signed with them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One of the two test key pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestKey {
    A,
    B,
}

impl TestKey {
    fn private_pem(self) -> &'static str {
        match self {
            Self::A => include_str!("../fixtures/rs256-private.pem"),
            Self::B => include_str!("../fixtures/rs256-other-private.pem"),
        }
    }

    fn certificate(self) -> &'static str {
        match self {
            Self::A => include_str!("../fixtures/rs256-cert.pem"),
            Self::B => include_str!("../fixtures/rs256-other-cert.pem"),
        }
    }

    fn jwk(self, kid: &str) -> Value {
        let mut jwk: Value = serde_json::from_str(match self {
            Self::A => include_str!("../fixtures/rs256-jwk.json"),
            Self::B => include_str!("../fixtures/rs256-other-jwk.json"),
        })
        .unwrap();
        jwk["kid"] = json!(kid);
        jwk
    }

    /// A token with `claims`, signed RS256 by this key under `kid`.
    pub fn sign(self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        self.sign_with(header, claims)
    }

    /// A token with `header` and `claims`, signed RS256 by this key.
    pub fn sign_with(self, header: Header, claims: &Value) -> String {
        // In case this process has not picked jsonwebtoken's crypto yet.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let key = EncodingKey::from_rsa_pem(self.private_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// A token with `claims` as the Firebase Auth emulator issues them:
/// unsigned (`alg` `none`).
pub fn emulator_token(claims: &Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// The claims of a Firebase ID token of `project` for `sub`, issued and
/// signed in a minute before `now`, valid for an hour.
pub fn id_token_claims(project: &str, sub: &str, now: i64) -> Value {
    json!({
        "iss": format!("https://securetoken.google.com/{project}"),
        "aud": project,
        "sub": sub,
        "user_id": sub,
        "iat": now - 60,
        "auth_time": now - 60,
        "exp": now + 3600,
        "email": "ada@example.com",
        "email_verified": true,
        "firebase": {"sign_in_provider": "password", "identities": {}},
    })
}

/// What the server answers.
struct Served {
    status: StatusCode,
    body: String,
    cache_control: Option<String>,
}

/// A running key server; stopped when dropped.
pub struct KeyServer {
    served: Arc<Mutex<Served>>,
    hits: Arc<AtomicUsize>,
    url: String,
    task: JoinHandle<()>,
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyServer {
    /// A server that answers 503 until it is given keys.
    pub async fn start() -> Self {
        let served = Arc::new(Mutex::new(Served {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
            cache_control: None,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys", listener.local_addr().unwrap());
        let router = Router::new()
            .route("/keys", get(answer))
            .with_state((served.clone(), hits.clone()));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            served,
            hits,
            url,
            task,
        }
    }

    /// Where the keys are served.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How many requests the server answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Serves `keys` as a JSON object of PEM certificates by key id (the
    /// form Google's securetoken `x509` document has), with `max_age`.
    pub fn serve_certificates(&self, keys: &[(&str, TestKey)], max_age: u64) {
        let document: serde_json::Map<String, Value> = keys
            .iter()
            .map(|(kid, key)| (kid.to_string(), json!(key.certificate())))
            .collect();
        self.serve(Value::Object(document), max_age);
    }

    /// Serves `keys` as a JWK Set, with `max_age`.
    pub fn serve_jwks(&self, keys: &[(&str, TestKey)], max_age: u64) {
        let keys: Vec<Value> = keys.iter().map(|(kid, key)| key.jwk(kid)).collect();
        self.serve(json!({ "keys": keys }), max_age);
    }

    fn serve(&self, document: Value, max_age: u64) {
        let mut served = self.served.lock().unwrap();
        served.status = StatusCode::OK;
        served.body = document.to_string();
        served.cache_control = Some(format!("public, max-age={max_age}, must-revalidate"));
    }

    /// Answers 503 from now on.
    pub fn fail(&self) {
        self.served.lock().unwrap().status = StatusCode::SERVICE_UNAVAILABLE;
    }

    /// Stops listening: fetches are refused from now on.
    pub fn stop(&self) {
        self.task.abort();
    }
}

type Shared = (Arc<Mutex<Served>>, Arc<AtomicUsize>);

async fn answer(State((served, hits)): State<Shared>) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let served = served.lock().unwrap();
    let mut response = (served.status, served.body.clone()).into_response();
    if let Some(cache_control) = &served.cache_control {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_str(cache_control).unwrap());
    }
    response
}
