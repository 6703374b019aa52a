// Starts Loadstar processes for the JS tests: the binary comes from
// LOADSTAR_BIN (set by CTest), every server listens on port 0.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const bin = process.env.LOADSTAR_BIN ?? new URL('../../build/release/loadstar', import.meta.url).pathname;

export function scratch() {
  const dir = mkdtempSync(join(tmpdir(), 'loadstar-js-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function synthModel(dir, name, size) {
  const out = join(dir, name);
  const r = spawnSync(bin, ['model', 'synth', '--size', size, '-o', out], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`model synth failed: ${r.stderr}`);
  return out;
}

// Starts `loadstar engine-sim` and resolves once /health answers 200.
export async function startEngineSim(dir, modelDir, args = []) {
  const portFile = join(dir, `engine-${Date.now()}-${Math.random()}.port`);
  const child = spawn(bin, ['engine-sim', '--model', modelDir, '--port', '0', '--port-file', portFile, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`engine-sim exited: ${log}`);
    if (existsSync(portFile)) {
      const port = Number(readFileSync(portFile, 'utf8').trim());
      try {
        const r = await fetch(`http://127.0.0.1:${port}/health`);
        if (r.status === 200) return { port, child, stop: () => child.kill('SIGTERM') };
      } catch {
        // not listening yet
      }
    }
    await sleep(20);
  }
  child.kill('SIGKILL');
  throw new Error(`engine-sim did not become healthy: ${log}`);
}

// Starts `loadstar up -f FILE` on ports 0 and resolves once `service` has
// `replicas` ready replicas (`token`: the admin API's, when it has one).
export async function startUp(dir, yaml, service, replicas, args = [], { token } = {}) {
  const file = join(dir, `up-${Date.now()}.yaml`);
  writeFileSync(file, yaml);
  const child = spawn(bin, ['up', '-f', file, '--port', '0', '--admin-port', '0', '--data-dir', join(dir, 'var'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const deadline = Date.now() + 30_000;
  let port, adminPort;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`loadstar up exited: ${out}`);
    port ??= out.match(/OpenAI API: http:\/\/127\.0\.0\.1:(\d+)\/v1/)?.[1];
    adminPort ??= out.match(/admin API: +http:\/\/127\.0\.0\.1:(\d+)\//)?.[1];
    if (port && adminPort) {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const r = await fetch(`http://127.0.0.1:${adminPort}/api/v1/replicas`, { headers });
      const items = (await r.json()).items.filter((x) => x.service === service && x.state === 'Ready');
      if (items.length === replicas) {
        return { port: Number(port), adminPort: Number(adminPort), child, stop: () => child.kill('SIGINT') };
      }
    }
    await sleep(20);
  }
  child.kill('SIGKILL');
  throw new Error(`loadstar up did not get ready: ${out}`);
}
