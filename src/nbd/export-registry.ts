// The exports a server offers, and the per-export answers negotiation gives about them
// (visibility under TLS rules, transmission flags, block sizes).

import type { BlockDevice } from '../volume/block-device.js';
import { TFLAG } from './protocol.js';

export interface ExportOptions {
  device: BlockDevice;
  description?: string;
  /** Serve read-only even if the device is writable. */
  readOnly?: boolean;
  /** Hidden from LIST and refused (ERR_TLS_REQD) unless the connection upgraded to TLS. */
  requireTls?: boolean;
  /**
   * The TLS-PSK identities that may use the export. Absent: every identity of the server's PSK
   * table (the table is the caller's, so its identities are global). Given, even empty: only
   * these, and TLS is required.
   */
  tlsPskIdentities?: string[];
  /**
   * Whether x509 (certificate) TLS clients may use the export. Default: yes, unless
   * tlsPskIdentities names who may -- naming identities used to mean "these and nobody else".
   */
  tlsX509?: boolean;
}

export interface ExportEntry {
  readonly name: string;
  readonly device: BlockDevice;
  readonly description: string | undefined;
  readonly readOnly: boolean;
  readonly requireTls: boolean;
  readonly tlsPskIdentities: ReadonlySet<string> | undefined;
  readonly tlsX509: boolean;
  /** False once removeExport() started: no new connections may pick it. */
  accepting: boolean;
  /**
   * Set by NbdServer.reserveExport(): the next client that opens the export (GO, EXPORT_NAME)
   * gets it, every later one is refused with `reason` until the reservation is released.
   */
  reservation: { reason: string; claimed: boolean } | undefined;
}

/** What negotiation knows about the connection's security when it judges access. */
export interface PeerSecurity {
  tls: boolean;
  pskIdentity: string | undefined;
}

export type Access = 'ok' | 'tls-required' | 'denied';

/** Whether only TLS connections may use the export. */
export function needsTls(rule: { requireTls?: boolean | undefined; tlsPskIdentities?: unknown }): boolean {
  return Boolean(rule.requireTls) || rule.tlsPskIdentities !== undefined;
}

export function accessOf(entry: ExportEntry, peer: PeerSecurity): Access {
  if (!peer.tls) return needsTls(entry) ? 'tls-required' : 'ok';
  if (peer.pskIdentity !== undefined) {
    return !entry.tlsPskIdentities || entry.tlsPskIdentities.has(peer.pskIdentity) ? 'ok' : 'denied';
  }
  return entry.tlsX509 ? 'ok' : 'denied';
}

export function makeEntry(name: string, opts: ExportOptions): ExportEntry {
  return {
    name,
    device: opts.device,
    description: opts.description,
    readOnly: Boolean(opts.readOnly) || opts.device.readOnly,
    requireTls: Boolean(opts.requireTls),
    tlsPskIdentities: opts.tlsPskIdentities ? new Set(opts.tlsPskIdentities) : undefined,
    tlsX509: opts.tlsX509 ?? opts.tlsPskIdentities === undefined,
    accepting: true,
    reservation: undefined,
  };
}

/**
 * A client opening the export: null if it may (claiming a reservation that nobody has claimed
 * yet), else why not.
 */
export function admit(entry: ExportEntry): string | null {
  const r = entry.reservation;
  if (!r) return null;
  if (r.claimed) return r.reason;
  r.claimed = true;
  return null;
}

/** Transmission flags for an export; SEND_DF only makes sense with structured replies. */
export function transmissionFlags(entry: ExportEntry, structuredReplies: boolean): number {
  let flags = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.CAN_MULTI_CONN | TFLAG.SEND_CACHE;
  if (entry.readOnly) flags |= TFLAG.READ_ONLY;
  else flags |= TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FAST_ZERO;
  if (structuredReplies) flags |= TFLAG.SEND_DF;
  return flags;
}

/** NBD_INFO_BLOCK_SIZE triple. Minimum 1: the device does read-modify-write for unaligned I/O. */
export function blockSizes(entry: ExportEntry, maxPayload: number): { min: number; preferred: number; max: number } {
  const preferred = Math.max(4096, entry.device.sectorSize);
  return { min: 1, preferred, max: Math.max(preferred, maxPayload) };
}
