// The demo's page: sign up, two ticket counters, an image upload and an AI
// prompt.
//
// The counters show only what the server said: `GET /api/tickets` when the
// page opens, when a refill is due and when a counter reaches zero, and the
// `RateLimit` headers that every charged response carries, allowed or
// refused. Nothing is counted here. At zero an action is disabled and shows
// the server's refusal: the 429's words, or the `refusal` that
// `GET /api/tickets` gives for a kind at zero.
// Refusals and errors are shown as the server words them (problem+json), in
// the browser's language, which every request sends as `Accept-Language`.
'use strict';

const language = navigator.language || 'en';

const TEXTS = {
  en: {
    title: 'tower-tickets demo',
    tagline: 'Uploads and AI generations cost tickets. Click a counter to see when it refills.',
    signupTitle: 'Sign up',
    emailLabel: 'Email',
    signupButton: 'Sign up',
    signupHint: 'Your session is kept in this browser: a reload resumes it.',
    signedInAs: 'Signed in as',
    signOut: 'Sign out',
    countersLabel: 'Tickets',
    uploadTickets: 'Upload tickets',
    aiTickets: 'AI tickets',
    uploadTitle: 'Upload an image',
    imageLabel: 'Image',
    uploadButton: 'Upload',
    aiTitle: 'Ask the AI',
    promptLabel: 'Prompt',
    generateButton: 'Generate',
    previewOf: (name) => `Preview of ${name}`,
    uploaded: (name, size) => `Uploaded ${name} (${size}).`,
    refillsTo: (capacity) => `Back to ${capacity} at`,
    countdown: (left) => `in ${left}`,
    refillingNow: 'refilling now',
    unreadableTitle: 'The image cannot be read.',
    unreadable: 'Choose it again.',
    unreachableTitle: 'No answer from the server.',
    unreachable: 'Check that the demo is running, then try again.',
  },
  fr: {
    title: 'Démo tower-tickets',
    tagline: 'Les envois et les générations IA coûtent des tickets. Cliquez sur un compteur pour savoir quand il se recharge.',
    signupTitle: 'Inscription',
    emailLabel: 'E-mail',
    signupButton: "S'inscrire",
    signupHint: 'Votre session est gardée dans ce navigateur : la recharger la reprend.',
    signedInAs: 'Connecté en tant que',
    signOut: 'Se déconnecter',
    countersLabel: 'Tickets',
    uploadTickets: "Tickets d'envoi",
    aiTickets: 'Tickets IA',
    uploadTitle: 'Envoyer une image',
    imageLabel: 'Image',
    uploadButton: 'Envoyer',
    aiTitle: "Demander à l'IA",
    promptLabel: 'Consigne',
    generateButton: 'Générer',
    previewOf: (name) => `Aperçu de ${name}`,
    uploaded: (name, size) => `${name} envoyé (${size}).`,
    refillsTo: (capacity) => `De retour à ${capacity} le`,
    countdown: (left) => `dans ${left}`,
    refillingNow: 'rechargement en cours',
    unreadableTitle: "L'image ne peut pas être lue.",
    unreadable: 'Choisissez-la à nouveau.',
    unreachableTitle: 'Le serveur ne répond pas.',
    unreachable: 'Vérifiez que la démo tourne, puis réessayez.',
  },
};
const text = TEXTS[language.slice(0, 2).toLowerCase()] ?? TEXTS.en;

// Where the session (token, email, refusals) is kept between reloads.
const STORAGE_KEY = 'tower-tickets-demo';
// Slack after a refill instant before reading the balances again: the
// server's clock decides, and `refill_at` is rounded to the second.
const REFILL_MARGIN_MS = 500;
// setTimeout's longest delay.
const MAX_DELAY_MS = 2 ** 31 - 1;

// `{token, uid, email, refusals: {kind: {title, detail}}}`, or null when
// signed out. A refusal (the 429's words) holds until its kind has tickets.
let session = loadSession();
// kind -> `{remaining, capacity, refillAt: Date}`, as the server last said.
const counters = {};
// Kinds whose action is waiting for an answer.
const busy = new Set();
let refreshTimer;

