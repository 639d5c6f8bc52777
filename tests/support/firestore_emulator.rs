//! Google's Firestore emulator, started by the tests on a free loopback port.
//!
//! The emulator is a Java program from the Debian package
//! `google-cloud-cli-firestore-emulator`. Each [`FirestoreEmulator`] runs one
//! under a small shell watchdog: the watchdog holds a pipe from this process
//! and kills the emulator by pid as soon as that pipe closes, so no emulator
//! outlives the test binary, even one that panics or is killed. Dropping a
//! [`FirestoreEmulator`] kills its emulator at once.

#![allow(dead_code)] // Each test binary uses its own subset of the harness.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use firestore::gcloud_sdk::google_cloud_auth::credentials::anonymous;
use firestore::{FirestoreDb, FirestoreDbOptions};

/// Where the Debian package installs the emulator.
pub const EMULATOR_JAR: &str =
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar";
const MAIN_CLASS: &str = "com.google.cloud.datastore.emulator.firestore.CloudFirestore";
/// The JVM usually answers within a few seconds; a loaded machine may take longer.
const STARTUP_LIMIT: Duration = Duration::from_secs(90);
const POLL_EVERY: Duration = Duration::from_millis(25);
/// How long a test lets one Firestore operation take: the emulator's JVM
/// answers its first requests slowly, and shares a loaded machine.
pub const FIRESTORE_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts `java` with `$0`... under `sh`, prints the emulator's pid, waits
/// for stdin to close, then kills the emulator.
const WATCHDOG: &str = r#"java -cp "$0" "$1" start --host=127.0.0.1 --port="$2" >"$3" 2>&1 &
pid=$!
echo "$pid"
read -r _
kill -9 "$pid" 2>/dev/null"#;

/// One running emulator. Killed on drop.
pub struct FirestoreEmulator {
    port: u16,
    log: PathBuf,
    running: Option<Running>,
}

struct Running {
    watchdog: Child,
    /// Closing it tells the watchdog to kill the emulator.
    lifeline: ChildStdin,
    pid: u32,
}

impl FirestoreEmulator {
    /// Starts an emulator on a free port and waits until it answers.
    pub fn start() -> Self {
        require_emulator();
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "tower-tickets-firestore-emulator-{}-{port}.log",
            std::process::id()
        ));
        let mut emulator = Self {
            port,
            log,
            running: None,
        };
        emulator.restart();
        emulator
    }

    /// The emulator this test binary shares: started on first use, killed
    /// when the binary exits. Tests isolate themselves with distinct project
    /// ids.
    pub fn shared() -> &'static Self {
        static SHARED: OnceLock<FirestoreEmulator> = OnceLock::new();
        SHARED.get_or_init(Self::start)
    }

    /// `host:port`, as `FIRESTORE_EMULATOR_HOST` would name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client of this emulator for `project`; see [`client_at`].
    pub async fn client(&self, project: &str) -> FirestoreDb {
        client_at(&self.host(), project).await
    }

    /// Kills the emulator (SIGKILL: no goodbye to its clients). Its data is
    /// lost, as a real outage may lose in-flight requests.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            kill_pid(running.pid, "KILL");
            drop(running.lifeline);
            let _ = running.watchdog.wait();
            wait_until(
                || TcpStream::connect(("127.0.0.1", self.port)).is_err(),
                || "the killed emulator still accepts connections".to_string(),
            );
        }
    }

    /// Starts the emulator again on the same port (empty), after
    /// [`kill`](Self::kill); waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.running.is_none(), "the emulator is already running");
        let mut watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, EMULATOR_JAR, MAIN_CLASS])
            .arg(self.port.to_string())
            .arg(&self.log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh starts the emulator");
        let lifeline = watchdog.stdin.take().expect("a piped stdin");
        let mut pid_line = String::new();
        BufReader::new(watchdog.stdout.take().expect("a piped stdout"))
            .read_line(&mut pid_line)
            .expect("the watchdog prints the emulator's pid");
        let pid = pid_line.trim().parse().expect("a pid");
        self.running = Some(Running {
            watchdog,
            lifeline,
            pid,
        });
        let log = self.log.clone();
        wait_until(
            || self.answers_ok(),
            || {
                format!(
                    "the Firestore emulator did not start; its log:\n{}",
                    read_log(&log)
                )
            },
        );
    }

    /// Freezes the emulator (SIGSTOP): connections stay open, requests hang.
    pub fn pause(&self) {
        kill_pid(self.pid(), "STOP");
    }

    /// Wakes a [`pause`](Self::pause)d emulator (SIGCONT).
    pub fn resume(&self) {
        kill_pid(self.pid(), "CONT");
    }

    fn pid(&self) -> u32 {
        self.running.as_ref().expect("the emulator is running").pid
    }

    /// Whether `GET /` answers `Ok`, the emulator's readiness signal. The
    /// emulator keeps the connection open, so the answer is read only as far
    /// as its body.
    fn answers_ok(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", self.host());
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let mut chunk = [0; 256];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                if !head.starts_with("HTTP/1.1 200") {
                    return false;
                }
                if body.trim_end() == "Ok" {
                    return true;
                }
            }
        }
    }
}

