// A request that reaches the admin API after the agent began to stop is answered in the API's
// error shape: KMSDISK_ERR_SHUTTING_DOWN (503) with Connection: close. Fastify's own closing answer
// was {"error":"Service Unavailable",...}, with none of the API's fields (code, message, requestId).

import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, until, type Stack } from './helpers.js';
import { listening } from '../cli/helpers.js';

/** Resolves with everything the server sent once it closes the connection. */
function collect(sock: Socket): Promise<string> {
  return new Promise((resolve) => {
    let out = '';
    sock.on('data', (d: Buffer) => (out += d.toString()));
    sock.on('error', () => undefined);
    sock.on('close', () => resolve(out));
  });
}

describe('admin API while the agent stops', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await s?.close();
  });

  it('a request completed after the stop began gets KMSDISK_ERR_SHUTTING_DOWN in the error shape, with Connection: close', async () => {
    const port = Number(new URL(s.agent.apiUrl).port);
    // A client still sending its request when the stop begins: its connection is busy, so the
    // server keeps it open (only idle keep-alive connections are closed at once).
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const answer = collect(sock);
    sock.write('POST /v1/disks HTTP/1.1\r\nHost: 127.0.0.1\r\n');
    await until(async () => (await s.api('GET', '/healthz')).status === 200, 'the partial request to be read');

    const stopped = s.agent.stop();
    // server.close() runs right after the flag that makes the API answer 503 is set.
    await until(async () => !(await listening(port)), 'the API to stop accepting connections');
    const body = JSON.stringify({ name: 'late', size: '4M' });
    sock.write(`Authorization: Bearer ${s.agent.token}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
    const raw = await answer;
    await stopped;

    const [head, payload] = raw.split('\r\n\r\n', 2) as [string, string];
    expect(head).toMatch(/^HTTP\/1\.1 503 /);
    expect(head).toMatch(/^connection: close$/im);
    const err = JSON.parse(payload) as Record<string, unknown>;
    expect(err).toMatchObject({ code: 'KMSDISK_ERR_SHUTTING_DOWN', message: expect.stringContaining('POST /v1/disks was not carried out') });
    expect(err.requestId).toEqual(expect.any(String));
  });
});
