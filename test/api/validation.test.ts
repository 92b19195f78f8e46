// Schema refusals name what is allowed: an enum lists its values, a const its value, an unknown
// property its name (ajv alone says "must be equal to one of the allowed values").

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers.js';

describe('schema violation messages', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await s?.close();
  });

  const refused = async (method: string, path: string, body?: unknown): Promise<string> => {
    const r = await s.api(method, path, body);
    expect(r.status, `${method} ${path} ${JSON.stringify(body)}`).toBe(400);
    expect(r.body.code).toBe('KMSDISK_ERR_INVALID_ARGUMENT');
    return r.body.message as string;
  };

  it('an enum names its allowed values, wherever it is', async () => {
    expect(await refused('POST', '/v1/disks', { name: 'd1', size: '4M', sectorSize: 1024 })).toBe('invalid body: body/sectorSize must be one of: 512, 4096');
    expect(await refused('GET', '/v1/disks?view=everything')).toBe('invalid querystring: querystring/view must be one of: summary, full');
    expect(await refused('POST', '/v1/images', { path: '/nonexistent', name: 'i1', format: 'vmdk' })).toBe('invalid body: body/format must be one of: raw, qcow2');
    expect(await refused('POST', '/v1/keys', { origin: 'HSM' })).toBe('invalid body: body/origin must be one of: Aliyun_KMS, EXTERNAL');
    expect(await refused('POST', '/v1/drills', { disk: 'd1', action: 'unplug' })).toBe(
      'invalid body: body/action must be one of: disable-key, revoke-grant, schedule-deletion, disable-accesskey',
    );
  });

  it('an unknown property is named; other rules keep their wording; encrypt: false gets the agent\'s own answer', async () => {
    expect(await refused('POST', '/v1/images/i1/copy', { dest: 'i2', encrypt: false })).toBe(
      'only encrypted copies are supported: set encrypt: true (kmsdisk image copy --encrypt)',
    );
    expect(await refused('POST', '/v1/disks', { name: 'd1', size: '4M', colour: 'blue' })).toBe('invalid body: body has an unknown property "colour"');
    expect(await refused('POST', '/v1/disks', { size: '4M' })).toBe("invalid body: body must have required property 'name'");
  });

  it('a size too large to give exactly is refused as too large, not as "not a whole number"', async () => {
    expect(await refused('POST', '/v1/disks', { name: 'd1', size: '100P' })).toBe('size: 100P is too large (at most 9007199254740991 bytes can be given)');
    expect(await refused('POST', '/v1/disks', { name: 'd1', size: 2 ** 60 })).toBe(`size: ${2 ** 60} is too large (at most 9007199254740991 bytes can be given)`);
    expect(await refused('POST', '/v1/disks', { name: 'd1', size: '1.3k' })).toBe('size: 1.3k is not a whole number of bytes');
  });

  it('POST /v1/keys with no body at all creates a key with the defaults (every field is optional)', async () => {
    const r = await s.api('POST', '/v1/keys');
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ state: 'Enabled', service: false });
    // A body that is there but not an object is still refused.
    expect(await refused('POST', '/v1/keys', '"x"')).toMatch(/body must be object/);
  });

  it('a body over the 1 MiB limit is 413 naming the limit, and the OpenAPI document lists 413 on every route that takes a body', async () => {
    const big = JSON.stringify({ name: 'd1', size: '4M', pad: 'x'.repeat(2 ** 20) });
    for (const [method, path] of [
      ['POST', '/v1/disks'],
      ['DELETE', '/v1/disks/d1'],
      ['POST', '/v1/keys/alias%2Facs%2Fecs/disable'],
    ] as const) {
      const r = await s.api(method, path, big);
      expect(r.status, `${method} ${path}`).toBe(413);
      expect(r.body).toMatchObject({ code: 'KMSDISK_ERR_INVALID_ARGUMENT', message: 'request body too large: the admin API accepts at most 1048576 bytes' });
      expect(typeof r.body.requestId).toBe('string');
    }
    const spec = (await s.api('GET', '/docs/json')).body as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        expect('413' in op.responses, `${method} ${path}`).toBe(method !== 'get' && method !== 'head');
      }
    }
  });
});
