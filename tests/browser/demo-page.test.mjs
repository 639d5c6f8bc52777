// The demo's page in a real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core), used as a person would: sign up, spend every
// ticket while the counters follow, be refused, reload, see a refill.
//
// Run it from tests/browser with `npm ci && node --test` (scripts/test.sh
// does). Screenshots go to target/browser-screenshots/; with
// UPDATE_DOCS_SCREENSHOT=1 the one of the upload counter at zero also
// replaces docs/screenshot-upload-at-zero.png, the picture README shows.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { buildDemo, Demo, REPO } from './demo-server.mjs';
import { landscapePng } from './png.mjs';

const SCREENSHOTS = join(REPO, 'target', 'browser-screenshots');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// The machine is offline: Chromium's own background traffic is turned off.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
// The longest any step waits for the page.
const STEP_TIMEOUT_MS = 10_000;
// With --refill-period 3s the counter is back well within this.
const REFILL_TIMEOUT_MS = 15_000;

let executable;
let browser;
const demos = [];

before(async () => {
  rmSync(SCREENSHOTS, { recursive: true, force: true });
  mkdirSync(SCREENSHOTS, { recursive: true });
  executable = buildDemo();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await Promise.all(demos.map((demo) => demo.stop()));
});

// Starts a demo whose log goes to <name>.log beside the screenshots.
async function startDemo(name, args) {
  const demo = await Demo.start(executable, args, join(SCREENSHOTS, `${name}.log`));
  demos.push(demo);
  return demo;
}

