// The client Firebase apps actually run, against the demo: the Firebase Web
// SDK (npm `firebase`, run by node) signs up through the Firebase Auth
// emulator (npm `firebase-tools`, offline for a `demo-` project), calls the
// demo started with `--firebase-auth` with its ID token, and watches the
// user's document in the Firestore emulator with `onSnapshot`. The security
// rules of docs/firestore.rules are loaded into that emulator, so the same
// session shows what they let a client do.
//
// Run it from tests/browser with `npm ci && node --test` (scripts/test.sh
// does). Logs go to target/firebase-web-sdk/.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { deleteApp, initializeApp, onLog } from 'firebase/app';
import { connectAuthEmulator, createUserWithEmailAndPassword, getAuth } from 'firebase/auth';
import {
  Timestamp,
  connectFirestoreEmulator,
  deleteDoc,
  doc,
  getDoc,
  getFirestore,
  onSnapshot,
  serverTimestamp,
  setDoc,
  setLogLevel,
  terminate,
  updateDoc,
} from 'firebase/firestore';
import { buildDemo, Demo, REPO } from './demo-server.mjs';
import {
  loadRules,
  startAuthEmulator,
  startFirestoreEmulator,
  startRedis,
} from './emulators.mjs';

const LOGS = join(REPO, 'target', 'firebase-web-sdk');
// One project for Auth, Firestore and the demo; `demo-` keeps
// firebase-tools offline.
const PROJECT = 'demo-tickets';
const RULES = readFileSync(join(REPO, 'docs', 'firestore.rules'), 'utf8');
// How long the listener may take to see the last charge's write.
const SNAPSHOT_TIMEOUT_MS = 20_000;
// The Firestore emulator now and then garbles a Listen stream's framing
// (firebase-tools issue 8654: "RESOURCE_EXHAUSTED: Received message larger
// than max"); the SDK then waits up to 90 s before it listens again. A
// listener that meets it is opened again on a new Firestore instance, at
// most this many times.
const LISTEN_REOPENS = 3;

let executable;
let auth;
let firestore;
let redis;
const running = [];
const apps = [];

before(async () => {
  rmSync(LOGS, { recursive: true, force: true });
  mkdirSync(LOGS, { recursive: true });
  executable = buildDemo();
  // Each server is stopped by `after` even when another fails to start.
  const started = (server) => {
    running.push(server);
    return server;
  };
  [auth, firestore, redis] = await Promise.all([
    startAuthEmulator(PROJECT, join(LOGS, 'auth-emulator.log')).then(started),
    startFirestoreEmulator(join(LOGS, 'firestore-emulator.log')).then(started),
    startRedis(join(LOGS, 'redis.log')).then(started),
  ]);
  await loadRules(firestore, PROJECT, RULES);
});

after(async () => {
  await Promise.all(apps.map((app) => deleteApp(app)));
  await Promise.all(running.map((server) => server.stop()));
});

// Starts a demo with `args`; its log goes to <name>.log.
async function startDemo(name, args, env) {
  const demo = await Demo.start(executable, args, join(LOGS, `${name}.log`), env);
  running.push(demo);
  return demo;
}

// A Web SDK app on the emulators, and a user signed up through it.
async function signUp(name) {
  const app = initializeApp({ projectId: PROJECT, apiKey: 'demo-api-key' }, name);
  apps.push(app);
  const appAuth = getAuth(app);
  connectAuthEmulator(appAuth, `http://${auth.host}`, { disableWarnings: true });
  const { user } = await createUserWithEmailAndPassword(
    appAuth,
    `${name}@example.com`,
    'correct horse battery staple',
  );
  return { app, user, token: await user.getIdToken() };
}

// Calls the demo as the holder of `token`.
async function call(demo, token, method, path, body) {
  const reply = await fetch(`${demo.base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}` },
    body,
  });
  return { status: reply.status, body: await reply.text() };
}

// A Firestore instance of `app` on the emulator.
function firestoreOf(app) {
  const db = getFirestore(app);
  connectFirestoreEmulator(db, '127.0.0.1', firestore.port);
  return db;
}

// Resolves with the first snapshot data of the document at `path` in
// `app`'s Firestore that `wanted` accepts; pushes every ticketCount seen.
function snapshotWhere(app, path, seen, wanted) {
  return new Promise((resolve, reject) => {
    let db = firestoreOf(app);
    let stop = () => {};
    let reopens = 0;
    let reopening = false;
    let settled = false;
    const settle = (outcome, value) => {
      settled = true;
      clearTimeout(timer);
      onLog(null);
      stop();
      outcome(value);
    };
    const timer = setTimeout(
      () => settle(reject, new Error(`no wanted snapshot within ${SNAPSHOT_TIMEOUT_MS} ms; seen ${seen}`)),
      SNAPSHOT_TIMEOUT_MS,
    );
    const listen = () => {
      stop = onSnapshot(
        doc(db, ...path),
        (snapshot) => {
          const data = snapshot.data();
          if (!data) return;
          seen.push(data.ticketCount);
          if (wanted(data)) settle(resolve, data);
        },
        (error) => settle(reject, error),
      );
    };
    onLog(
      ({ message }) => {
        if (!message.includes('RESOURCE_EXHAUSTED') || reopening || settled) return;
        if (reopens === LISTEN_REOPENS) {
          settle(reject, new Error(`the Listen stream failed ${reopens + 1} times: ${message}`));
          return;
        }
        reopens += 1;
        reopening = true;
        console.log(`reopening the listener after the emulator garbled its stream: ${message}`);
        stop();
        terminate(db).then(
          () => {
            reopening = false;
            if (settled) return;
            db = firestoreOf(app);
            listen();
          },
          (error) => settle(reject, error),
        );
      },
      { level: 'warn' },
    );
    listen();
  });
}

