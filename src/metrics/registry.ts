// Every Prometheus metric of the agent, in one place, so names and labels stay consistent.
// Modules import `metrics` and update it; /metrics serves `metrics.registry`.
//
// A fresh registry per agent (createMetrics) keeps tests that start several agents in one
// process from sharing counters.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

// Seconds; NBD requests on loopback run from ~20 us to ~100 ms for 32 MiB payloads.
const IO_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const KMS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3];

export function createMetrics(opts: { processMetrics?: boolean } = {}) {
  const registry = new Registry();
  if (opts.processMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'kmsdisk_' });
  const r = [registry];
  return {
    registry,
    // --- per disk I/O -------------------------------------------------------------------------
    diskBytes: new Counter({ name: 'kmsdisk_disk_bytes_total', help: 'Bytes transferred per disk and direction (successful requests only)', labelNames: ['disk', 'op'] as const, registers: r }),
    diskRequests: new Counter({ name: 'kmsdisk_disk_requests_total', help: 'NBD requests per disk and command', labelNames: ['disk', 'op'] as const, registers: r }),
    diskErrors: new Counter({ name: 'kmsdisk_disk_errors_total', help: 'Failed requests per disk and error code', labelNames: ['disk', 'code'] as const, registers: r }),
    diskLatency: new Histogram({ name: 'kmsdisk_disk_request_seconds', help: 'Request latency per disk and command', labelNames: ['disk', 'op'] as const, buckets: IO_BUCKETS, registers: r }),
    diskInflight: new Gauge({ name: 'kmsdisk_disk_inflight_requests', help: 'Requests in flight per disk', labelNames: ['disk'] as const, registers: r }),
    diskKeyState: new Gauge({ name: 'kmsdisk_disk_key_usable', help: '1 when the disk data key is unwrapped and usable, 0 when revoked or not loaded', labelNames: ['disk', 'key_id'] as const, registers: r }),
    disks: new Gauge({ name: 'kmsdisk_disks', help: 'Disks in the catalog by state', labelNames: ['state'] as const, registers: r }),
    // --- per CMK ------------------------------------------------------------------------------
    leaseRenewals: new Counter({ name: 'kmsdisk_key_lease_renewals_total', help: 'Key lease renewals per CMK and outcome', labelNames: ['key_id', 'outcome'] as const, registers: r }),
    // Both fed by recordKmsCall, once per SDK request of the agent's KMS clients (each retry too).
    kmsCalls: new Histogram({ name: 'kmsdisk_kms_call_seconds', help: 'KMS request latency per action and outcome (ok, error)', labelNames: ['action', 'outcome'] as const, buckets: KMS_BUCKETS, registers: r }),
    kmsErrors: new Counter({ name: 'kmsdisk_kms_errors_total', help: 'Failed KMS requests per action and KMS error code (or transport error, e.g. ECONNREFUSED)', labelNames: ['action', 'code'] as const, registers: r }),
    revocations: new Counter({ name: 'kmsdisk_key_revocations_total', help: 'Revocations per CMK and cause', labelNames: ['key_id', 'cause'] as const, registers: r }),
    revokeToWipe: new Histogram({ name: 'kmsdisk_key_revoke_to_wipe_seconds', help: 'Time from the revocation signal to every slot of the CMK wiped', labelNames: ['key_id'] as const, buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 2], registers: r }),
    keyState: new Gauge({ name: 'kmsdisk_key_access', help: '1 when the agent can use the CMK, 0 when access is denied', labelNames: ['key_id'] as const, registers: r }),
    // --- NBD ----------------------------------------------------------------------------------
    nbdConnections: new Gauge({ name: 'kmsdisk_nbd_connections', help: 'Open NBD connections per export', labelNames: ['export'] as const, registers: r }),
    nbdConnectionsTotal: new Counter({ name: 'kmsdisk_nbd_connections_total', help: 'NBD connections accepted per export', labelNames: ['export'] as const, registers: r }),
    nbdConnectionsRefused: new Counter({ name: 'kmsdisk_nbd_connections_refused_total', help: 'NBD connections closed on accept because the agent had --max-nbd-connections open', registers: r }),
    nbdProtocolErrors: new Counter({ name: 'kmsdisk_nbd_protocol_errors_total', help: 'Clients dropped for protocol violations', labelNames: ['reason'] as const, registers: r }),
    // --- jobs ---------------------------------------------------------------------------------
    jobs: new Gauge({ name: 'kmsdisk_jobs', help: 'Jobs by kind and state', labelNames: ['kind', 'state'] as const, registers: r }),
    jobProgress: new Gauge({ name: 'kmsdisk_job_progress_ratio', help: 'Progress of running jobs (0..1)', labelNames: ['job_id', 'kind'] as const, registers: r }),
    snapshotsTaken: new Counter({ name: 'kmsdisk_snapshots_taken_total', help: 'Snapshots taken per disk and trigger', labelNames: ['disk', 'trigger'] as const, registers: r }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

// Label values come from the KMS's answers; a misbehaving endpoint must not be able to mint
// unbounded series, so anything that does not look like an action or error code is folded.
const LABEL_RE = /^[A-Za-z][A-Za-z0-9._-]{0,63}$/;
const label = (v: string): string => (LABEL_RE.test(v) ? v : 'other');

/**
 * One KMS request of the agent (the KmsCallEvent of src/kms, structurally: the metrics module
 * does not depend on the KMS client): its latency, and on failure its error code.
 */
export function recordKmsCall(m: Metrics, ev: { action: string; seconds: number; errorCode?: string | undefined }): void {
  const action = label(ev.action);
  m.kmsCalls.observe({ action, outcome: ev.errorCode === undefined ? 'ok' : 'error' }, ev.seconds);
  if (ev.errorCode !== undefined) m.kmsErrors.inc({ action, code: label(ev.errorCode) });
}

/**
 * Drops every series of a deleted disk (label `disk`). prom-client keeps a labelled series until it
 * is removed, so without this a deleted disk's bytes, requests, latencies, errors and snapshot
 * counts stayed on /metrics for the life of the agent (and one series set per disk ever created
 * piled up in scripted create/delete cycles). remove() needs every label's value, so the label
 * sets are read back from the metric (a histogram's `le` is not a label of the series).
 */
export async function removeDiskSeries(m: Metrics, disk: string): Promise<void> {
  const perDisk = [m.diskBytes, m.diskRequests, m.diskErrors, m.diskLatency, m.diskInflight, m.diskKeyState, m.snapshotsTaken];
  for (const metric of perDisk) {
    const { values } = await metric.get();
    const seen = new Set<string>();
    for (const v of values) {
      const { le: _le, ...labels } = v.labels as Record<string, string | number>;
      if (labels.disk !== disk) continue;
      const key = JSON.stringify(labels);
      if (seen.has(key)) continue;
      seen.add(key);
      (metric as { remove(labels: Record<string, string | number>): void }).remove(labels);
    }
  }
}

/**
 * Drops the series of an NBD export that went away (detach): prom-client keeps a labelled series
 * until it is removed, so kmsdisk_nbd_connections_total{export} of every export ever attached
 * stayed on /metrics after its detach (and after its disk was deleted). The gauge
 * kmsdisk_nbd_connections is rebuilt at each scrape; it is dropped here too for the scrape in between.
 */
export function removeExportSeries(m: Metrics, exportName: string): void {
  m.nbdConnectionsTotal.remove({ export: exportName });
  m.nbdConnections.remove({ export: exportName });
}
