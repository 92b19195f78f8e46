// A filesystem on the export, as a test host without the kernel nbd module would use it:
// nbdfuse exposes the export as a file, a loop device turns it into a block device, ext4 on top.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { NbdServer } from '../../src/nbd/server.js';
import type { DeviceFactory, TestDevice } from './file-device.js';
import { MiB, mustRun, run, startBackground, startServer, tempDir } from './harness.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export function defineFuseExt4Suite(label: string, factory: DeviceFactory): void {
  describe(`ext4 over nbdfuse + loop device (${label})`, () => {
    let dir: { path: string; remove(): Promise<void> };
    let server: NbdServer;
    let dev: TestDevice;
    let fuse: ChildProcess | null = null;
    let fuseDir = '';
    let mnt = '';
    const loops: string[] = [];
    let mounted = false;

    beforeAll(async () => {
      dir = await tempDir('nbd-fuse');
      dev = await factory(dir.path, 128 * MiB, { name: 'fs' });
      const s = await startServer();
      server = s.server;
      server.addExport('fs', { device: dev.device });
      fuseDir = join(dir.path, 'fuse');
      mnt = join(dir.path, 'mnt');
      await mkdir(fuseDir);
      await mkdir(mnt);
      fuse = startBackground('nbdfuse', [fuseDir, s.uri('fs')]);
      for (let i = 0; i < 100 && !existsSync(join(fuseDir, 'nbd')); i++) await new Promise((r) => setTimeout(r, 100));
    });

    afterAll(async () => {
      if (mounted) await run('umount', [mnt]);
      for (const l of loops) await run('losetup', ['-d', l]);
      if (fuseDir) await run('fusermount3', ['-u', fuseDir]);
      fuse?.kill();
      await server?.close();
      await dev?.close();
      await dir?.remove();
    });

    it('mkfs.ext4, mount, write and read files, unmount, fsck clean', async () => {
      expect(existsSync('/dev/loop-control')).toBe(true);
      expect(existsSync(join(fuseDir, 'nbd'))).toBe(true);
      const loop = (await mustRun('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
      loops.push(loop);
      await mustRun('mkfs.ext4', ['-q', '-F', loop], { timeoutMs: 60_000 });
      await mustRun('mount', [loop, mnt]);
      mounted = true;
      const files = new Map<string, string>();
      for (let i = 0; i < 8; i++) {
        const data = randomBytes(i === 0 ? 9 * MiB : 1 + i * 77_777);
        const name = `file-${i}.bin`;
        await writeFile(join(mnt, name), data);
        files.set(name, sha(data));
      }
      await mustRun('sync', []);
      await mustRun('umount', [mnt]);
      mounted = false;
      await mustRun('losetup', ['-d', loop]);
      loops.splice(loops.indexOf(loop), 1);

      // A fresh loop device, so nothing comes from the old one's page cache.
      const loop2 = (await mustRun('losetup', ['-f', '--show', join(fuseDir, 'nbd')])).trim();
      loops.push(loop2);
      await mustRun('mount', [loop2, mnt]);
      mounted = true;
      for (const [name, hash] of files) expect(sha(await readFile(join(mnt, name)))).toBe(hash);
      await mustRun('umount', [mnt]);
      mounted = false;
      const fsck = await run('fsck.ext4', ['-n', '-f', loop2]);
      expect(fsck.stdout + fsck.stderr).toMatch(/Pass 5/);
      expect(fsck.code).toBe(0);
      expect(server.stats.bytes['write'] ?? 0).toBeGreaterThan(9 * MiB);
    });
  });
}
