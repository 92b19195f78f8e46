// NBD_CMD_DISC from a client that half-closes right after it (as libnbd and the drill client
// do): the server finishes in-flight requests and closes the connection, so it is not left
// listed (and counted as a connected client) afterwards.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdServer } from '../../src/nbd/server.js';
import { FileBlockDevice } from '../../src/nbd/file-device.js';
import { NbdClient } from '../../src/drill/nbd-client.js';

let dir: string;
let server: NbdServer;
let addr: { host: string; port: number };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kmsdisk-disc-'));
  writeFileSync(join(dir, 'disk'), Buffer.alloc(8 << 20));
  server = new NbdServer({});
  server.addExport('x', { device: await FileBlockDevice.open(join(dir, 'disk')) });
  addr = (await server.listen({ host: '127.0.0.1', port: 0 })) as unknown as { host: string; port: number };
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function connectionsAfter(maxMs: number): Promise<number> {
  const deadline = Date.now() + maxMs;
  while (server.connections().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return server.connections().length;
}

describe('DISC', () => {
  it.each([0, 1, 40])('closes the connection after DISC with %i reads in flight before it', async (reads) => {
    const c = await NbdClient.connect(addr, { exportName: 'x', structuredReplies: true });
    const pending = Array.from({ length: reads }, (_, i) => c.read(i * 4096, 4096));
    await c.disconnect();
    for (const r of await Promise.all(pending)) expect(r.errno).toBe(0);
    // Well under the server's 5 s guard timer for clients that never close their side.
    expect(await connectionsAfter(2000)).toBe(0);
  });
});
