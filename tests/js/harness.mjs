// Starts Loadstar processes for the JS tests: the binary comes from
// LOADSTAR_BIN (set by CTest), every server listens on port 0.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
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