const $ = (selector) => document.querySelector(selector);
const formOf = (kind) => $(`form[data-kind="${kind}"]`);
const messageOf = (kind) => formOf(kind).querySelector('.message');

function loadSession() {
  try {
    const stored = JSON.parse(localStorage.getItem(STORAGE_KEY));
    return stored?.token ? { refusals: {}, ...stored } : null;
  } catch {
    return null;
  }
}

function saveSession() {
  try {
    if (session) localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // Storage disabled: the session lasts as long as the page.
  }
}

// Sends a request; resolves to `{status, headers, json}`, status 0 when the
// server cannot be reached.
async function api(method, path, body, contentType) {
  const headers = { 'Accept-Language': language };
  if (session) headers.Authorization = `Bearer ${session.token}`;
  if (contentType) headers['Content-Type'] = contentType;
  try {
    const response = await fetch(path, { method, headers, body });
    const json = await response.json().catch(() => null);
    return { status: response.status, headers: response.headers, json };
  } catch {
    return { status: 0, headers: new Headers(), json: null };
  }
}

// What went wrong, in the server's words when it sent problem+json.
function problemOf(reply) {
  if (reply.status === 0) return { title: text.unreachableTitle, detail: text.unreachable };
  if (typeof reply.json?.title === 'string') {
    return { title: reply.json.title, detail: reply.json.detail ?? '' };
  }
  return { title: `HTTP ${reply.status}`, detail: '' };
}

// Parses a `RateLimit` or `RateLimit-Policy` header (IETF httpapi
// ratelimit-headers draft): `"upload";r=4;t=86400, "ai";r=2;t=86400` gives
// `{upload: {r: 4, t: 86400}, ai: {r: 2, t: 86400}}`.
function rateLimitItems(value) {
  const items = {};
  for (const item of (value ?? '').split(',')) {
    const [name, ...params] = item.split(';').map((part) => part.trim());
    if (!name) continue;
    const entry = {};
    for (const param of params) {
      const [key, number] = param.split('=');
      entry[key] = Number(number);
    }
    items[name.replace(/^"|"$/g, '')] = entry;
  }
  return items;
}

// The balances an action's response announces: `r` tickets left, `q` the
// capacity, the refill `t` seconds after the answer came.
function balancesFromHeaders(headers, receivedAt) {
  const policies = rateLimitItems(headers.get('RateLimit-Policy'));
  const balances = {};
  for (const [kind, { r, t }] of Object.entries(rateLimitItems(headers.get('RateLimit')))) {
    const capacity = policies[kind]?.q ?? counters[kind]?.capacity;
    if ([r, t, capacity].every(Number.isFinite)) {
      balances[kind] = { remaining: r, capacity, refillAt: new Date(receivedAt + t * 1000) };
    }
  }
  return balances;
}

// The balances of `GET /api/tickets`: `{upload: {remaining, capacity,
// refill_at, refusal?: {title, detail}}, ...}`.
function balancesFromJson(json) {
  const balances = {};
  for (const [kind, view] of Object.entries(json ?? {})) {
    const refillAt = new Date(view?.refill_at);
    if (Number.isFinite(view?.remaining) && Number.isFinite(view?.capacity) && !isNaN(refillAt)) {
      const refusal = typeof view.refusal?.title === 'string' ? view.refusal : undefined;
      balances[kind] = { remaining: view.remaining, capacity: view.capacity, refillAt, refusal };
    }
  }
  return balances;
}

// Takes in what the server said about balances and shows it.
function apply(balances) {
  for (const [kind, balance] of Object.entries(balances)) {
    if (!formOf(kind)) continue;
    counters[kind] = balance;
    if (balance.remaining > 0 && session?.refusals[kind]) {
      delete session.refusals[kind];
      showMessage(messageOf(kind), null);
    } else if (balance.remaining === 0 && balance.refusal && session) {
      session.refusals[kind] = balance.refusal;
    }
  }
  saveSession();
  render();
  scheduleRefresh();
}

