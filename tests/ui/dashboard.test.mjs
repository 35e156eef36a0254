// The dashboard in headless Chromium against the real daemon and the real test model.
//
// Two copies of the GGUF test model in a temp models folder, an API key, and a memory budget
// (set through the settings page) that fits one of them: pin/unpin change the daemon's state,
// loading the second evicts the first, and that eviction must show up in the page's event
// tail. The SSD cache toggle switches the daemon's SSD tier off and on, and the SSD gauges follow
// the daemon's cache events. Gauges are compared with /admin/api/status. Screenshots go to
// artifacts/ui/.
//
// Env: WUWEI_BIN (default target/debug/wuwei), WUWEI_TEST_MODELS (default .deps/test-models),
// CHROMIUM (default /usr/bin/chromium).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = process.env.WUWEI_BIN ?? path.join(ROOT, 'target/debug/wuwei');
const MODELS = process.env.WUWEI_TEST_MODELS ?? path.join(ROOT, '.deps/test-models');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = path.join(ROOT, 'artifacts/ui');
const KEY = 'dashboard-test-key';
const GGUF = fs.realpathSync(path.join(MODELS, 'SmolLM2-135M-Instruct.Q4_1.gguf'));

let daemon, daemonLog, base, context, page, tmp;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

async function admin(method, route, body) {
  const r = await fetch(`${base}/admin/api${route}`, {
    method,
    headers: { Authorization: `Bearer ${KEY}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await r.json();
  assert.ok(r.ok, `${method} ${route}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

/** Retries `check` (which throws until satisfied) for up to `ms`. */
async function eventually(check, ms = 60_000, what = 'condition') {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      return await check();
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`timed out waiting for ${what}: ${last?.message ?? last}`);
}

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

async function goto(pageName) {
  await page.click(`nav a[data-page="${pageName}"]`);
  await page.waitForSelector(`main[data-page="${pageName}"]`);
}

const model = (id) => admin('GET', '/models').then((j) => j.models.find((m) => m.id === id));

before(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wuwei-ui-'));
  const modelsDir = path.join(tmp, 'models');
  fs.mkdirSync(modelsDir);
  fs.symlinkSync(GGUF, path.join(modelsDir, 'alpha.gguf'));
  fs.symlinkSync(GGUF, path.join(modelsDir, 'beta.gguf'));
  fs.mkdirSync(path.join(tmp, 'home'));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  daemonLog = path.join(SHOTS, 'daemon.log');
  const log = fs.openSync(daemonLog, 'w');
  daemon = spawn(BIN, ['serve', '--port', String(port), '--models', modelsDir, '--api-key', KEY], {
    stdio: ['ignore', log, log],
    env: {
      ...process.env,
      HOME: path.join(tmp, 'home'), // no user config file, no ~/models
      WUWEI_WEIGHTS: 'native', // predictable sizes: no f32 expansion
      WUWEI_KV_RESERVE_TOKENS: '256',
      WUWEI_KV_SSD_DIR: path.join(tmp, 'kv'), // the SSD tier, in a folder of its own
      WUWEI_LOG: 'info',
    },
  });
  await eventually(async () => {
    assert.equal(daemon.exitCode, null, `daemon exited; see ${daemonLog}`);
    const r = await fetch(`${base}/health`);
    assert.ok(r.status === 200 || r.status === 503);
  }, 60_000, 'the daemon to listen');

  context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
    viewport: { width: 1200, height: 900 },
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => console.error('page error:', e));
});

after(async () => {
  await context?.close();
  if (daemon && daemon.exitCode === null) {
    daemon.kill('SIGTERM');
    await new Promise((r) => daemon.once('exit', r));
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('dashboard against the real daemon', async (t) => {
  await t.test('asks for the API key and connects the event stream', async () => {
    await page.goto(base + '/');
    await page.waitForSelector('[data-testid="key-input"]');
    await page.fill('[data-testid="key-input"]', KEY);
    await page.click('[data-testid="key-submit"]');
    await page.waitForSelector('#conn.on', { timeout: 20_000 });
    await page.waitForSelector('[data-testid="gauge-system"]');
  });

  await t.test('models page lists both copies', async () => {
    await goto('models');
    await page.waitForSelector('tr[data-model="alpha"]');
    await page.waitForSelector('tr[data-model="beta"]');
  });

  await t.test('a budget that fits one model, set from the settings page', async () => {
    const alpha = await model('alpha');
    assert.ok(alpha.estimated_memory_bytes > 0, JSON.stringify(alpha));
    const budget = Math.floor(alpha.estimated_memory_bytes * 1.5);
    await goto('settings');
    await page.waitForSelector('[data-testid="budget-input"]');
    await page.fill('[data-testid="budget-input"]', String(budget));
    await page.click('[data-testid="settings-save"]');
    await eventually(async () => {
      const s = await admin('GET', '/settings');
      assert.equal(s.budget_bytes, budget);
    }, 10_000, 'the budget to change');
    const status = await admin('GET', '/status');
    assert.match(await page.textContent('[data-testid="api-key-presence"]'), /^set/);
    assert.equal(await page.textContent('[data-testid="port"]'), `${status.host}:${status.port}`);
    await shot('settings');
  });

  await t.test('the SSD cache toggle switches the daemon\'s SSD tier off and on', async () => {
    await goto('settings');
    const cache = () => admin('GET', '/cache');
    assert.equal((await cache()).available, true);
    assert.equal((await cache()).enabled, true);
    await page.waitForSelector('[data-testid="ssd-toggle"]:not([disabled]):checked');
    assert.match(await page.textContent('[data-testid="ssd-dir"]'), /kv/);
    await page.click('[data-testid="ssd-toggle"]');
    await eventually(async () => assert.equal((await cache()).enabled, false), 10_000, 'the SSD tier off');
    await page.waitForSelector('[data-testid="ssd-toggle"]:not([disabled]):not(:checked)');
    await shot('settings-ssd-off');
    await page.click('[data-testid="ssd-toggle"]');
    await eventually(async () => assert.equal((await cache()).enabled, true), 10_000, 'the SSD tier on');
    await page.waitForSelector('[data-testid="ssd-toggle"]:not([disabled]):checked');
    // Both switches are in the event tail.
    await goto('events');
    await page.waitForSelector('li[data-type="cache_toggled"]');
    assert.equal(await page.locator('li[data-type="cache_toggled"]').count(), 2);
  });

  await t.test('pin and unpin from the models page change the daemon', async () => {
    await goto('models');
    await page.click('tr[data-model="alpha"] button[data-action="pin"]');
    await eventually(async () => {
      const a = await model('alpha');
      assert.equal(a.pinned, true);
      assert.equal(a.state, 'loaded');
    }, 120_000, 'alpha pinned and loaded');
    await page.waitForSelector('tr[data-model="alpha"][data-pinned="true"][data-state="loaded"]', { timeout: 20_000 });
    await page.click('tr[data-model="alpha"] button[data-action="unpin"]');
    await eventually(async () => assert.equal((await model('alpha')).pinned, false), 10_000, 'alpha unpinned');
    await page.waitForSelector('tr[data-model="alpha"][data-pinned="false"]');
  });

  await t.test('loading the second model evicts the first; the page shows the event', async () => {
    await page.click('tr[data-model="beta"] button[data-action="load"]');
    await page.waitForSelector('tr[data-model="beta"][data-state="loaded"]', { timeout: 120_000 });
    await page.waitForSelector('tr[data-model="alpha"][data-state="available"]', { timeout: 20_000 });
    await shot('models');
    await goto('events');
    await page.waitForSelector('li[data-type="model_evicted"][data-model="alpha"][data-reason="budget"]', {
      timeout: 20_000,
    });
    await shot('events');
  });

  await t.test('overview gauges show the status numbers', async () => {
    await goto('overview');
    await eventually(async () => {
      const s = await admin('GET', '/status');
      const attr = (sel, name) => page.getAttribute(sel, name).then(Number);
      assert.equal(await attr('[data-testid="budget"]', 'data-bytes'), s.memory.budget_bytes);
      assert.equal(await attr('[data-testid="gauge-budget"]', 'data-total'), s.memory.budget_bytes);
      assert.equal(await attr('[data-testid="gauge-budget"]', 'data-used'), s.memory.counted_bytes);
      assert.equal(await attr('[data-testid="gauge-system"]', 'data-total'), s.memory.system.total_bytes);
      // System memory moves on its own between two reads: within 5% of total.
      const used = await attr('[data-testid="gauge-system"]', 'data-used');
      assert.ok(Math.abs(used - s.memory.system.used_bytes) < 0.05 * s.memory.system.total_bytes, `${used} vs ${s.memory.system.used_bytes}`);
      assert.deepEqual(s.loaded.map((m) => m.id), ['beta']);
      const beta = s.loaded[0];
      assert.equal(await attr('[data-testid="gauge-model-beta"]', 'data-used'), beta.memory_bytes);
      assert.equal(await attr('[data-testid="gauge-model-beta"] [data-testid="model-weights"]', 'data-bytes'), beta.weights_bytes);
      assert.equal(await page.locator('[data-testid="gauge-model-alpha"]').count(), 0);
      assert.equal(await attr('[data-testid="gauge-ssd"]', 'data-total'), s.ssd_cache.cap_bytes);
      assert.equal(await attr('[data-testid="gauge-ssd"]', 'data-used'), s.ssd_cache.bytes_used);
    }, 20_000, 'the gauges to match /admin/api/status');
    await shot('overview');
  });

  await t.test('SSD gauges follow the cache events as blocks are written and read back', async () => {
    await goto('overview');
    const before = Number(await page.getAttribute('[data-testid="gauge-ssd"]', 'data-stats-seq'));
    // A prompt of a few full blocks: they are written to disk in the background.
    const words = 'river stone light garden winter market letter harbor forest engine window road'.split(' ');
    const prompt = Array.from({ length: 120 }, (_, i) => words[(i * 7) % words.length]).join(' ');
    const complete = () =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: 'beta', prompt, max_tokens: 1, temperature: 0 }),
      }).then(async (r) => {
        const text = await r.text();
        assert.equal(r.status, 200, text);
        return JSON.parse(text);
      });
    await complete();
    const written = await eventually(async () => {
      const c = await admin('GET', '/cache');
      assert.ok(c.writes >= 3 && c.bytes_used > 0, JSON.stringify(c));
      return c;
    }, 60_000, 'blocks on disk');
    // The gauge shows the daemon's numbers, and got them from a cache_stats event.
    await eventually(async () => {
      const attr = (name) => page.getAttribute('[data-testid="gauge-ssd"]', name).then(Number);
      assert.ok((await attr('data-stats-seq')) > before);
      assert.equal(await attr('data-used'), (await admin('GET', '/cache')).bytes_used);
    }, 20_000, 'the SSD gauge to follow the events');
    assert.ok(written.bytes_used > 0);
    // Unloading the model empties its RAM tier; loading it again and sending the prompt
    // reads the blocks back from disk: the hit-rate gauge moves from 0% (the first request
    // found nothing on disk) to 50% (the second found all of it).
    assert.equal(await page.textContent('[data-testid="gauge-ssd-hits"] .value'), '0%');
    await admin('POST', '/models/unload', { model: 'beta' });
    await admin('POST', '/models/load', { model: 'beta' });
    const again = await complete();
    assert.ok(again.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(again.usage));
    await eventually(async () => {
      const c = await admin('GET', '/cache');
      assert.ok(c.hits > 0 && c.hits === c.misses && c.hit_rate === 0.5, JSON.stringify(c));
      assert.equal(await page.getAttribute('[data-testid="gauge-ssd-hits"]', 'data-hit-rate'), '0.5');
      assert.equal(await page.textContent('[data-testid="gauge-ssd-hits"] .value'), '50%');
    }, 20_000, 'the hit-rate gauge');
    await shot('overview-ssd');
  });
});
