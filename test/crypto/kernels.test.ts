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
import { ALL_KERNELS, cpuHasAvx512 } from './helpers.js';

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
  for (const k of ['aesni', 'vaes', 'vaes512', 'portable']) {
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
  // The parent's KMSDISK_CPU_MASK is passed on unless a test sets its own, so that running the
  // suite with KMSDISK_CPU_MASK=noavx512 checks the AVX2-only expectations on an AVX-512 CPU.
  const childEnv: Record<string, string | undefined> = { ...process.env, KMSDISK_XTS_KERNEL: undefined, ...env };
  return JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8', env: childEnv as NodeJS.ProcessEnv, timeout: 30_000 })) as Record<string, unknown>;
}

describe('kernel selection', () => {
  // The test machines all have AES-NI, VAES, VPCLMULQDQ and AVX2; some also have AVX-512.
  const best = cpuHasAvx512() ? 'vaes512' : 'vaes';

  it(`picks ${best} on this CPU by CPUID (AVX-512 ${cpuHasAvx512() ? 'present' : 'absent'})`, () => {
    const f = cpuFeatures();
    expect(f.aesni && f.vaes && f.vpclmulqdq && f.avx2).toBe(true);
    expect(probe({})).toMatchObject({ loaded: true, kernel: best, matchesNode: true });
    for (const k of ALL_KERNELS) expect(kernelSupported(k)).toBe(true);
    expect(kernelSupported('vaes512')).toBe(cpuHasAvx512());
  });

  it.each(ALL_KERNELS)('KMSDISK_XTS_KERNEL=%s forces that kernel, and it matches node:crypto', (k) => {
    const r = probe({ KMSDISK_XTS_KERNEL: k });
    expect(r).toMatchObject({ loaded: true, kernel: k, matchesNode: true });
  });

  it('a CPU without AES-NI loads the addon, runs the portable kernel correctly, and refuses the others with KMSDISK_ERR_NO_AESNI', () => {
    const r = probe({ KMSDISK_CPU_MASK: 'noaesni' });
    expect(r).toMatchObject({
      loaded: true,
      kernel: 'portable',
      matchesNode: true,
      setErrors: { aesni: 'KMSDISK_ERR_NO_AESNI', vaes: 'KMSDISK_ERR_NO_AESNI', vaes512: 'KMSDISK_ERR_NO_AESNI', portable: null },
    });
    expect((r.features as { aesni: boolean }).aesni).toBe(false);
  });

  it('a CPU with AES-NI but no VAES falls back to the aesni kernel', () => {
    const r = probe({ KMSDISK_CPU_MASK: 'novaes' });
    expect(r).toMatchObject({
      loaded: true,
      kernel: 'aesni',
      matchesNode: true,
      setErrors: { aesni: null, vaes: 'KMSDISK_ERR_NO_AESNI', vaes512: 'KMSDISK_ERR_NO_AESNI', portable: null },
    });
  });

  it('a CPU with VAES but no AVX-512 runs the 256-bit vaes kernel and refuses vaes512', () => {
    const r = probe({ KMSDISK_CPU_MASK: 'noavx512' });
    expect(r).toMatchObject({
      loaded: true,
      kernel: 'vaes',
      matchesNode: true,
      features: { avx512f: false, avx512bw: false, avx512vl: false },
      setErrors: { aesni: null, vaes: null, vaes512: 'KMSDISK_ERR_NO_AESNI', portable: null },
    });
  });

  it('forcing an unsupported kernel by environment fails the load with KMSDISK_ERR_NO_AESNI', () => {
    expect(probe({ KMSDISK_CPU_MASK: 'noaesni', KMSDISK_XTS_KERNEL: 'aesni' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_NO_AESNI' });
    expect(probe({ KMSDISK_CPU_MASK: 'novaes', KMSDISK_XTS_KERNEL: 'vaes' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_NO_AESNI' });
    const no512 = probe({ KMSDISK_CPU_MASK: 'noavx512', KMSDISK_XTS_KERNEL: 'vaes512' });
    expect(no512).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_NO_AESNI' });
    expect(no512.message).toMatch(/KMSDISK_XTS_KERNEL=vaes512: this CPU does not support that kernel/);
    expect(probe({ KMSDISK_XTS_KERNEL: 'sse9' })).toMatchObject({ loaded: false, code: 'KMSDISK_ERR_INVALID_ARGUMENT' });
  });

  it('setKernel switches the active kernel in this process', () => {
    for (const k of ALL_KERNELS) {
      setKernel(k);
      expect(activeKernel()).toBe(k);
    }
  });
});