// Reads the balances again once the earliest refill is due.
function scheduleRefresh(delayMs) {
  clearTimeout(refreshTimer);
  if (delayMs === undefined) {
    const next = Math.min(...Object.values(counters).map((c) => c.refillAt.getTime()));
    if (!Number.isFinite(next)) return;
    delayMs = Math.max(next - Date.now(), 0) + REFILL_MARGIN_MS;
  }
  refreshTimer = setTimeout(refresh, Math.min(delayMs, MAX_DELAY_MS));
}

async function refresh() {
  if (!session) return;
  const reply = await api('GET', '/api/tickets');
  if (reply.status === 200) {
    showMessage($('#notice'), null);
    apply(balancesFromJson(reply.json));
  } else if (reply.status === 401) {
    signOut(problemOf(reply));
  } else {
    showMessage($('#notice'), problemOf(reply));
    const retryAfter = Number(reply.headers.get('Retry-After'));
    scheduleRefresh((retryAfter > 0 ? retryAfter : 5) * 1000);
  }
}

// Shows `{title, detail}` in `element` (or clears it when null).
function showMessage(element, message, tone = 'error') {
  if (element.id === 'notice') element.hidden = !message;
  element.className = message ? `message ${tone}` : 'message';
  if (!message) {
    element.replaceChildren();
    return;
  }
  const parts = [];
  if (message.title) {
    const title = document.createElement('strong');
    title.textContent = message.title;
    parts.push(title, ' ');
  }
  parts.push(message.detail ?? '');
  element.replaceChildren(...parts);
}

function render() {
  for (const counter of document.querySelectorAll('.counter')) {
    const balance = counters[counter.dataset.kind];
    counter.querySelector('.count').textContent = balance
      ? `${balance.remaining}/${balance.capacity}`
      : '…';
    counter.classList.toggle('empty', balance?.remaining === 0);
    renderRefill(counter);
  }
  for (const form of document.querySelectorAll('form[data-kind]')) {
    const kind = form.dataset.kind;
    const refusal = session?.refusals[kind];
    form.querySelector('button[type=submit]').disabled = busy.has(kind) || Boolean(refusal);
    if (refusal) showMessage(messageOf(kind), refusal, 'refused');
  }
}

// The revealed line under a counter: the exact refill time and a countdown.
function renderRefill(counter) {
  const panel = counter.querySelector('.refill');
  const balance = counters[counter.dataset.kind];
  if (panel.hidden || !balance) return;
  const time = document.createElement('time');
  time.dateTime = balance.refillAt.toISOString();
  time.textContent = formatInstant(balance.refillAt);
  const left = balance.refillAt.getTime() - Date.now();
  const countdown = document.createElement('span');
  countdown.className = 'countdown';
  countdown.textContent = left > 0 ? text.countdown(formatDuration(left)) : text.refillingNow;
  panel.replaceChildren(text.refillsTo(balance.capacity), ' ', time, ' ', countdown);
}

function formatInstant(date) {
  const today = date.toDateString() === new Date().toDateString();
  const style = today ? { timeStyle: 'long' } : { dateStyle: 'medium', timeStyle: 'long' };
  return new Intl.DateTimeFormat(language, style).format(date);
}

// "3 h 12 min 5 s", "4 min 0 s", "5 s".
function formatDuration(ms) {
  const total = Math.ceil(ms / 1000);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  return [hours && `${hours} h`, (hours || minutes) && `${minutes} min`, `${total % 60} s`]
    .filter(Boolean)
    .join(' ');
}

function formatSize(bytes) {
  return bytes < 1024 ? `${bytes} B` : `${Math.ceil(bytes / 1024)} KB`;
}

// Sends one charged action and takes in the balances its answer carries.
// Resolves to the response's JSON when it was allowed, null otherwise.
async function act(kind, send) {
  busy.add(kind);
  showMessage(messageOf(kind), null);
  render();
  const reply = await send();
  busy.delete(kind);
  const balances = balancesFromHeaders(reply.headers, Date.now());
  apply(balances);
  if (reply.status >= 200 && reply.status < 300) {
    // Spent the last ticket: ask the server how it words the refusal.
    if (Object.entries(balances).some(([k, b]) => b.remaining === 0 && !session?.refusals[k])) {
      refresh();
    }
    return reply.json ?? {};
  }
  if (reply.status === 429) {
    session.refusals[kind] = problemOf(reply);
    saveSession();
    render();
  } else if (reply.status === 401) {
    signOut(problemOf(reply));
  } else {
    showMessage(messageOf(kind), problemOf(reply));
  }
  return null;
}

