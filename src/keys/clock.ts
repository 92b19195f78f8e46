// One clock for revocation timelines: epoch milliseconds with sub-millisecond resolution.
// performance.timeOrigin + performance.now() is monotonic within a process and comparable across
// processes on one host (both anchor to the wall clock at process start), which the drill needs:
// it compares its own read timestamps with the agent's wipe time.

import { performance } from 'node:perf_hooks';

export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}
