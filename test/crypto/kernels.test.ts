// Kernel selection: CPUID dispatch, KMSDISK_XTS_KERNEL forcing, setKernel, and a CPU without
// AES-NI (simulated with the addon's KMSDISK_CPU_MASK testing aid) getting the portable kernel.
// Each scenario runs in a child process because the choice is made when the addon loads.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { activeKernel, cpuFeatures, kernelSupported, setKernel } from '../../src/crypto/index.js';
import { addonPath } from '../../src/crypto/native.js';

const dir = mkdtempSync(join(tmpdir(), 'kmsdisk-kernels-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const script = join(dir, 'probe.cjs');
writeFileSync(
  script,
  `
const crypto = require('node:crypto');
let out;
try {
  const a = require(${JSON.stringify(addonPath)});
  const initial = a.activeKernel();
  const key = crypto.randomBytes(64);
  const slot = a.importKey(Buffer.from(key));
  const pt = crypto.randomBytes(4096 * 3);
  const ct = Buffer.alloc(pt.length);
  a.encryptSectors(slot, pt, ct, 4096, 77n, 8n);
  let ok = true;
  for (let i = 0; i < 3; i++) {
    const iv = Buffer.alloc(16); iv.writeBigUInt64LE(77n + 8n * BigInt(i));
    const c = crypto.createCipheriv('aes-256-xts', key, iv);
    ok = ok && c.update(pt.subarray(i * 4096, (i + 1) * 4096)).equals(ct.subarray(i * 4096, (i + 1) * 4096));
  }
  const setErrors = {};
  for (const k of ['aesni', 'vaes', 'portable']) {
    try { a.setKernel(k); setErrors[k] = null; } catch (e) { setErrors[k] = e.code; }
  }
  out = { loaded: true, kernel: initial, matchesNode: ok, features: a.cpuFeatures(), setErrors };
} catch (e) {
  out = { loaded: false, name: e.constructor.name, code: e.code, message: e.message };
}
process.stdout.write(JSON.stringify(out));
`,
);

function probe(env: Record<string, string>): Record<string, unknown> {
  const childEnv: Record<string, string | undefined> = { ...process.env, KMSDISK_XTS_KERNEL: undefined, KMSDISK_CPU_MASK: undefined, ...env };
  return JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8', env: childEnv as NodeJS.ProcessEnv, timeout: 30_000 })) as Record<string, unknown>;
}

describe('kernel selection', () => {
  it('picks VAES on this CPU (AES-NI, VAES, VPCLMULQDQ, AVX2) by CPUID', () => {
    const f = cpuFeatures();
    expect(f.aesni && f.vaes && f.vpclmulqdq && f.avx2).toBe(true);
    expect(probe({}).kernel).toBe('vaes');
    expect(['aesni', 'vaes', 'portable'].every((k) => kernelSupported(k as 'aesni'))).toBe(true);
  });

  it.each(['aesni', 'vaes', 'portable'])('KMSDISK_XTS_KERNEL=%s forces that kernel, and it matches node:crypto', (k) => {
    const r = probe({ KMSDISK_XTS_KERNEL: k });
    expect(r).toMatchObject({ loaded: true, kernel: k, matchesNode: true });
  });

  it('a CPU without AES-NI loads the addon, runs the portable kernel correctly, and refuses aesni/vaes with KMSDISK_ERR_NO_AESNI', () => {
    const r = probe({ KMSDISK_CPU_MASK: 'noaesni' });
    expect(r).toMatchObject({
      loaded: true,
      kernel: 'portable',
      matchesNode: true,
      setErrors: { aesni: 'KMSDISK_ERR_NO_AESNI', vaes: 'KMSDISK_ERR_NO_AESNI', portable: null },
    });
    expect((r.features as { aesni: boolean }).aesni).toBe(false);
  });

  it('a CPU with AES-NI but no VAES falls back to the aesni kernel', () => {
    const r = probe({ KMSDISK_CPU_MASK: 'novaes' });
    expect(r).toMatchObject({ loaded: true, kernel: 'aesni', matchesNode: true, setErrors: { aesni: null, vaes: 'KMSDISK_ERR_NO_AESNI', portable: null } });
  });

  it('forcing an unsupported kernel by environment fails the load with KMSDISK_ERR_NO_AESNI', () => {
    expect(probe({ KMSDISK_CPU_MASK: 'noaesni', KMSDISK_XTS_KERNEL: 'aesni' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_NO_AESNI' });
    expect(probe({ KMSDISK_CPU_MASK: 'novaes', KMSDISK_XTS_KERNEL: 'vaes' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_NO_AESNI' });
    expect(probe({ KMSDISK_XTS_KERNEL: 'sse9' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
  });

  it('setKernel switches the active kernel in this process', () => {
    for (const k of ['portable', 'aesni', 'vaes'] as const) {
      setKernel(k);
      expect(activeKernel()).toBe(k);
    }
  });
});
