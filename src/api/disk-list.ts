// The disk list (GET /v1/disks) as cached, pre-serialized bodies, one per view, rebuilt only when
// something visible changed (the agent's version counter): headers come from memory, never from
// the files. The version is also the ETag, so pollers get 304 until something changes. Used by
// the Fastify route and by the fast path in front of it (fast-path.ts), so both always answer
// with the same bytes.

import type { AgentServices } from '../agent/agent.js';

export type DiskListView = 'summary' | 'full';

export interface DiskListBody {
  readonly version: number;
  readonly body: Buffer;
  /** Weak ETag naming the view and the version: `W/"disks-summary-42"`. */
  readonly etag: string;
}

export const DISK_LIST_CONTENT_TYPE = 'application/json; charset=utf-8';

export function createDiskListCache(s: Pick<AgentServices, 'disks' | 'version'>): (view: DiskListView) => DiskListBody {
  let summary: DiskListBody | undefined;
  let full: DiskListBody | undefined;
  const build = (view: DiskListView, version: number): DiskListBody => {
    const disks = s.disks.list();
    const out =
      view === 'full'
        ? disks
        : disks.map((d) => ({
            name: d.name,
            size: d.size,
            sectorSize: d.sectorSize,
            kmsKeyId: d.kmsKeyId,
            state: d.state,
            ...(d.stateReason !== null ? { stateReason: d.stateReason } : {}),
            ...(d.stateMessage !== null ? { stateMessage: d.stateMessage } : {}),
            createdAt: d.createdAt,
            attachment: d.attachment,
          }));
    return { version, body: Buffer.from(JSON.stringify({ disks: out })), etag: `W/"disks-${view}-${version}"` };
  };
  return (view) => {
    const v = s.version();
    if (view === 'full') return full !== undefined && full.version === v ? full : (full = build(view, v));
    return summary !== undefined && summary.version === v ? summary : (summary = build(view, v));
  };
}
