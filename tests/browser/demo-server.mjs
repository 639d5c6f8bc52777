// Builds the `demo` example and runs it as a child process.
//
// The demo is built with the features and profile of `cargo test
// --all-features`, so after the Rust tests this build is a no-op; its path
// comes from cargo's JSON report, wherever the target directory is. Each
// server listens on 127.0.0.1:0 and logs "listening on http://<address>":
// the test reads the port from that line, so there is no fixed port and no
// sleep.
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../', import.meta.url));

// How long a demo may take to start listening.
const START_TIMEOUT_MS = 30_000;

// Builds the demo and returns the path of its executable.
export function buildDemo() {
  const report = execFileSync(
    'cargo',
    [
      'build',
      '--example',
      'demo',
      '--all-features',
      '--locked',
      '--message-format=json-render-diagnostics',
    ],
    { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  for (const line of report.split('\n')) {
    if (!line.startsWith('{')) continue;
    const message = JSON.parse(line);
    if (message.reason === 'compiler-artifact' && message.target?.name === 'demo') {
      if (message.executable) return message.executable;
    }
  }
  throw new Error('cargo built no `demo` executable');
}

// A running demo server.
export class Demo {
  constructor(child, base) {
    this.child = child;
    this.base = base;
  }

  // Starts `executable` with `args` (besides `--bind 127.0.0.1:0`) and the
  // variables of `env` besides this process's, its log going to `logPath`
  // too, and resolves once it listens and answers `/healthz`.
  static async start(executable, args, logPath, env = {}) {
    const child = spawn(executable, ['--bind', '127.0.0.1:0', ...args], {
      // The "listening on" line is logged at info level.
      env: { ...process.env, ...env, RUST_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.stdout.pipe(createWriteStream(logPath));
    const demo = new Demo(child, null);
    try {
      demo.base = `http://${await listeningAddress(child)}`;
      const health = await fetch(`${demo.base}/healthz`);
      if (health.status !== 200) throw new Error(`/healthz answered ${health.status}`);
      return demo;
    } catch (error) {
      await demo.stop();
      throw error;
    }
  }

  // Kills the server; resolves once it has exited.
  async stop() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.kill();
    await exited;
  }
}

// The address in the child's "listening on http://<address>" log line.
function listeningAddress(child) {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(
      () => reject(new Error(`the demo did not listen within ${START_TIMEOUT_MS} ms`)),
      START_TIMEOUT_MS,
    );
    // The reader stays attached, so the demo never blocks on a full pipe.
    lines.on('line', (line) => {
      const found = line.match(/listening on http:\/\/(\S+)/);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the demo exited (${signal ?? code}) before listening`));
    });
  });
}
