// The web dashboard in a real browser: Debian's Chromium, driven headless by
// playwright-core, against a running `loadstar up`. Pages render with real
// data, a killed replica shows up, the GPU map matches the replicas' own
// placement, and an admin API with a token asks for it. Screenshots go to
// $LOADSTAR_ARTIFACTS/dashboard (CTest: build/release/test-artifacts).
//
// Without Chromium the test is skipped, unless LOADSTAR_REQUIRE_BROWSER=1
// (scripts/test.sh sets it; scripts/setup.sh installs Chromium).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { scratch, startUp } from './harness.mjs';

const chromiumPath = ['chromium', 'chromium-browser', 'google-chrome']
  .map((name) => spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).stdout.trim())
  .find((path) => path);
const required = process.env.LOADSTAR_REQUIRE_BROWSER === '1';
const skip = !chromiumPath && !required ? 'no Chromium on the PATH (scripts/setup.sh installs it)' : false;

const key = 'sk-test-dashboard-key-0001';  // its SHA-256 below
const yaml = `apiVersion: loadstar.dev/v1alpha1
kind: Model
metadata: {name: tiny}
spec: {source: "synth://tiny", size: 16Mi}
---
apiVersion: loadstar.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec:
  model: tiny
  replicas: 2
  engine: {name: engine-sim, args: ["--time-scale", "10"]}
  resources: {gpu: {fraction: 0.5}}
---
apiVersion: loadstar.dev/v1alpha1
kind: Node
metadata: {name: box}
spec:
  cpu: 8
  memory: 32Gi
  gpus: [{model: L4, memory: 24Gi, count: 2}]
---
apiVersion: loadstar.dev/v1alpha1
kind: Tenant
metadata: {name: team-a}
spec:
  apiKeys: [{name: ci, sha256: 11b36e2dd85361c896eeac2803a51c87cf319591c8752ffeed50a5951d7b46a1}]
  limits: {requestsPerMinute: 600}
`;

const artifacts = join(process.env.LOADSTAR_ARTIFACTS ?? join(process.cwd(), 'test-artifacts'), 'dashboard');
let tmp, browser, page;
const problems = [];  // console errors and page errors (a CSP violation is one)

before(async () => {
  if (skip) return;
  assert.ok(chromiumPath, 'LOADSTAR_REQUIRE_BROWSER=1 but no Chromium on the PATH');
  mkdirSync(artifacts, { recursive: true });
  tmp = scratch();
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: chromiumPath,
    // Chromium refuses to run as root with its sandbox (CI runs as root).
    args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
  });
});

after(async () => {
  await browser?.close();
  tmp?.cleanup();
});

async function open(url) {
  await page?.close();  // the last test's page polls a server that is gone
  page = await browser.newPage({ viewport: { width: 1300, height: 900 } });
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(url);
}

async function shoot(name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

// The text of `selector` once `accept` takes it (polls; the page refreshes
// every two seconds).
async function waitText(selector, accept, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => undefined);
    if (last !== undefined && accept(last)) return last;
    await page.waitForTimeout(200);
  }
  assert.fail(`${selector}: still '${last}' after ${timeout} ms`);
}

async function admin(up, path) {
  const r = await fetch(`http://127.0.0.1:${up.adminPort}${path}`);
  assert.equal(r.status, 200);
  return r.json();
}

test('the pages show the running system, a killed replica and the GPU map', { skip }, async () => {
  const up = await startUp(tmp.dir, yaml, 'chat', 2);
  try {
    await open(`http://127.0.0.1:${up.adminPort}/`);
    // Overview: the service, its replicas, then the traffic it served.
    await waitText('#replicas-ready .value', (t) => t === '2 / 2');
    for (let i = 0; i < 6; i++) {
      const r = await fetch(`http://127.0.0.1:${up.port}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` },
        body: JSON.stringify({ model: 'chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
      });
      assert.equal(r.status, 200, await r.text());
    }
    await waitText('tr[data-service="chat"] td:nth-child(4)', (t) => Number(t) > 0);
    await shoot('overview');

    // The GPU map: each replica's half card where `get replicas` says it is.
    await page.goto(`http://127.0.0.1:${up.adminPort}/#/gpus`);
    await page.locator('[data-holder]').first().waitFor({ timeout: 10_000 });
    const shown = await page.$$eval('[data-holder]', (els) => els.map((el) => ({
      name: el.dataset.holder,
      node: el.closest('[data-node]').dataset.node,
      device: el.closest('[data-device]').dataset.device,
      width: el.style.width,
    })));
    const replicas = (await admin(up, '/api/v1/replicas')).items;
    assert.equal(shown.length, replicas.length);
    for (const r of replicas) {
      const cell = shown.find((s) => s.name === r.name);
      assert.ok(cell, `${r.name} is not on the GPU map`);
      assert.equal(`${cell.node}/${cell.device}`, `${r.node}/${r.devices.split(':')[0]}`);
      assert.equal(cell.width, '50%');
    }
    await shoot('gpus');

    // A replica killed: the service page shows it restarted, and why.
    await page.goto(`http://127.0.0.1:${up.adminPort}/#/service/chat`);
    await waitText('tr[data-replica="chat-0"] td:nth-child(2)', (t) => t === 'Ready');
    await waitText('tr[data-revision="1"] td:nth-child(7)', (t) => Number(t) > 0);  // its traffic
    const victim = replicas.find((r) => r.name === 'chat-0');
    process.kill(victim.pid, 'SIGKILL');
    await waitText('tr[data-replica="chat-0"] td:nth-child(6)', (t) => Number(t) >= 1);
    await waitText('main', (t) => t.includes('EngineExited'));
    await shoot('service-after-kill');

    // Tenants: the requests the tenant's key made, from the usage ledger.
    await page.goto(`http://127.0.0.1:${up.adminPort}/#/tenants`);
    await waitText('tr[data-tenant="team-a"] td:nth-child(2)', (t) => t === '6');
    await shoot('tenants');
    await page.goto(`http://127.0.0.1:${up.adminPort}/#/queues`);
    await page.locator('tr[data-queue]').first().waitFor({ timeout: 10_000 });
    await shoot('queues');
    assert.deepEqual(problems, []);
  } finally {
    up.stop();
  }
});

test('an admin API with a token asks for it, and refuses a wrong one', { skip }, async () => {
  const own = scratch();
  const tokenFile = join(own.dir, 'token');
  writeFileSync(tokenFile, 'dashboard-test-token-0123456789abcdef\n');
  const up = await startUp(own.dir, yaml, 'chat', 2, ['--token-file', tokenFile],
    { token: 'dashboard-test-token-0123456789abcdef' });
  try {
    problems.length = 0;
    await open(`http://127.0.0.1:${up.adminPort}/`);
    await page.locator('#login').waitFor({ state: 'visible', timeout: 10_000 });
    assert.equal(await page.locator('tr[data-service]').count(), 0);
    await page.fill('#token', 'not-the-token');
    await page.click('#login button');
    await waitText('#login-error', (t) => t.includes('not accepted'));
    await page.fill('#token', 'dashboard-test-token-0123456789abcdef');
    await page.click('#login button');
    await waitText('tr[data-service="chat"] td:nth-child(3)', (t) => t.trim() === '2 / 2');
    await shoot('signed-in');
    // The browser's 401s are the only errors it logged.
    assert.ok(problems.every((p) => p.includes('401')), problems.join('\n'));
  } finally {
    up.stop();
    own.cleanup();
  }
});
