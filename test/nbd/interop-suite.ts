// Real NBD clients against an NbdServer exporting devices made by a DeviceFactory. The same suite
// runs on any BlockDevice (plain file today; encrypted volumes: call defineInteropSuite with their
// factory).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NbdServer } from '../../src/nbd/server.js';
import type { DeviceFactory, TestDevice } from './file-device.js';
import { MiB, mustRun, run, startServer, tempDir } from './harness.js';

const SIZE = 256 * MiB;

export function defineInteropSuite(label: string, factory: DeviceFactory): void {
  describe(`NBD interop with real clients (${label})`, () => {
    let dir: { path: string; remove(): Promise<void> };
    let server: NbdServer;
    let uri: (name: string) => string;
    let rw: TestDevice;
    let ro: TestDevice;
    let payload: Buffer;

    beforeAll(async () => {
      dir = await tempDir('nbd-interop');
      rw = await factory(dir.path, SIZE, { name: 'rw' });
      ro = await factory(dir.path, 16 * MiB, { name: 'ro', readOnly: true });
      const s = await startServer();
      server = s.server;
      uri = s.uri;
      server.addExport('disk', { device: rw.device, description: 'interop test disk' });
      server.addExport('ro', { device: ro.device, readOnly: true, description: 'read-only disk' });
      payload = randomBytes(SIZE);
      await writeFile(join(dir.path, 'random.bin'), payload);
    });

    afterAll(async () => {
      await server?.close();
      await rw?.close();
      await ro?.close();
      await dir?.remove();
    });

    it('nbdinfo shows size, flags, description and block sizes', async () => {
      const out = await mustRun('nbdinfo', [uri('disk')]);
      expect(out).toContain(`export-size: ${SIZE}`);
      expect(out).toContain('description: interop test disk');
      expect(out).toMatch(/can_multi_conn: true/);
      expect(out).toMatch(/can_flush: true/);
      expect(out).toMatch(/can_trim: true/);
      expect(out).toMatch(/can_zero: true/);
      expect(out).toMatch(/can_fast_zero: true/);
      expect(out).toMatch(/can_cache: true/);
      expect(out).toMatch(/is_read_only: false/);
      expect(out).toMatch(/block_size_minimum: 1\b/);
      expect(out).toMatch(/block_size_maximum: 33554432/);
      expect(out).toContain('base:allocation');
    });

    it('nbdinfo --list lists both exports', async () => {
      const out = await mustRun('nbdinfo', ['--list', `nbd://127.0.0.1:${new URL(uri('x')).port}`]);
      expect(out).toContain('export="disk"');
      expect(out).toContain('export="ro"');
      expect(out).toContain('description: read-only disk');
    });

    it('nbdinfo --map covers the whole export', async () => {
      const out = await mustRun('nbdinfo', ['--map', uri('disk')]);
      const lines = out.trim().split('\n').map((l) => l.trim().split(/\s+/));
      let expected = 0;
      for (const [off, len] of lines) {
        expect(Number(off)).toBe(expected);
        expected += Number(len);
      }
      expect(expected).toBe(SIZE);
    });

    it('nbdcopy round-trips 256 MiB byte for byte (1 and 4 connections)', async () => {
      const src = join(dir.path, 'random.bin');
      const back1 = join(dir.path, 'back1.bin');
      await mustRun('nbdcopy', [src, uri('disk')], { timeoutMs: 120_000 });
      await mustRun('nbdcopy', [uri('disk'), back1], { timeoutMs: 120_000 });
      await mustRun('cmp', [src, back1]);
      // Again with 4 connections, on different data so a stale read cannot pass.
      const src2 = join(dir.path, 'random2.bin');
      const payload2 = Buffer.from(payload);
      for (let i = 0; i < payload2.length; i += 4096) payload2[i] ^= 0x5a;
      await writeFile(src2, payload2);
      const back4 = join(dir.path, 'back4.bin');
      await mustRun('nbdcopy', ['--connections=4', '--requests=16', src2, uri('disk')], { timeoutMs: 120_000 });
      await mustRun('nbdcopy', ['--connections=4', uri('disk'), back4], { timeoutMs: 120_000 });
      await mustRun('cmp', [src2, back4]);
      if (rw.contents) expect((await rw.contents()).equals(payload2)).toBe(true);
    });

    it('qemu-img info, convert and compare', async () => {
      const info = JSON.parse(await mustRun('qemu-img', ['info', '--output=json', uri('disk')])) as { 'virtual-size': number };
      expect(info['virtual-size']).toBe(SIZE);
      await mustRun('nbdcopy', [join(dir.path, 'random.bin'), uri('disk')], { timeoutMs: 120_000 });
      const out = join(dir.path, 'converted.qcow2');
      await mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri('disk'), out], { timeoutMs: 120_000 });
      await mustRun('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', out, join(dir.path, 'random.bin')], { timeoutMs: 120_000 });
      await mustRun('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), join(dir.path, 'random.bin')], { timeoutMs: 120_000 });
      // And back: convert the qcow2 into the export, then compare once more.
      await mustRun('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'raw', out, uri('disk')], { timeoutMs: 120_000 });
      await mustRun('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), join(dir.path, 'random.bin')], { timeoutMs: 120_000 });
    });

    it('qemu-io pattern writes and reads at unaligned offsets', async () => {
      const cmds = [
        'write -P 0xab 1000 5000',
        'write -P 0xcd 6000 1',
        'write -P 0x11 8191 2',
        'write -P 0x22 1048575 131073',
        'read -P 0xab 1000 5000',
        'read -P 0xcd 6000 1',
        'read -P 0x11 8191 2',
        'read -P 0x22 1048575 131073',
        'write -z 2000000 3000',
        'read -P 0 2000000 3000',
        'discard 3000000 70000',
        'aio_write -P 0x33 5000000 7777',
        'aio_write -P 0x44 5100000 12345',
        'aio_flush',
        'read -P 0x33 5000000 7777',
        'read -P 0x44 5100000 12345',
      ];
      const args = ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri('disk')];
      const r = await run('qemu-io', args);
      expect(r.stderr + r.stdout).not.toMatch(/fail|error/i);
      expect(r.code).toBe(0);
      expect(r.stdout.match(/^read /gm)?.length).toBe(7);
      if (rw.contents) {
        const data = await rw.contents();
        expect(data.subarray(1000, 6000).every((b) => b === 0xab)).toBe(true);
        expect(data[6000]).toBe(0xcd);
        expect(data.subarray(2000000, 2003000).every((b) => b === 0)).toBe(true);
      }
    });

    it('fio (nbd engine) random writes at QD 32 with crc32c verification', async () => {
      const r = await run(
        'fio',
        [
          '--name=verify',
          '--ioengine=nbd',
          `--uri=${uri('disk')}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=32',
          '--size=64M',
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          // fio otherwise leaves local-verify-*.state files in the working directory.
          '--verify_state_save=0',
          '--runtime=60',
        ],
        { timeoutMs: 120_000 },
      );
      expect(r.stderr + r.stdout).not.toMatch(/verify: bad|crc32c: verify failed|fio: pid=.*error/i);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/err= 0/);
    });

    it('a read-only export refuses writes with EPERM (server-side check)', async () => {
      const info = await mustRun('nbdinfo', [uri('ro')]);
      expect(info).toMatch(/is_read_only: true/);
      const script = [
        'h.set_strict_mode(0)',
        'try:',
        '    h.pwrite(b"x" * 512, 0)',
        '    print("WROTE")',
        'except nbd.Error as e:',
        '    print("errnum", e.errnum)',
        'print("read", len(h.pread(4096, 0)))',
      ].join('\n');
      const out = await mustRun('nbdsh', ['-u', uri('ro'), '-c', script]);
      expect(out).toContain('errnum 1');
      expect(out).toContain('read 4096');
    });

    it('FLUSH on one connection covers writes completed on another (multi-conn)', async () => {
      const script = [
        'h2 = nbd.NBD()',
        `h2.connect_uri("${uri('disk')}")`,
        'assert h.can_multi_conn() and h2.can_multi_conn()',
        'import os',
        'data = os.urandom(65536)',
        'h.pwrite(data, 7 * 1048576 + 3)',
        'h2.flush()',
        'assert h2.pread(65536, 7 * 1048576 + 3) == data',
        'h.pwrite(data, 9 * 1048576, nbd.CMD_FLAG_FUA)',
        'assert h2.pread(65536, 9 * 1048576) == data',
        'h2.shutdown()',
        'print("OK")',
      ].join('\n');
      const out = await mustRun('nbdsh', ['-u', uri('disk'), '-c', script]);
      expect(out).toContain('OK');
    });

    it('trim, write_zeroes (fast zero refused when not fast), cache and block status via libnbd', async () => {
      const script = [
        `h.pwrite(b"\\xff" * 8192, 0)`,
        'h.zero(4096, 1000)',
        'assert h.pread(8192, 0) == b"\\xff" * 1000 + b"\\0" * 4096 + b"\\xff" * 3096, "zero"',
        'h.trim(8192, 0)',
        'h.cache(65536, 0)',
        'seen = []',
        'h.block_status(1048576, 0, lambda ctx, off, entries, err: seen.append((ctx, list(entries))))',
        'assert seen and seen[0][0] == "base:allocation", seen',
        'assert sum(seen[0][1][0::2]) <= 1048576 and seen[0][1][0] > 0',
        'try:',
        '    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)',
        '    print("fast-zero ok")',
        'except nbd.Error as e:',
        '    print("fast-zero errnum", e.errnum)',
        'print("OK")',
      ].join('\n');
      const out = await mustRun('nbdsh', ['--base-allocation', '-u', uri('disk'), '-c', script]);
      expect(out).toContain('OK');
      expect(out).toMatch(/fast-zero (ok|errnum 95)/);
    });

    it('the server counted the traffic', () => {
      expect(server.stats.requests['read'] ?? 0).toBeGreaterThan(0);
      expect(server.stats.bytes['write'] ?? 0).toBeGreaterThanOrEqual(SIZE);
      expect(server.stats.errors['EPERM'] ?? 0).toBeGreaterThanOrEqual(1);
      void readFile;
    });
  });
}
