// Drives clipserve's web page in Debian's Chromium through playwright-core (no browser
// download): the real binary with the tiny fixture model on a free loopback port, fixture photos
// uploaded through the file input, a query ranked, labels classified. The tiny model has random
// weights, so the page is checked against the API's own answers for the same inputs, not
// against meaning. Saves a screenshot of the ranked results (docs/screenshot.png by default).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const ROOT = resolve(import.meta.dirname, '../..');
const PHOTOS = join(ROOT, 'tests/fixtures/photos');
const MODEL = join(ROOT, 'tests/fixtures/models/tiny');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT || join(ROOT, 'docs/screenshot.png');
const API_KEY = 'browser-test-key';
const GOOD = [
  'pillow_flower.jpg', 'skimage_chelsea.png', 'skimage_coffee.png', 'skimage_rocket.jpg',
  'pillow_hopper.jpg', 'skimage_camera.png', 'skimage_horse.png', 'pillow_flower2.jpg',
];
const BAD = 'pillow_truncated_jpeg.jpg';
const QUERY = 'a red flower in the garden';
const LABELS = ['cat', 'flower', 'rocket', 'coffee cup', 'horse'];

let server;
let base;
let context;
let userDataDir;
const serverLog = [];

function binary() {
  if (process.env.CLIPSERVE_BIN) return process.env.CLIPSERVE_BIN;
  const candidates = ['target/release/clipserve', 'target/debug/clipserve']
    .map((p) => join(ROOT, p))
    .filter(existsSync)
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  assert.ok(candidates.length, 'no clipserve binary: run `cargo build` first (or set CLIPSERVE_BIN)');
  return candidates[0];
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

async function api(path, payload) {
  const response = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + API_KEY },
    body: JSON.stringify(payload),
  });
  const body = await response.json();
  assert.equal(response.status, 200, JSON.stringify(body));
  return body;
}

// The message of an API call that must fail (4xx) with one raw body.
async function apiError(path, body, type) {
  const response = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': type, Authorization: 'Bearer ' + API_KEY },
    body,
  });
  const json = await response.json();
  assert.ok(response.status >= 400 && response.status < 500, `${path}: ${response.status}`);
  assert.ok(json.error?.message, JSON.stringify(json));
  return json.error.message;
}

