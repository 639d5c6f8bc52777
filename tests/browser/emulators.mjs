// The servers the Firebase Web SDK test runs against, each started on a
// free loopback port and polled until it answers (no sleeps):
// - the Firebase Auth emulator, from firebase-tools (npm; it runs offline
//   for a `demo-` project),
// - Google's Firestore emulator, the jar of the Debian package
//   google-cloud-cli-firestore-emulator (as the Rust tests start it),
// - redis-server, which the write-through decides in.
// Every process is killed by `stop()`; logs go to the files named.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const FIREBASE = fileURLToPath(new URL('node_modules/.bin/firebase', import.meta.url));
const FIRESTORE_JAR =
  '/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar';
const FIRESTORE_MAIN = 'com.google.cloud.datastore.emulator.firestore.CloudFirestore';
// A JVM or firebase-tools on a loaded machine may take this long to answer.
const START_TIMEOUT_MS = 90_000;
const POLL_EVERY_MS = 50;

// A port nobody listens on now (the kernel's pick, released at once).
export async function freePort() {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

// Resolves once `ready()` resolves true; rejects with `what` and the log of
// `process` after the start timeout, or when `process` exits first.
async function pollUntil(what, ready, process) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (process && (process.exitCode !== null || process.signalCode !== null)) {
      throw new Error(`${what}: the process exited (${process.signalCode ?? process.exitCode})`);
    }
    if (await ready().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${START_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, POLL_EVERY_MS));
  }
}

// One started process, killed by stop().
class Server {
  constructor(command, args, logPath, options = {}) {
    this.child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      ...options,
    });
    const log = createWriteStream(logPath);
    this.child.stdout.pipe(log);
    this.child.stderr.pipe(log);
  }

  // Kills the process and its children (firebase-tools and java fork);
  // resolves once it exited, and removes its scratch directory, if any.
  async stop() {
    const { child } = this;
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
      await exited;
    }
    if (this.scratch) rmSync(this.scratch, { recursive: true, force: true });
  }

  // Resolves with this server once `ready()` resolves true; stops it if
  // it never does.
  async readyWhen(what, ready) {
    try {
      await pollUntil(what, ready, this.child);
      return this;
    } catch (error) {
      await this.stop();
      throw error;
    }
  }
}

// The Firebase Auth emulator for `project` (a `demo-` id: offline), with
// its hub and logging ports free too, so runs in parallel never collide.
export async function startAuthEmulator(project, logPath) {
  const [auth, hub, logging] = [await freePort(), await freePort(), await freePort()];
  const dir = mkdtempSync(join(tmpdir(), 'tower-tickets-auth-emulator-'));
  const host = '127.0.0.1';
  const config = {
    emulators: {
      auth: { host, port: auth },
      hub: { host, port: hub },
      logging: { host, port: logging },
      ui: { enabled: false },
      singleProjectMode: true,
    },
  };
  writeFileSync(join(dir, 'firebase.json'), JSON.stringify(config));
  const server = new Server(
    FIREBASE,
    ['emulators:start', '--only', 'auth', '--project', project],
    logPath,
    // Its own TMPDIR: the hub keeps a locator file per project there, which
    // another run (or a killed one) would otherwise share.
    { cwd: dir, env: { ...process.env, TMPDIR: dir, NO_UPDATE_NOTIFIER: '1', CI: '1' } },
  );
  server.host = `${host}:${auth}`;
  server.scratch = dir;
  return server.readyWhen(
    'the Auth emulator',
    async () => (await (await fetch(`http://${server.host}/`)).json()).authEmulator?.ready,
  );
}

// Google's Firestore emulator; ready when `GET /` answers `Ok`.
export async function startFirestoreEmulator(logPath) {
  const port = await freePort();
  const server = new Server(
    'java',
    ['-cp', FIRESTORE_JAR, FIRESTORE_MAIN, 'start', '--host=127.0.0.1', `--port=${port}`],
    logPath,
  );
  server.host = `127.0.0.1:${port}`;
  server.port = port;
  return server.readyWhen(
    'the Firestore emulator',
    async () => (await (await fetch(`http://${server.host}/`)).text()).trim() === 'Ok',
  );
}

// Loads Firestore security rules (`source`, the text of a .rules file)
// into the emulator for `project`, through its REST API.
export async function loadRules(firestore, project, source) {
  const reply = await fetch(
    `http://${firestore.host}/emulator/v1/projects/${project}:securityRules`,
    {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ rules: { files: [{ name: 'firestore.rules', content: source }] } }),
    },
  );
  if (!reply.ok) throw new Error(`the emulator refused the rules: ${await reply.text()}`);
}

// A redis-server that keeps nothing on disk; ready when it answers PING.
export async function startRedis(logPath) {
  const port = await freePort();
  const server = new Server(
    'redis-server',
    ['--port', `${port}`, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    logPath,
  );
  server.url = `redis://127.0.0.1:${port}`;
  return server.readyWhen('redis-server', () => answersPing(port));
}

function answersPing(port) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => socket.write('PING\r\n'));
    socket.once('data', (data) => {
      socket.destroy();
      resolve(data.toString().startsWith('+PONG'));
    });
    socket.once('error', () => resolve(false));
  });
}
