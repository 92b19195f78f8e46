// Shared pieces of the key-guard tests: a reading client on a harness export, and waiting for
// guard events with a bound.
import type { EventEmitter } from 'node:events';
import { NbdClient } from '../../src/drill/nbd-client.js';
import { ReadLoop, writePattern, patternBlock, DRILL_BLOCK } from '../../src/drill/read-loop.js';
import type { DrillHarness } from '../../src/drill/harness.js';

export const BLOCKS = 64;

export async function connectClient(h: DrillHarness, exportName = 'drill'): Promise<NbdClient> {
  const addr = h.agent.nbdAddress;
  return NbdClient.connect(addr, { exportName, structuredReplies: true });
}

/** A client with the pattern written and a loop of `inFlight` requests running. */
export async function startReader(h: DrillHarness, inFlight = 8, exportName = 'drill'): Promise<{ client: NbdClient; loop: ReadLoop; stop(): Promise<void> }> {
  const client = await connectClient(h, exportName);
  await writePattern(client, BLOCKS);
  const loop = new ReadLoop(client, { inFlight, blocks: BLOCKS, writeEvery: 8, refusedPauseMs: 2 });
  loop.start();
  const served = await loop.waitFor((r) => r.kind === 'read' && r.verified, 10_000);
  if (!served) throw new Error('the reader got no verified read');
  return {
    client,
    loop,
    stop: async () => {
      await loop.stop();
      await client.disconnect();
    },
  };
}

/** One read of pattern block 0: 'served' (verified data), or the NBD errno. */
export async function readOnce(client: NbdClient, block = 0): Promise<'served' | number> {
  const r = await client.read(block * DRILL_BLOCK, DRILL_BLOCK);
  if (r.errno !== 0) return r.errno;
  if (!r.data?.equals(patternBlock(block))) throw new Error('read returned data that is not the pattern');
  return 'served';
}

export function nextEvent<T>(emitter: EventEmitter, name: string, timeoutMs = 10_000, pred: (v: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(name, on);
      reject(new Error(`no ${name} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (v: T): void => {
      if (!pred(v)) return;
      clearTimeout(timer);
      emitter.off(name, on);
      resolve(v);
    };
    emitter.on(name, on);
  });
}

/** Polls `cond` every 10 ms up to timeoutMs (bounded). */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export async function metricValue(h: DrillHarness, name: string, labels: Record<string, string>): Promise<number> {
  const m = await h.agent.metrics.registry.getSingleMetric(name)?.get();
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => (x.labels as Record<string, unknown>)[k] === val));
  return v?.value ?? 0;
}
