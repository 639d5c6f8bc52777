//! Runs the built `demo` example as a child process and talks HTTP to it.
//!
//! Examples get no `CARGO_BIN_EXE_*` variable, so the first test to need the
//! binary builds it with the cargo, profile and features this test was built
//! with (a no-op after a plain `cargo test`, which builds examples anyway)
//! and takes its path from cargo's JSON report, wherever the target
//! directory is. Each server listens on `127.0.0.1:0`; its "listening on"
//! log line gives the port, so there is no fixed port and no sleep.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The admin token the servers of these tests accept.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How many of its last log lines a [`Demo`] keeps, for a failing test to
/// show.
const LOG_LINES: usize = 4000;

/// A running demo server, killed when dropped.
pub struct Demo {
    child: Child,
    address: String,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    log: Arc<Mutex<VecDeque<String>>>,
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
        // The log from the start: warnings come before "listening on".
        let mut early = VecDeque::new();
        let address = loop {
            line.clear();
            let read = stdout.read_line(&mut line).expect("read the demo's log");
            if read == 0 {
                let status = child.wait().expect("wait for the demo");
                panic!("the demo exited ({status}) before listening");
            }
            early.push_back(line.trim_end().to_string());
            if let Some((_, rest)) = line.split_once("listening on http://") {
                break rest.trim().to_string();
            }
        };
        // Keep reading the log so the server never blocks on a full pipe,
        // and keep its end for a failing test to show.
        early.truncate(LOG_LINES);
        let log = Arc::new(Mutex::new(early));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == LOG_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        Self {
            child,
            base: format!("http://{address}"),
            address,
            client: Client::builder(TokioExecutor::new()).build_http(),
            log,
        }
    }

    /// `host:port` the server listens on.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The last lines the server logged (its log is kept from the start,
    /// up to a few thousand lines).
    pub fn log(&self) -> String {
        let kept = self.log.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().fold(String::new(), |mut log, line| {
            log.push_str(line);
            log.push('\n');
            log
        })
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

    /// Signs a new user up; their `(uid, token)`. A 503 (the store's
    /// backends not answering in time on a loaded machine) is asked again
    /// for a while: a sign-up that fails charges nothing and creates nobody
    /// the test knows of.
    pub async fn sign_up(&self) -> (String, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut reply = self.try_sign_up().await;
        while reply.status == StatusCode::SERVICE_UNAVAILABLE
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            reply = self.try_sign_up().await;
        }
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let body = reply.json();
        let field = |name: &str| body[name].as_str().expect(name).to_string();
        (field("uid"), field("token"))
    }

    /// `POST /api/signup` with a well-formed body; the answer, whatever
    /// it is.
    pub async fn try_sign_up(&self) -> Reply {
        self.call(Method::POST, "/api/signup")
            .json(r#"{"email":"ada@example.com"}"#)
            .send()
            .await
    }

    /// The user's `(upload, ai)` remaining tickets, from `GET /api/tickets`.
    pub async fn remaining(&self, token: &str) -> (u64, u64) {
        let body = self.read(token, "/api/tickets").await;
        let remaining = |kind: &str| body[kind]["remaining"].as_u64().expect(kind);
        (remaining("upload"), remaining("ai"))
    }

    /// Like [`remaining`](Self::remaining), but says what went wrong
    /// instead of failing the test: a store may be unavailable for a while.
    pub async fn try_remaining(&self, token: &str) -> Result<(u64, u64), String> {
        let reply = self
            .call(Method::GET, "/api/tickets")
            .bearer(token)
            .try_send()
            .await?;
        if reply.status != StatusCode::OK {
            return Err(format!("{}: {}", reply.status, reply.text()));
        }
        let body = reply.json();
        let remaining = |kind: &str| body[kind]["remaining"].as_u64().expect(kind);
        Ok((remaining("upload"), remaining("ai")))
    }

    /// Sends `POST /api/uploads` with `image` as the user, on a connection
    /// of its own, and closes that connection (the client leaves) as soon as
    /// `leave` completes, unless the answer came first. The answer's
    /// status, if it came.
    pub async fn upload_then_leave(
        &self,
        token: &str,
        image: &[u8],
        leave: impl Future<Output = ()>,
    ) -> Option<StatusCode> {
        let mut stream = TcpStream::connect(&self.address)
            .await
            .expect("connect to the demo");
        let head = format!(
            "POST /api/uploads HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: image/png\r\nContent-Length: {}\r\n\r\n",
            self.address,
            image.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(image);
        stream.write_all(&request).await.expect("send the request");
        tokio::select! {
            status = read_status(&mut stream) => status,
            () = leave => None,
        }
        // Dropping the stream closes the connection.
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
/// the shell running the tests leaks in, nor `FIREBASE_AUTH_EMULATOR_HOST`
/// (which would make `--firebase-auth` take unsigned tokens).
pub fn demo_command() -> Command {
    let mut command = Command::new(demo_binary());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TICKETS_") {
            command.env_remove(name);
        }
    }
    command.env_remove("FIREBASE_AUTH_EMULATOR_HOST");
    command.env("RUST_LOG", "info");
    command
}

fn demo_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let features: Vec<&str> = [
            ("axum", cfg!(feature = "axum")),
            ("jwt", cfg!(feature = "jwt")),
            ("redis", cfg!(feature = "redis")),
            ("firestore", cfg!(feature = "firestore")),
            ("firebase", cfg!(feature = "firebase")),
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
        self.try_send().await.expect("the demo answers")
    }

    /// Sends the request and reads the whole reply, or says why there is
    /// none (the connection failed or broke).
    pub async fn try_send(self) -> Result<Reply, String> {
        let request = self
            .request
            .body(Full::new(self.body))
            .expect("a valid request");
        let response = self
            .demo
            .client
            .request(request)
            .await
            .map_err(|e| format!("no answer: {e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("the body broke off: {e}"))?;
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }
}

/// Reads an HTTP/1.1 answer's status line; `None` when the connection ends
/// first or the line is not one.
async fn read_status(stream: &mut TcpStream) -> Option<StatusCode> {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let line = std::str::from_utf8(&head).ok()?;
    let code = line.split(' ').nth(1)?;
    StatusCode::from_bytes(code.as_bytes()).ok()
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
