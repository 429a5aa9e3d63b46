// End-to-end walk through the wahook dashboard in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core): log in, see a webhook posted during the test appear in the live
// feed (and the contact filter work), see the QR image after a qrcode.updated, retry a dead
// letter, and run the playground. Started by test_dashboard_e2e.py with the server's addresses
// in the environment; prints one JSON line per step and exits non-zero on the first failure.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error('missing environment variable ' + name);
  return v;
};

const DASH_URL = env('DASH_URL');           // http://127.0.0.1:PORT/dashboard/
const ADMIN_TOKEN = env('ADMIN_TOKEN');
const WEBHOOK_URL = env('WEBHOOK_URL');     // http://127.0.0.1:PORT/api/whatsapp/webhook
const WEBHOOK_TOKEN = env('WEBHOOK_TOKEN');
const DEAD_EVENT_ID = env('DEAD_EVENT_ID');
const FIXTURES = env('FIXTURES_DIR');       // .../fixtures/evolution
const ARTIFACTS = env('ARTIFACTS_DIR');     // screenshots on failure
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 15000;

function log(step, extra) {
  process.stdout.write(JSON.stringify(Object.assign({ step }, extra || {})) + '\n');
}

function fixture(name) {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, name + '.json'), 'utf8'));
}

async function postWebhook(obj) {
  const r = await fetch(WEBHOOK_URL, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'x-webhook-token': WEBHOOK_TOKEN },
    body: JSON.stringify(obj),
  });
  const body = await r.json();
  if (r.status !== 200 || body.status !== 'accepted') {
    throw new Error('webhook not accepted: ' + r.status + ' ' + JSON.stringify(body));
  }
  return body.id;
}

function textEvent(id, text, phone) {
  const ev = fixture('messages-upsert-text');
  ev.data.key.id = id;
  ev.data.key.remoteJid = phone + '@s.whatsapp.net';
  delete ev.data.key.remoteJidAlt;
  ev.data.message.conversation = text;
  return ev;
}