test('a Web SDK user spends tickets until refused while onSnapshot sees ticketCount reach 0', async () => {
  const demo = await startDemo(
    'demo-firebase-auth',
    ['--firebase-auth', PROJECT, '--firestore-project', PROJECT, '--redis-url', redis.url],
    { FIREBASE_AUTH_EMULATOR_HOST: auth.host, FIRESTORE_EMULATOR_HOST: firestore.host },
  );
  const { app, user, token } = await signUp('ada');

  // The demo creates the user's document at first sight.
  const first = await call(demo, token, 'GET', '/api/tickets');
  assert.equal(first.status, 200, first.body);
  assert.equal(JSON.parse(first.body).upload.remaining, 5);

  const seen = [];
  const atZero = snapshotWhere(app, ['users', user.uid], seen, (data) => data.ticketCount === 0);
  const statuses = [];
  while (statuses.at(-1) !== 429 && statuses.length < 10) {
    const reply = await call(demo, token, 'POST', '/api/uploads', new Uint8Array([0x89, 0x50]));
    statuses.push(reply.status);
  }
  assert.deepEqual(statuses, [201, 201, 201, 201, 201, 429]);

  const document = await atZero;
  assert.ok(document.lastTicketRefill instanceof Timestamp, `${document.lastTicketRefill}`);
  assert.equal(document.aiTicketCount, 3);
  assert.ok(seen.every((count, i) => i === 0 || count <= seen[i - 1]), `never rose: ${seen}`);
  assert.equal(seen.at(-1), 0);
});

test("the Auth emulator's tokens are refused without FIREBASE_AUTH_EMULATOR_HOST", async () => {
  const demo = await startDemo('demo-without-emulator-variable', ['--firebase-auth', PROJECT]);
  const { token } = await signUp('mallory');
  const reply = await call(demo, token, 'GET', '/api/tickets');
  assert.equal(reply.status, 401, reply.body);
});

test('the rules let a client read its document and create it at sign-up, never write its tickets', async () => {
  const page = readFileSync(join(REPO, 'docs', 'firebase.md'), 'utf8');
  assert.ok(page.includes(RULES), 'docs/firebase.md shows docs/firestore.rules as it is');
  // The SDK logs every write the rules deny; here they are the point.
  setLogLevel('silent');
  const { app, user } = await signUp('grace');
  const db = firestoreOf(app);
  const mine = doc(db, 'users', user.uid);
  const refused = (promise) =>
    assert.rejects(promise, (error) => error.code === 'permission-denied');

  // Sign-up creates the document with the initial balances, refilled now.
  const initial = {
    ticketCount: 5,
    lastTicketRefill: serverTimestamp(),
    aiTicketCount: 3,
    lastAiTicketRefill: serverTimestamp(),
  };
  await refused(setDoc(mine, { ...initial, ticketCount: 500 }));
  await refused(setDoc(mine, { ...initial, lastTicketRefill: Timestamp.fromMillis(0) }));
  await refused(setDoc(mine, { ...initial, ticketsVersion: 1 }));
  await refused(setDoc(mine, { ...initial, ticketsDigest: 'forged' }));
  await refused(setDoc(doc(db, 'users', 'someone-else'), initial));
  await setDoc(mine, { ...initial, displayName: 'Grace' });
  assert.equal((await getDoc(mine)).data().ticketCount, 5);

  // Other fields change; ticket and version fields never.
  await updateDoc(mine, { displayName: 'Grace H.' });
  for (const field of ['ticketCount', 'aiTicketCount', 'ticketsVersion', 'ticketsLineage', 'ticketsOrigins', 'ticketsDigest']) {
    await refused(updateDoc(mine, { [field]: 99 }));
  }
  for (const field of ['lastTicketRefill', 'lastAiTicketRefill']) {
    await refused(updateDoc(mine, { [field]: serverTimestamp() }));
  }
  await refused(setDoc(mine, { ...initial, displayName: 'Grace' }));
  await refused(deleteDoc(mine));
  await refused(getDoc(doc(db, 'users', 'someone-else')));
  assert.deepEqual(
    { ...(await getDoc(mine)).data(), lastTicketRefill: null, lastAiTicketRefill: null },
    {
      ticketCount: 5,
      aiTicketCount: 3,
      displayName: 'Grace H.',
      lastTicketRefill: null,
      lastAiTicketRefill: null,
    },
  );
});
