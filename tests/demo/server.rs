//! Runs the built `demo` example as a child process and talks HTTP to it.
//!
//! Examples get no `CARGO_BIN_EXE_*` variable, so the first test to need the
//! binary builds it with the cargo, profile and features this test was built
//! with (a no-op after a plain `cargo test`, which builds examples anyway)
//! and takes its path from cargo's JSON report, wherever the target
//! directory is. Each server listens on `127.0.0.1:0`; its "listening on"
//! log line gives the port, so there is no fixed port and no sleep.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The admin token the servers of these tests accept.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A running demo server, killed when dropped.
pub struct Demo {
    child: Child,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Demo {
    /// Starts the demo with `args` (besides `--bind 127.0.0.1:0`) and waits
    /// until it listens.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts the demo with `args` and the environment variables `env`.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = demo_command()
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the demo");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let address = loop {
            line.clear();
            let read = stdout.read_line(&mut line).expect("read the demo's log");
            if read == 0 {
                let status = child.wait().expect("wait for the demo");
                panic!("the demo exited ({status}) before listening");
            }
            if let Some((_, rest)) = line.split_once("listening on http://") {
                break rest.trim().to_string();
            }
        };
        // Keep reading the log so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self {
            child,
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Starts the demo with the admin routes enabled.
    pub fn with_admin() -> Self {
        Self::start(&["--admin-token", ADMIN_TOKEN])
    }

    /// A request to `path`.
    pub fn call(&self, method: Method, path: &str) -> Call<'_> {
        Call {
            demo: self,
            request: Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.base)),
            body: Bytes::new(),
        }
    }

    /// Signs a new user up; their `(uid, token)`.
    pub async fn sign_up(&self) -> (String, String) {
        let reply = self
            .call(Method::POST, "/api/signup")
            .json(r#"{"email":"ada@example.com"}"#)
            .send()
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let body = reply.json();
        let field = |name: &str| body[name].as_str().expect(name).to_string();
        (field("uid"), field("token"))
    }

    /// The user's `(upload, ai)` remaining tickets, from `GET /api/tickets`.
    pub async fn remaining(&self, token: &str) -> (u64, u64) {
        let body = self.read(token, "/api/tickets").await;
        let remaining = |kind: &str| body[kind]["remaining"].as_u64().expect(kind);
        (remaining("upload"), remaining("ai"))
    }

    /// How many uploads the user has stored, from `GET /api/uploads`.
    pub async fn stored_uploads(&self, token: &str) -> usize {
        let body = self.read(token, "/api/uploads").await;
        body["uploads"].as_array().expect("uploads").len()
    }

    /// `GET path` as the user, which must answer 200 with JSON.
    async fn read(&self, token: &str, path: &str) -> Value {
        let reply = self.call(Method::GET, path).bearer(token).send().await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo binary, with a clean environment: no `TICKETS_*` variable of
/// the shell running the tests leaks in.
pub fn demo_command() -> Command {
    let mut command = Command::new(demo_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TICKETS_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "info");
    command
}

fn demo_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let features: Vec<&str> = [
            ("axum", cfg!(feature = "axum")),
            ("redis", cfg!(feature = "redis")),
            ("firestore", cfg!(feature = "firestore")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--example", "demo", "--message-format=json"])
            .args(["--no-default-features", "--features", &features.join(",")])
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let output = cargo.output().expect("run cargo build --example demo");
        assert!(output.status.success(), "cargo build --example demo failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact" && message["target"]["name"] == "demo"
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the demo executable")
    })
}

/// A request being put together.
pub struct Call<'a> {
    demo: &'a Demo,
    request: http::request::Builder,
    body: Bytes,
}

impl Call<'_> {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.request = self.request.header(name, value);
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header(AUTHORIZATION.as_str(), &format!("Bearer {token}"))
    }

    /// Sends `json` as an `application/json` body.
    pub fn json(self, json: &str) -> Self {
        self.header(CONTENT_TYPE.as_str(), "application/json")
            .body(json.as_bytes())
    }

    /// Sends `body` as is.
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = Bytes::copy_from_slice(body);
        self
    }

    /// Sends the request and reads the whole reply.
    pub async fn send(self) -> Reply {
        let request = self
            .request
            .body(Full::new(self.body))
            .expect("a valid request");
        let response = self
            .demo
            .client
            .request(request)
            .await
            .expect("the demo answers");
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("read the body").to_bytes(),
        }
    }
}

/// A reply, read in full.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header's value; empty when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Checks that this is a problem+json of `status` and returns it.
    pub fn problem(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), "application/problem+json");
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16());
        for member in ["type", "title", "detail"] {
            assert!(problem[member].is_string(), "no {member}: {problem}");
        }
        problem
    }
}