async function main() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error('Chromium not found at ' + CHROMIUM + ' (apt-get install -y chromium)');
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wahook-e2e-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 1600 },
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  try {
    // -- login: a wrong token is refused, the right one opens the app with a session cookie.
    await page.goto(DASH_URL);
    await page.waitForSelector('#login-form', { state: 'visible' });
    await page.fill('#login-token', 'not-the-token');
    await page.click('#login-submit');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Wrong token'));
    await page.fill('#login-token', ADMIN_TOKEN);
    await page.click('#login-submit');
    await page.waitForSelector('#app', { state: 'visible' });
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'wahook_session');
    if (!session) throw new Error('no session cookie after login: ' + JSON.stringify(cookies));
    if (!session.httpOnly || session.sameSite !== 'Strict') {
      throw new Error('session cookie flags: ' + JSON.stringify(session));
    }
    if (session.value.includes(ADMIN_TOKEN)) throw new Error('the cookie holds the token');
    const jsCookies = await page.evaluate(() => document.cookie);
    if (jsCookies.includes('wahook_session')) throw new Error('the cookie is visible to scripts');
    log('login', { cookie: { httpOnly: session.httpOnly, sameSite: session.sameSite } });

    // -- live feed: a webhook posted now shows up.
    await page.waitForFunction(() => document.getElementById('feed-status').textContent === 'live');
    const stamp = 'e2e-' + Date.now();
    const liveId = await postWebhook(textEvent(stamp + '-1', 'Hola desde el e2e ' + stamp, '34600888001'));
    const row = page.locator('#feed li[data-event-id="' + liveId + '"]');
    await row.waitFor({ state: 'visible' });
    const rowText = await row.innerText();
    if (!rowText.includes('Hola desde el e2e ' + stamp) || !rowText.includes('34600888001')) {
      throw new Error('feed row text: ' + rowText);
    }
    // Its details show the redacted body.
    await row.click();
    const details = await row.locator('pre').innerText();
    if (!details.includes('[redacted]') || details.includes('B1E2C3D4-A5F6')) {
      throw new Error('feed details are not redacted: ' + details.slice(0, 400));
    }
    log('feed', { id: liveId });

    // -- contact filter: only the chosen contact's events arrive.
    await page.fill('#filter-contact', '34600888002');
    await page.click('#feed-filter button[type="submit"]');
    await page.waitForFunction(() => document.getElementById('feed-status').textContent === 'live');
    const otherId = await postWebhook(textEvent(stamp + '-2', 'para otro contacto', '34600888001'));
    const mineId = await postWebhook(textEvent(stamp + '-3', 'para el filtrado', '34600888002'));
    await page.locator('#feed li[data-event-id="' + mineId + '"]').waitFor({ state: 'visible' });
    if (await page.locator('#feed li[data-event-id="' + otherId + '"]').count() !== 0) {
      throw new Error('the contact filter let another contact through');
    }
    await page.fill('#filter-contact', '');
    await page.click('#feed-filter button[type="submit"]');
    log('filter', { shown: mineId, hidden: otherId });

    // -- QR: after a qrcode.updated the instance shows a scannable image and its age.
    const qr = fixture('qrcode-updated');
    qr.instance = 'e2e-bot';
    qr.data.qrcode.instance = 'e2e-bot';
    await postWebhook(qr);
    const img = page.locator('.instance[data-instance="e2e-bot"] img.qr');
    await img.waitFor({ state: 'visible' });
    const natural = await img.evaluate((i) => (i.complete ? i.naturalWidth : 0));
    if (natural < 100) throw new Error('the QR image did not decode (naturalWidth ' + natural + ')');
    const src = await img.getAttribute('src');
    if (src !== qr.data.qrcode.base64) throw new Error('the QR image is not the latest code');
    const age = await page.locator('.instance[data-instance="e2e-bot"] [data-qr-at]').innerText();
    if (!/\d+ s|min/.test(age)) throw new Error('no QR age: ' + age);
    log('qr', { width: natural, age });

    // -- dead letter: listed with its error, Retry puts it back (the handler succeeds now).
    await page.click('.tab[data-tab="dead"]');
    const deadRow = page.locator('#failures tr[data-event-id="' + DEAD_EVENT_ID + '"]');
    await deadRow.waitFor({ state: 'visible' });
    const deadText = await deadRow.innerText();
    if (!deadText.includes('fails once on purpose')) throw new Error('dead row: ' + deadText);
    await deadRow.locator('button', { hasText: 'Retry' }).click();
    await page.waitForFunction((id) => document.getElementById('failures-message').textContent
      .includes('Retry of event #' + id + ' done'), DEAD_EVENT_ID);
    await deadRow.waitFor({ state: 'detached', timeout: 20000 });
    log('retry', { id: Number(DEAD_EVENT_ID) });

    // -- playground: an example runs through the scripts as a dry run.
    await page.selectOption('#example', 'messages-upsert-text.json');
    await page.waitForFunction(() => document.getElementById('try-event').value.includes('messages.upsert'));
    await page.fill('#try-state', '{"n": 7}');
    await page.click('#try-run');
    await page.waitForSelector('#try-summary [data-result="ok"]');
    const actions = await page.locator('#try-actions').innerText();
    if (!actions.includes('send_text to 34600111222') || !actions.includes('hola 7')) {
      throw new Error('playground actions: ' + actions);
    }
    const output = JSON.parse(await page.locator('#try-output').innerText());
    if (output.event !== 'messages.upsert' || !output.handled) {
      throw new Error('playground output: ' + JSON.stringify(output).slice(0, 400));
    }
    // A broken event is reported, not run.
    await page.fill('#try-event', '{"event": ');
    await page.click('#try-run');
    await page.waitForFunction(() => document.getElementById('try-summary').textContent.includes('not valid JSON'));
    log('playground', { actions: output.outcome.actions.length });

    if (pageErrors.length) throw new Error('errors in the page: ' + pageErrors.join('; '));
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    log('done');
  } catch (e) {
    try {
      await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true });
    } catch (e2) { /* the page may be gone */ }
    throw e;
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write('E2E FAILED: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
