//! `redis-server` processes for tests: a standalone server or a 3-master
//! cluster with a replica per master, each on free 127.0.0.1 ports, stopped
//! by pid when dropped.
//!
//! Contract suites share one server (or cluster) per test binary: it is
//! started on first use and killed by a watchdog (`sh` waiting on a pipe
//! from this process) when the test binary exits, since Rust runs no
//! destructor for statics.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections before a test gives up.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// The pause between two readiness checks.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// A port on 127.0.0.1 that nothing listens on now. A cluster node also
/// needs `port + 10000` for its bus.
fn free_port(with_bus: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind an ephemeral port")
            .local_addr()
            .unwrap()
            .port();
        let bus_free = !with_bus
            || port
                .checked_add(10000)
                .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_free {
            return port;
        }
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// A cluster node's `cluster-node-timeout` (ms); `None`: standalone.
    cluster: Option<u64>,
}

impl RedisServer {
    /// A standalone server on a free port.
    pub fn start() -> Self {
        Self::spawn(free_port(false), None)
    }

    /// A cluster-enabled node with no slots yet.
    fn start_cluster_node(node_timeout_ms: u64) -> Self {
        Self::spawn(free_port(true), Some(node_timeout_ms))
    }

    fn spawn(port: u16, cluster: Option<u64>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tower-tickets-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = Self {
            child: None,
            port,
            dir,
            cluster,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(node_timeout_ms) = self.cluster {
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", &node_timeout_ms.to_string()]);
        }
        let child = command.spawn().expect(
            "start redis-server (bash scripts/install-test-deps.sh installs it when missing)",
        );
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the server answers PING.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("redis-server on port {} exited: {status}", self.port);
            }
            if self.ping() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within {STARTUP_LIMIT:?}",
                self.port
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && std::io::Read::read_exact(&mut stream, &mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// A plain connection for inspecting what the store wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("connect to the test server")
    }

    /// Kills the server (SIGKILL, by pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Sends a signal (`STOP`, `CONT`) to the server by pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three cluster masters sharing the 16384 slots, each with one replica
/// that takes over when its master fails.
pub struct RedisCluster {
    /// The masters, in slot order.
    pub nodes: Vec<RedisServer>,
    /// `replicas[i]` replicates `nodes[i]`.
    pub replicas: Vec<RedisServer>,
}

/// How long a cluster node may be unreachable before the others fail it
/// over, by default: Redis's own default, so that a loaded test machine
/// never fails a healthy master over (its replica may lack the last
/// writes: a loss the tests do not expect).
const NODE_TIMEOUT_MS: u64 = 15_000;

/// The node timeout of [`RedisCluster::failing_over_quickly`].
pub const QUICK_NODE_TIMEOUT_MS: u64 = 2000;

impl RedisCluster {
    pub fn start() -> Self {
        Self::with_node_timeout(NODE_TIMEOUT_MS)
    }

    /// A cluster whose replicas take over [`QUICK_NODE_TIMEOUT_MS`] after
    /// their master stops answering, for a failover test.
    pub fn failing_over_quickly() -> Self {
        Self::with_node_timeout(QUICK_NODE_TIMEOUT_MS)
    }

    fn with_node_timeout(node_timeout_ms: u64) -> Self {
        let start = || RedisServer::start_cluster_node(node_timeout_ms);
        let nodes: Vec<RedisServer> = (0..3).map(|_| start()).collect();
        let replicas: Vec<RedisServer> = (0..3).map(|_| start()).collect();
        let slots_per_node = 16384 / nodes.len() + 1;
        for (i, node) in nodes.iter().enumerate() {
            let mut connection = node.connection();
            let first = i * slots_per_node;
            let last = ((i + 1) * slots_per_node).min(16384);
            let slots: Vec<usize> = (first..last).collect();
            redis::cmd("CLUSTER")
                .arg("ADDSLOTS")
                .arg(&slots)
                .exec(&mut connection)
                .expect("assign slots");
            redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .exec(&mut connection)
                .expect("set the config epoch");
        }
        let mut first = nodes[0].connection();
        for node in nodes[1..].iter().chain(&replicas) {
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .exec(&mut first)
                .expect("meet");
        }
        let cluster = Self { nodes, replicas };
        cluster.wait_until("every node knows every other", |info, _| {
            info.contains("cluster_known_nodes:6")
        });
        for (master, replica) in cluster.nodes.iter().zip(&cluster.replicas) {
            let id: String = redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut master.connection())
                .expect("CLUSTER MYID");
            redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(id)
                .exec(&mut replica.connection())
                .expect("CLUSTER REPLICATE");
        }
        cluster.wait_until(
            "every slot is served and every replica in sync",
            |info, role| {
                info.contains("cluster_state:ok")
                    && (role.starts_with("master") || role.contains("connected"))
            },
        );
        cluster
    }

    /// Polls every node's `CLUSTER INFO` and `ROLE` (flattened) until
    /// `ready` holds for all.
    fn wait_until(&self, what: &str, ready: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let mut connections: Vec<_> = self
            .nodes
            .iter()
            .chain(&self.replicas)
            .map(|n| n.connection())
            .collect();
        loop {
            let all = connections.iter_mut().all(|c| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(c).unwrap();
                let role: redis::Value = redis::cmd("ROLE").query(c).unwrap();
                ready(&info, &flatten(&role))
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test cluster did not converge within {STARTUP_LIMIT:?}: {what}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Which of [`nodes`](Self::nodes) (or its replica, after a failover)
    /// holds `key`'s slot.
    pub fn master_of(&self, key: &str) -> usize {
        usize::from(self.slot_of(key)) / (16384 / self.nodes.len() + 1)
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].connection())
            .expect("CLUSTER KEYSLOT")
    }

    /// Moves `slot` from master `from` to master `to` as a resharding does
    /// (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE` of its keys in
    /// batches, then `SETSLOT … NODE` on every master): meanwhile a client
    /// gets `ASK` for the keys already moved, and `TRYAGAIN` for a script
    /// whose keys are split.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let id = |node: &RedisServer| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut node.connection())
                .expect("CLUSTER MYID")
        };
        let (from_node, to_node) = (&self.nodes[from], &self.nodes[to]);
        let (from_id, to_id) = (id(from_node), id(to_node));
        let setslot = |node: &RedisServer, state: &str, owner: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(owner)
                .exec(&mut node.connection())
                .expect("CLUSTER SETSLOT");
        };
        setslot(to_node, "IMPORTING", &from_id);
        setslot(from_node, "MIGRATING", &to_id);
        let mut source = from_node.connection();
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(10)
                .query(&mut source)
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_node.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec(&mut source)
                .expect("MIGRATE");
        }
        // The new owner first, then the old one, then the others.
        let others = (0..self.nodes.len()).filter(|i| *i != from && *i != to);
        for node in [to, from].into_iter().chain(others) {
            setslot(&self.nodes[node], "NODE", &to_id);
        }
    }

    /// The masters' URLs (a client finds the replicas from them).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A `ROLE` reply as words: `master ...` or `slave <host> <port> connected ...`.
