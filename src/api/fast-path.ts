// A fast path in front of Fastify for the API's hottest read: an authorized `GET /v1/disks` (plain,
// `?view=summary` or `?view=full`), answered from the cached body (disk-list.ts) straight on the
// Node response. Pollers call this route constantly, and Fastify's pipeline around the cached body
// (request and reply objects, the auth hook, query parsing and validation, send) was about a
// quarter of the agent's CPU per request (bench:api, 100 disks: 100-110 µs per request through
// Fastify, 65-85 µs here; what remains is Node's HTTP layer and the kernel's TCP work for the 17 KB
// body). Everything else, including every variant of this route the fast path does not recognise
// byte for byte (other query strings, HEAD, a missing or wrong token, a closing server), goes to
// Fastify, which validates, answers and reports errors as before. The route stays registered in
// Fastify with its schema, so the OpenAPI document is unchanged, and both paths send the same
// status, headers and bytes (test/api/fast-path.test.ts compares them). Fastify hooks do not see
// the requests answered here: a per-request hook added later (metrics, access log) must be called
// here too, or the fast path removed.

import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TokenVerdict } from './auth.js';
import { DISK_LIST_CONTENT_TYPE, type DiskListBody, type DiskListView } from './disk-list.js';

export interface FastPathOptions {
  checkToken: (header: string | undefined) => TokenVerdict;
  diskList: (view: DiskListView) => DiskListBody;
  /** True once the server is closing: Fastify then answers 503 with Connection: close. */
  closing: () => boolean;
}

/** The exact request targets served here; any other spelling is Fastify's to judge. */
const LIST_TARGETS = new Map<string, DiskListView>([
  ['/v1/disks', 'summary'],
  ['/v1/disks?view=summary', 'summary'],
  ['/v1/disks?view=full', 'full'],
]);

/** Returns true when it answered the request, false to hand it to Fastify untouched. */
export function createFastPath(opts: FastPathOptions): (req: IncomingMessage, res: ServerResponse) => boolean {
  return (req, res) => {
    if (req.method !== 'GET') return false;
    const view = LIST_TARGETS.get(req.url!);
    if (view === undefined || opts.closing() || opts.checkToken(req.headers.authorization) !== 'ok') return false;
    const c = opts.diskList(view);
    if (req.headers['if-none-match'] === c.etag) {
      res.writeHead(304, { etag: c.etag });
      res.end();
    } else {
      res.writeHead(200, { etag: c.etag, 'content-type': DISK_LIST_CONTENT_TYPE, 'content-length': c.body.length });
      res.end(c.body);
    }
    return true;
  };
}