// Runs in the page, on one element: what decides whether a person can read its text (its box,
// its clipping by any ancestor, whether something covers it, its font size and colour contrast).
function measureReadability(el) {
  const box = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  // The visible part of the box: intersected with every ancestor that clips its overflow.
  let visible = { left: box.left, top: box.top, right: box.right, bottom: box.bottom };
  let opacity = 1;
  for (let a = el; a; a = a.parentElement) {
    const s = getComputedStyle(a);
    opacity *= Number(s.opacity);
    if (a !== el && s.overflow !== 'visible') {
      const r = a.getBoundingClientRect();
      visible = {
        left: Math.max(visible.left, r.left), top: Math.max(visible.top, r.top),
        right: Math.min(visible.right, r.right), bottom: Math.min(visible.bottom, r.bottom),
      };
    }
  }
  // Contrast of the text colour on the first opaque background behind it (WCAG 2 formula).
  const rgb = (c) => c.match(/[\d.]+/g).map(Number);
  let bg = null;
  for (let a = el; a && !bg; a = a.parentElement) {
    const c = rgb(getComputedStyle(a).backgroundColor);
    if (c.length === 3 || c[3] === 1) bg = c.slice(0, 3);
  }
  const luminance = ([r, g, b]) => [r, g, b]
    .map((v) => v / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const [l1, l2] = [luminance(rgb(style.color)), luminance(bg || [255, 255, 255])].sort((a, b) => b - a);
  // What is drawn at a point inside each line of the text (not the remove button, say).
  const range = document.createRange();
  range.selectNodeContents(el);
  const covered = [...range.getClientRects()].filter((r) => {
    const hit = document.elementFromPoint(r.left + Math.min(8, r.width / 2), r.top + r.height / 2);
    return !(hit && (hit === el || el.contains(hit)));
  }).length;
  return {
    width: box.width, height: box.height,
    visibleWidth: visible.right - visible.left, visibleHeight: visible.bottom - visible.top,
    scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
    scrollHeight: el.scrollHeight, clientHeight: el.clientHeight,
    fontSize: parseFloat(style.fontSize), lineHeight: parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.2,
    display: style.display, visibility: style.visibility, opacity,
    contrast: (l1 + 0.05) / (l2 + 0.05), covered,
    viewport: { width: innerWidth, height: innerHeight }, top: box.top, bottom: box.bottom,
  };
}

function assertReadable(m, text) {
  const what = `"${text}" ${JSON.stringify(m)}`;
  assert.notEqual(m.display, 'none', what);
  assert.equal(m.visibility, 'visible', what);
  assert.equal(m.opacity, 1, what);
  assert.ok(m.fontSize >= 11, `font too small: ${what}`);
  // Wide enough for words, not a sliver; tall enough for at least one whole line.
  assert.ok(m.width >= 80, `too narrow: ${what}`);
  assert.ok(m.height >= m.fontSize, `too short: ${what}`);
  // Nothing cut: not by its own overflow (an ellipsis), not by an ancestor's, not by the viewport.
  assert.ok(m.scrollWidth <= m.clientWidth + 1 && m.scrollHeight <= m.clientHeight + 1, `text overflows its box: ${what}`);
  assert.ok(m.visibleWidth >= m.width - 1 && m.visibleHeight >= m.height - 1, `clipped by an ancestor: ${what}`);
  assert.ok(m.top >= 0 && m.bottom <= m.viewport.height, `outside the viewport: ${what}`);
  assert.equal(m.covered, 0, `covered by another element: ${what}`);
  assert.ok(m.contrast >= 4.5, `contrast below WCAG AA: ${what}`);
}

function dataUri(name) {
  const type = name.endsWith('.png') ? 'image/png' : 'image/jpeg';
  return `data:${type};base64,` + readFileSync(join(PHOTOS, name)).toString('base64');
}

before(async () => {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  server = spawn(binary(), ['--model', MODEL, '--addr', `127.0.0.1:${port}`], {
    cwd: ROOT,
    env: { ...process.env, CLIPSERVE_SERVER_API_KEY: API_KEY, CLIPSERVE_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout.on('data', (d) => serverLog.push(String(d)));
  server.stderr.on('data', (d) => serverLog.push(String(d)));
  const deadline = Date.now() + 120_000;
  for (;;) {
    assert.equal(server.exitCode, null, 'clipserve exited:\n' + serverLog.join(''));
    try {
      if ((await fetch(base + '/ready')).ok) break;
    } catch (_) { /* not listening yet */ }
    assert.ok(Date.now() < deadline, 'clipserve not ready in 120 s:\n' + serverLog.join(''));
    await new Promise((r) => setTimeout(r, 100));
  }
  userDataDir = mkdtempSync(join(tmpdir(), 'clipserve-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1100, height: 1000 },
    colorScheme: 'light',
  });
});

after(async () => {
  await context?.close();
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  server?.kill('SIGTERM');
});

test('the page ranks uploaded photos as the API does and classifies them zero-shot', async () => {
  const page = await context.newPage();
  const problems = [];
  // The 401, 422 and 400 this test provokes on purpose are logged by Chromium as failed
  // resources; anything else (a script error, another status) is a problem.
  const provoked = /^Failed to load resource: the server responded with a status of (400|401|422) /;
  page.on('console', (m) => { if (m.type() === 'error' && !provoked.test(m.text())) problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));

  const response = await page.goto(base + '/');
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);

  // The server wants a key: the page says so, then works once it is pasted.
  await page.locator('#model-info', { hasText: 'needs an API key' }).waitFor();
  await page.fill('#api-key', API_KEY);
  await page.click('#key-form button[type=submit]');
  await page.locator('#model-info', { hasText: '512-d' }).waitFor();

  await page.setInputFiles('#file-input', [...GOOD, BAD].map((n) => join(PHOTOS, n)));
  await page.waitForFunction(
    (n) => document.querySelectorAll('#gallery li').length === n && document.body.dataset.pending === '0',
    GOOD.length + 1,
  );
  const bad = page.locator(`#gallery li[data-name="${BAD}"]`);
  assert.match(await bad.getAttribute('class'), /error/);
  // The failed tile shows the API's own reason, and a person can read it: in the DOM is not
  // enough (a banner style once squeezed this caption to 12 px wide, an empty red tile).
  const reason = await apiError('/v1/embed/image', readFileSync(join(PHOTOS, BAD)), 'image/jpeg');
  // (Less the API's item number: every tile is a request of one image.)
  assert.match(reason, /^image 0: .*truncated/);
  const shownReason = reason.replace(/^image 0: /, '');
  const status = bad.locator('.thumb-status');
  assert.equal(await status.innerText(), shownReason);
  await status.scrollIntoViewIfNeeded();
  assertReadable(await status.evaluate(measureReadability), shownReason);

  // Search: the order and the scores shown are the API's for the same images and query.
  await page.fill('#query', QUERY);
  await page.press('#query', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#search-results li').length === n, GOOD.length);
  const shown = await page.$$eval('#search-results li', (lis) =>
    lis.map((li) => ({ name: li.dataset.name, score: Number(li.dataset.score), text: li.querySelector('.score').textContent })));
  const sim = await api('/v1/similarity', { images: GOOD.map(dataUri), texts: [QUERY] });
  const expected = GOOD.map((name, i) => ({ name, score: sim.scores[i][0] }))
    .sort((a, b) => b.score - a.score);
  assert.deepEqual(shown.map((s) => s.name), expected.map((e) => e.name));
  for (const [s, e] of shown.map((s, i) => [s, expected[i]])) {
    assert.ok(Math.abs(s.score - e.score) < 1e-5, `${s.name}: page ${s.score}, API ${e.score}`);
    assert.equal(s.text, e.score.toFixed(4));
  }
  assert.match(await page.locator('#search-status').innerText(), /1 not embedded/);
  await page.screenshot({ path: SCREENSHOT, fullPage: true });

  // Zero-shot: keyboard to the tab, labels edited, the API's probabilities shown per image.
  await page.focus('#tab-search');
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.getAttribute('#tab-zeroshot', 'aria-selected'), 'true');
  assert.ok(await page.isVisible('#panel-zeroshot'));
  await page.fill('#labels', LABELS.join('\n'));
  await page.click('#classify-button');
  await page.waitForFunction((n) => document.querySelectorAll('#classify-results article').length === n, GOOD.length);
  const cls = await api('/v1/classify', { images: GOOD.map(dataUri), labels: LABELS });
  for (const [i, name] of GOOD.entries()) {
    const labels = await page.$$eval(`#classify-results article[data-name="${name}"] li`, (lis) =>
      lis.map((li) => ({ label: li.dataset.label, probability: Number(li.dataset.probability) })));
    const want = cls.results[i].labels;
    assert.deepEqual(labels.map((l) => l.label), want.map((l) => l.label), name);
    labels.forEach((l, j) => assert.ok(Math.abs(l.probability - want[j].probability) < 1e-6, `${name} ${l.label}`));
  }

  // An API error is shown with its message.
  await page.fill('#template', 'no placeholder');
  await page.click('#classify-button');
  await page.locator('#error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#error-message').innerText(), /must contain `\{\}`/);

  assert.deepEqual(problems, [], 'console errors on the page');
  const size = statSync(SCREENSHOT).size;
  assert.ok(size < 512 * 1024, `screenshot is ${size} bytes`);
});