fn flatten(value: &redis::Value) -> String {
    match value {
        redis::Value::Array(items) => items.iter().map(flatten).collect::<Vec<_>>().join(" "),
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(text) => text.clone(),
        redis::Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

/// Servers that live as long as the test binary: the watchdog kills them
/// by pid when this process's end of its stdin pipe closes.
struct Shared<T> {
    servers: T,
    _watchdog: (Child, ChildStdin),
}

fn watch(servers: &[&RedisServer]) -> (Child, ChildStdin) {
    let pids: Vec<String> = servers.iter().map(|s| s.pid().to_string()).collect();
    let dirs: Vec<String> = servers
        .iter()
        .map(|s| s.dir.display().to_string())
        .collect();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _; kill -9 {}; rm -rf {}",
            pids.join(" "),
            dirs.join(" ")
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watchdog");
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// One standalone server for every test of this binary that shares it.
pub fn shared_server() -> &'static RedisServer {
    static SERVER: OnceLock<Shared<RedisServer>> = OnceLock::new();
    &SERVER
        .get_or_init(|| {
            let server = RedisServer::start();
            let watchdog = watch(&[&server]);
            Shared {
                servers: server,
                _watchdog: watchdog,
            }
        })
        .servers
}

/// One cluster for every test of this binary that shares it.
pub fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<Shared<RedisCluster>> = OnceLock::new();
    &CLUSTER
        .get_or_init(|| {
            let cluster = RedisCluster::start();
            let watchdog = watch(
                &cluster
                    .nodes
                    .iter()
                    .chain(&cluster.replicas)
                    .collect::<Vec<_>>(),
            );
            Shared {
                servers: cluster,
                _watchdog: watchdog,
            }
        })
        .servers
}
