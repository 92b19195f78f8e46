// Key slots: import zeroes the source, the key check value, wipe and use-after-wipe on every
// entry point, jobs racing a wipe leak no plaintext, and a child process that reads the slot's
// page through the test-only reader to prove wipe() zeroed it.
import { execFileSync } from 'node:child_process';
import { createCipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import {
  KeySlot,
  XTS_KEY_BYTES,
  _debugReadSlotKeyBytesForTests,
  decryptBlocksRawTweak,
  decryptSectors,
  decryptSectorsAsync,
  encryptBlocksRawTweak,
  encryptPwrite,
  encryptSectors,
  encryptSectorsAsync,
  isDumpable,
  preadDecrypt,
  setKernel,
} from '../../src/crypto/index.js';
import { addonPath } from '../../src/crypto/native.js';
import { ALL_KERNELS } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'kmsdisk-keyslot-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function expectCode(fn: () => unknown, code: string): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${code}`).toBeInstanceOf(Error);
  expect((caught as { code?: string }).code).toBe(code);
}

describe('KeySlot', () => {
  it('imports a 64-byte key and zeroes the source buffer', () => {
    const dek = randomBytes(XTS_KEY_BYTES);
    const copy = Buffer.from(dek);
    const slot = KeySlot.import(dek);
    expect(dek.equals(Buffer.alloc(64))).toBe(true);
    expect(_debugReadSlotKeyBytesForTests(slot).subarray(0, 64).equals(copy)).toBe(true);
    expect(slot.wiped).toBe(false);
    slot.wipe();
  });

  it('key check value = first 16 bytes of XTS(32 zero bytes, tweak ff*8||00*8), same in every kernel', () => {
    const key = randomBytes(64);
    const c = createCipheriv('aes-256-xts', key, Buffer.from('ffffffffffffffff0000000000000000', 'hex'));
    const want = Buffer.concat([c.update(Buffer.alloc(32)), c.final()]).subarray(0, 16);
    for (const k of ALL_KERNELS) {
      setKernel(k);
      const slot = KeySlot.import(Buffer.from(key));
      expect(slot.keyCheckValue().equals(want), k).toBe(true);
      slot.wipe();
    }
    const other = KeySlot.import(randomBytes(64));
    expect(other.keyCheckValue().equals(want)).toBe(false);
  });

  it('refuses a key whose two halves are equal (IEEE 1619 / FIPS), and still zeroes the source', () => {
    const half = randomBytes(32);
    const dek = Buffer.concat([half, half]);
    expectCode(() => KeySlot.import(dek), 'KMSDISK_ERR_BAD_KEY');
    expect(dek.equals(Buffer.alloc(64))).toBe(true);
  });

  it('wipe() zeroes the page at once and every later use throws KMSDISK_ERR_KEY_WIPED', async () => {
    const slot = KeySlot.import(randomBytes(64));
    const buf = Buffer.alloc(4096);
    slot.wipe();
    expect(slot.wiped).toBe(true);
    expect(_debugReadSlotKeyBytesForTests(slot).every((b) => b === 0)).toBe(true);
    slot.wipe(); // idempotent
    const W = 'KMSDISK_ERR_KEY_WIPED';
    expectCode(() => slot.keyCheckValue(), W);
    expectCode(() => encryptSectors(slot, buf, buf, 512, 0n), W);
    expectCode(() => decryptSectors(slot, buf, buf, 4096, 0n), W);
    expectCode(() => encryptBlocksRawTweak(slot, buf, buf, Buffer.alloc(16)), W);
    expectCode(() => decryptBlocksRawTweak(slot, buf, buf, Buffer.alloc(16)), W);
    await expect(encryptSectorsAsync(slot, buf, buf, 512, 0n)).rejects.toMatchObject({ code: W });
    await expect(decryptSectorsAsync(slot, buf, buf, 512, 0n)).rejects.toMatchObject({ code: W });
    await expect(preadDecrypt(0, slot, buf, 0, 512, 0, 512, 0n)).rejects.toMatchObject({ code: W });
    await expect(encryptPwrite(1, slot, buf, 0, 512, 0, 512, 0n)).rejects.toMatchObject({ code: W });
  });

  it('an async job racing wipe() rejects KMSDISK_ERR_KEY_WIPED and leaves no plaintext in dst', async () => {
    setKernel('vaes');
    const key = randomBytes(64);
    const plain = Buffer.alloc(16 << 20, 0x5a);
    const slot = KeySlot.import(Buffer.from(key));
    const ct = Buffer.alloc(plain.length);
    encryptSectors(slot, plain, ct, 4096, 0n);
    for (let round = 0; round < 5; round++) {
      const dst = Buffer.alloc(plain.length, 0xaa);
      const s = KeySlot.import(Buffer.from(key));
      const job = decryptSectorsAsync(s, ct, dst, 4096, 0n);
      s.wipe(); // the job is queued or running on the threadpool now
      await expect(job).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_WIPED' });
      // Either the job saw the wipe before starting (dst untouched) or after (dst zeroed);
      // a job that finished just before the wipe is caught when it settles (dst zeroed).
      const untouched = dst.equals(Buffer.alloc(dst.length, 0xaa));
      const zeroed = dst.equals(Buffer.alloc(dst.length));
      expect(untouched || zeroed).toBe(true);
      expect(dst.includes(0x5a)).toBe(false);
    }
    // the fused read path too: a pread+decrypt settling after wipe() leaves zeros
    const file = join(tmp, 'race.img');
    writeFileSync(file, ct.subarray(0, 1 << 20));
    const { openSync, closeSync } = await import('node:fs');
    const fd = openSync(file, 'r');
    const s2 = KeySlot.import(Buffer.from(key));
    const dst2 = Buffer.alloc(1 << 20, 0xaa);
    const job2 = preadDecrypt(fd, s2, dst2, 0, dst2.length, 0, 4096, 0n);
    s2.wipe();
    await expect(job2).rejects.toMatchObject({ code: 'KMSDISK_ERR_KEY_WIPED' });
    expect(dst2.includes(0x5a)).toBe(false);
    closeSync(fd);
    slot.wipe();
  });

  it('a child process sees the slot page non-zero before wipe and all zero after', () => {
    const script = join(tmp, 'child.cjs');
    writeFileSync(
      script,
      `
const addon = require(${JSON.stringify(addonPath)});
const fs = require('node:fs');
// /proc/self/smaps entries: address range, permissions and VmFlags (lo = mlocked,
// dd = MADV_DONTDUMP, wf = MADV_WIPEONFORK).
function maps() {
  const out = [];
  let cur = null;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\\S+)/.exec(line);
    if (m) { cur = { start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3], flags: [] }; out.push(cur); }
    else if (line.startsWith('VmFlags:') && cur) cur.flags = line.slice(8).trim().split(/\\s+/);
  }
  return out;
}
const wipeOnForkCount = () => maps().filter((e) => e.flags.includes('wf')).length;
const wfBefore = wipeOnForkCount();
const vmlck = () => Number((/VmLck:\\s+(\\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8')) || [0, -1])[1]);
const key = Buffer.alloc(64);
for (let i = 0; i < 64; i++) key[i] = (i * 37 + 11) & 0xff;
const expected = Buffer.from(key);
const lockedBefore = vmlck();
const slot = addon.importKey(key);
key.fill(0);
const lockedAfter = vmlck();
const all = maps();
const slotMaps = all.filter((e) => e.flags.includes('wf') && e.flags.includes('dd'));
const idx = all.indexOf(slotMaps[slotMaps.length - 1]);
const region = all[idx];
const guardsOk = idx > 0 && all[idx - 1].perms === '---p' && all[idx - 1].end === region.start &&
  all[idx + 1].perms === '---p' && all[idx + 1].start === region.end;
const before = addon._debugReadSlotKeyBytesForTests(slot);
addon.wipe(slot);
const after = addon._debugReadSlotKeyBytesForTests(slot);
addon.setDumpable(false);
process.stdout.write(JSON.stringify({
  keyMatches: before.subarray(0, 64).equals(expected),
  scheduleNonZero: before.subarray(64).some((b) => b !== 0),
  pageBytes: after.length,
  afterAllZero: after.every((b) => b === 0),
  info: addon.slotInfo(slot),
  lockedKb: lockedAfter - lockedBefore,
  dumpable: addon.isDumpable(),
  newWipeOnForkMappings: wipeOnForkCount() - wfBefore,
  slotPerms: region.perms,
  slotFlags: region.flags,
  guardsOk,
}));
`,
    );
    const out = JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8', timeout: 30_000 })) as {
      keyMatches: boolean;
      scheduleNonZero: boolean;
      pageBytes: number;
      afterAllZero: boolean;
      info: { wiped: boolean; locked: boolean };
      lockedKb: number;
      dumpable: boolean;
      newWipeOnForkMappings: number;
      slotPerms: string;
      slotFlags: string[];
      guardsOk: boolean;
    };
    expect(out.keyMatches).toBe(true);
    expect(out.scheduleNonZero).toBe(true);
    expect(out.pageBytes).toBeGreaterThanOrEqual(64 + 3 * 240);
    expect(out.afterAllZero).toBe(true);
    expect(out.info.wiped).toBe(true);
    if (out.info.locked) expect(out.lockedKb).toBeGreaterThanOrEqual(4);
    expect(out.dumpable).toBe(false);
    // the slot page: its own mapping, MADV_DONTDUMP + MADV_WIPEONFORK, PROT_NONE guard pages around
    expect(out.newWipeOnForkMappings).toBe(1);
    expect(out.slotPerms).toBe('rw-p');
    expect(out.slotFlags).toEqual(expect.arrayContaining(['dd', 'wf']));
    if (out.info.locked) expect(out.slotFlags).toContain('lo');
    expect(out.guardsOk).toBe(true);
    expect(isDumpable()).toBe(true); // the test process itself was not changed
  });

  it('a slot dropped by JS is wiped and unmapped by its finalizer (child process with --expose-gc)', () => {
    const script = join(tmp, 'gc-child.cjs');
    writeFileSync(
      script,
      `
const addon = require(${JSON.stringify(addonPath)});
const fs = require('node:fs');
const crypto = require('node:crypto');
const slotMappings = () => fs.readFileSync('/proc/self/smaps', 'utf8').split('VmFlags:').filter((f) => / wf /.test(f.split('\\n')[0] + ' ')).length;
const base = slotMappings();
let slots = [];
for (let i = 0; i < 200; i++) slots.push(addon.importKey(crypto.randomBytes(64)));
const live = slotMappings() - base;
slots = null;
(async () => {
  for (let i = 0; i < 20 && slotMappings() - base > 0; i++) {
    global.gc();
    await new Promise((r) => setTimeout(r, 10)); // finalizers run after the GC pass
  }
  process.stdout.write(JSON.stringify({ live, afterGc: slotMappings() - base }));
})();
`,
    );
    const out = JSON.parse(execFileSync(process.execPath, ['--expose-gc', script], { encoding: 'utf8', timeout: 30_000 })) as {
      live: number;
      afterGc: number;
    };
    expect(out.live).toBe(200);
    expect(out.afterGc).toBe(0);
  });
});