function signIn() {
  $('#signup').hidden = true;
  $('#account').hidden = false;
  $('#who').textContent = session.email;
  render();
  refresh();
}

// Forgets the session; `problem` says why when the server ended it.
function signOut(problem) {
  session = null;
  saveSession();
  clearTimeout(refreshTimer);
  for (const kind of Object.keys(counters)) delete counters[kind];
  for (const form of document.querySelectorAll('form[data-kind]')) {
    form.reset();
    showMessage(form.querySelector('.message'), null);
  }
  $('#image').dispatchEvent(new Event('change'));
  $('#ai-result').value = '';
  showMessage($('#notice'), problem ?? null);
  $('#account').hidden = true;
  $('#signup').hidden = false;
  render();
}

$('#signup-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const email = $('#email').value.trim();
  const button = event.target.querySelector('button');
  const message = event.target.querySelector('.message');
  button.disabled = true;
  showMessage(message, null);
  const reply = await api('POST', '/api/signup', JSON.stringify({ email }), 'application/json');
  button.disabled = false;
  if (reply.status !== 201 || typeof reply.json?.token !== 'string') {
    showMessage(message, problemOf(reply));
    return;
  }
  session = { token: reply.json.token, uid: reply.json.uid, email, refusals: {} };
  saveSession();
  showMessage($('#notice'), null);
  signIn();
});

$('#sign-out').addEventListener('click', () => signOut());

$('#image').addEventListener('change', () => {
  const preview = $('#preview');
  if (preview.src) URL.revokeObjectURL(preview.src);
  const file = $('#image').files[0];
  preview.hidden = !file;
  if (file) {
    preview.src = URL.createObjectURL(file);
    preview.alt = text.previewOf(file.name);
  } else {
    preview.removeAttribute('src');
  }
  if (!session?.refusals.upload) showMessage(messageOf('upload'), null);
});

$('#upload-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const file = $('#image').files[0];
  if (!file) return;
  // Read now: a file changed on disk since it was chosen fails here, with
  // a message, rather than halfway through the request.
  const bytes = await file.arrayBuffer().catch(() => null);
  if (!bytes) {
    showMessage(messageOf('upload'), { title: text.unreadableTitle, detail: text.unreadable });
    return;
  }
  const stored = await act('upload', () =>
    api('POST', '/api/uploads', bytes, file.type || 'application/octet-stream'),
  );
  if (stored) {
    showMessage(messageOf('upload'), { detail: text.uploaded(file.name, formatSize(file.size)) }, 'ok');
  }
});

$('#ai-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const prompt = $('#prompt').value;
  $('#ai-result').value = '';
  const generated = await act('ai', () =>
    api('POST', '/api/ai/generate', JSON.stringify({ prompt }), 'application/json'),
  );
  if (generated) $('#ai-result').value = generated.result ?? '';
});

for (const button of document.querySelectorAll('.counter button')) {
  button.addEventListener('click', () => {
    const open = button.getAttribute('aria-expanded') !== 'true';
    button.setAttribute('aria-expanded', String(open));
    document.getElementById(button.getAttribute('aria-controls')).hidden = !open;
    render();
  });
}

// The countdowns of revealed counters tick every second.
setInterval(() => document.querySelectorAll('.counter').forEach(renderRefill), 1000);

document.documentElement.lang = text === TEXTS.fr ? 'fr' : 'en';
document.title = text.title;
for (const element of document.querySelectorAll('[data-text]')) {
  element.textContent = text[element.dataset.text];
}
for (const element of document.querySelectorAll('[data-text-label]')) {
  element.setAttribute('aria-label', text[element.dataset.textLabel]);
}
if (session) signIn();
else $('#signup').hidden = false;