impl Drop for FirestoreEmulator {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            kill_pid(running.pid, "KILL");
            drop(running.lifeline);
            let _ = running.watchdog.wait();
        }
    }
}

/// A client of the emulator at `host` for `project`. It sends no
/// credentials (the emulator checks none), does not retry, and does not read
/// `FIRESTORE_EMULATOR_HOST`, so tests in one binary can talk to different
/// emulators.
pub async fn client_at(host: &str, project: &str) -> FirestoreDb {
    let options = FirestoreDbOptions::new(project.to_string())
        .with_firebase_api_url(format!("http://{host}"))
        .with_max_retries(0);
    FirestoreDb::with_options_auth(options, anonymous::Builder::new().build())
        .await
        .expect("a Firestore client of the emulator")
}

/// Sets integer fields of `users/{uid}` in `project` through Firestore's
/// REST API (`PATCH` with an update mask), as another client (the Firebase
/// console, a Cloud Function) edits a document: only those fields change.
pub async fn edit_through_rest(host: &str, project: &str, uid: &str, fields: &[(&str, i64)]) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let mask: String = fields
        .iter()
        .map(|(name, _)| format!("updateMask.fieldPaths={name}&"))
        .collect();
    let values: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(name, value)| {
            let value = serde_json::json!({ "integerValue": value.to_string() });
            (name.to_string(), value)
        })
        .collect();
    let body = serde_json::json!({ "fields": values }).to_string();
    let request = http::Request::patch(format!(
        "http://{host}/v1/projects/{project}/databases/(default)/documents/users/{uid}?{mask}"
    ))
    // The emulator takes this token as an administrator's, past any rules.
    .header("authorization", "Bearer owner")
    .header("content-type", "application/json")
    .body(Full::new(bytes::Bytes::from(body)))
    .expect("a PATCH request");
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("the emulator answers");
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert!(
        status.is_success(),
        "the REST edit failed: {status} {}",
        String::from_utf8_lossy(&answer)
    );
}

/// Panics with what to install when the emulator is missing.
pub fn require_emulator() {
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        Path::new(EMULATOR_JAR).is_file() && java,
        "These tests need Google's Firestore emulator ({EMULATOR_JAR}) and `java` on the PATH. \
         Install the Debian package google-cloud-cli-firestore-emulator (it brings a JDK): \
         sudo apt-get install google-cloud-cli-firestore-emulator"
    );
}

/// A loopback port nothing listens on (for now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn kill_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"))
}

/// Polls `ready` until it holds; panics with `why()` after [`STARTUP_LIMIT`].
fn wait_until(mut ready: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + STARTUP_LIMIT;
    while !ready() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(POLL_EVERY);
    }
}