// Opens the demo's page in a fresh browser profile whose language is
// `locale` and runs `steps` on it. A failing step leaves a screenshot named
// after `name`; a script error on the page fails the test.
async function onPage(demo, locale, name, steps) {
  const context = await browser.newContext({
    baseURL: demo.base,
    locale,
    viewport: { width: 760, height: 960 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const scriptErrors = [];
  page.on('pageerror', (error) => scriptErrors.push(error));
  const failedRequests = [];
  page.on('requestfailed', (request) => {
    failedRequests.push(`${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
  });
  try {
    await page.goto('/');
    await steps(page);
    assert.deepEqual(scriptErrors, [], 'the page threw');
  } catch (error) {
    await screenshot(page, `${name}-failure`).catch(() => {});
    if (failedRequests.length) error.message += `\nfailed requests:\n${failedRequests.join('\n')}`;
    throw error;
  } finally {
    await context.close();
  }
}

function screenshot(page, name) {
  const path = join(SCREENSHOTS, `${name}.png`);
  return page.screenshot({ path, fullPage: true }).then(() => path);
}

// Waits until the counter reads exactly `name`, e.g. "Upload tickets 4/5".
function counter(page, name) {
  return page.getByRole('button', { name, exact: true }).waitFor();
}

// Clicks `button` and returns the response of the request it sends to `path`.
async function responseTo(page, path, button) {
  const [response] = await Promise.all([page.waitForResponse(`**${path}`), button.click()]);
  return response;
}

function image(n) {
  const skies = [
    [[122, 178, 232], [250, 214, 165]],
    [[64, 110, 190], [240, 170, 150]],
    [[150, 200, 235], [255, 240, 200]],
    [[40, 60, 120], [230, 120, 90]],
    [[90, 160, 210], [200, 230, 250]],
  ];
  const [top, bottom] = skies[(n - 1) % skies.length];
  return { name: `photo-${n}.png`, mimeType: 'image/png', buffer: landscapePng(240, 150, top, bottom) };
}

test('a user spends every ticket, is refused, finds the same counts after a reload, and sees errors as messages', async () => {
  const demo = await startDemo('demo-24h', []);
  await onPage(demo, 'en-US', 'spend', async (page) => {
    await page.getByLabel('Email', { exact: true }).fill('ada@example.com');
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.locator('#who', { hasText: 'ada@example.com' }).waitFor();
    await counter(page, 'Upload tickets 5/5');
    await counter(page, 'AI tickets 3/3');

    // Clicking a counter reveals the exact refill time and a live countdown.
    await page.getByRole('button', { name: 'Upload tickets 5/5' }).click();
    const refill = page.locator('#refill-upload');
    await refill.filter({ hasText: 'Back to 5 at' }).waitFor();
    const refillAt = Date.parse(await refill.locator('time').getAttribute('datetime'));
    const hoursAhead = (refillAt - Date.now()) / 3_600_000;
    assert.ok(hoursAhead > 23.9 && hoursAhead <= 24, `refill in ${hoursAhead} h, not 24 h`);
    const countdown = refill.locator('.countdown');
    const shown = await countdown.textContent();
    assert.match(shown, /^in 2[34] h \d+ min \d+ s$/);
    await page.waitForFunction(
      (before) => document.querySelector('#refill-upload .countdown').textContent !== before,
      shown,
    );

    // Five uploads: the counter follows each answer down to zero.
    const upload = page.getByRole('button', { name: 'Upload', exact: true });
    const uploadMessage = page.locator('#upload-form .message');
    for (let n = 1; n <= 5; n++) {
      await page.getByLabel('Image', { exact: true }).setInputFiles(image(n));
      await page.getByRole('img', { name: `Preview of photo-${n}.png` }).waitFor();
      const response = await responseTo(page, '/api/uploads', upload);
      assert.equal(response.status(), 201);
      assert.equal(response.request().headers()['accept-language'], 'en-US');
      await counter(page, `Upload tickets ${5 - n}/5`);
      if (n < 5) await uploadMessage.filter({ hasText: `Uploaded photo-${n}.png` }).waitFor();
    }

    // At zero the button is disabled and the server's refusal is shown, in
    // the browser's language, before any request is refused.
    await uploadMessage
      .filter({ hasText: 'No upload tickets left' })
      .filter({ hasText: 'You have used all 5 upload tickets. They refill' })
      .waitFor();
    await page.getByRole('button', { name: 'Upload', exact: true, disabled: true }).waitFor();
    await counter(page, 'Upload tickets 0/5');
    const atZero = await screenshot(page, 'upload-at-zero');
    if (process.env.UPDATE_DOCS_SCREENSHOT === '1') {
      copyFileSync(atZero, join(REPO, 'docs', 'screenshot-upload-at-zero.png'));
    }

    // The three AI tickets, then a refusal.
    const generate = page.getByRole('button', { name: 'Generate' });
    for (let n = 1; n <= 3; n++) {
      await page.getByLabel('Prompt', { exact: true }).fill(`a lighthouse at dawn, take ${n}`);
      const response = await responseTo(page, '/api/ai/generate', generate);
      assert.equal(response.status(), 200);
      await counter(page, `AI tickets ${3 - n}/3`);
      await page.locator('#ai-result', { hasText: `lighthouse at dawn, take ${n}` }).waitFor();
    }
    await page.locator('#ai-form .message', { hasText: 'No AI tickets left' }).waitFor();
    await page.getByRole('button', { name: 'Generate', disabled: true }).waitFor();
    await screenshot(page, 'both-at-zero');

    // A reload resumes the session with the server's counts.
    await page.reload();
    await page.locator('#who', { hasText: 'ada@example.com' }).waitFor();
    await counter(page, 'Upload tickets 0/5');
    await counter(page, 'AI tickets 0/3');
    await uploadMessage.filter({ hasText: 'No upload tickets left' }).waitFor();
    await page.getByRole('button', { name: 'Upload', exact: true, disabled: true }).waitFor();
    await page.getByRole('button', { name: 'Generate', disabled: true }).waitFor();
    await screenshot(page, 'after-reload');

    // A token the server rejects (401) gives a message and the sign-up form.
    await page.evaluate(() => {
      const session = JSON.parse(localStorage.getItem('tower-tickets-demo'));
      localStorage.setItem(
        'tower-tickets-demo',
        JSON.stringify({ ...session, token: 'not-a-token' }),
      );
    });
    await page.reload();
    await page.getByRole('alert').filter({ hasText: 'Sign-in required' }).waitFor();
    await page.getByRole('button', { name: 'Sign up' }).waitFor();
    await screenshot(page, 'signed-out');

    // With the server gone, the page says so.
    await demo.stop();
    await page.getByLabel('Email', { exact: true }).fill('ada@example.com');
    await page.getByRole('button', { name: 'Sign up' }).click();
    await page.locator('#signup .message', { hasText: 'No answer from the server.' }).waitFor();
    await screenshot(page, 'server-gone');
  });
});

test('in French, a refusal is in French and the counter comes back with --refill-period 3s', async () => {
  const demo = await startDemo('demo-3s', ['--refill-period', '3s']);
  await onPage(demo, 'fr-FR', 'refill', async (page) => {
    await page.getByLabel('E-mail', { exact: true }).fill('zoe@example.fr');
    await page.getByRole('button', { name: "S'inscrire" }).click();
    await counter(page, "Tickets d'envoi 5/5");
    await counter(page, 'Tickets IA 3/3');

    // Tickets refill every 3 s, maybe while they are being spent: upload
    // until the page shows the refusal (at zero, or on a 429).
    await page.getByLabel('Image', { exact: true }).setInputFiles(image(1));
    const upload = page.getByRole('button', { name: 'Envoyer', exact: true });
    const refusal = page
      .locator('#upload-form .message')
      .filter({ hasText: "Plus de tickets d'envoi" })
      .filter({ hasText: "Vous avez utilisé vos 5 tickets d'envoi. Ils seront rechargés" });
    for (let attempt = 0; attempt < 20; attempt++) {
      const response = await responseTo(page, '/api/uploads', upload);
      const atZero = /r=0;/.test(response.headers().ratelimit ?? '');
      // A refill may come before the page has read the refusal: go on then.
      if (atZero && (await refusal.waitFor({ timeout: 2_000 }).then(() => true, () => false))) {
        break;
      }
    }
    await refusal.waitFor();
    await page.getByRole('button', { name: 'Envoyer', exact: true, disabled: true }).waitFor();
    await screenshot(page, 'refused-fr');

    // When the refill is due the page reads the balances again by itself.
    await page
      .getByRole('button', { name: "Tickets d'envoi 5/5", exact: true })
      .waitFor({ timeout: REFILL_TIMEOUT_MS });
    await page.getByRole('button', { name: 'Envoyer', exact: true, disabled: false }).waitFor();
    await refusal.waitFor({ state: 'detached' });
    await screenshot(page, 'refilled-fr');
  });
});
