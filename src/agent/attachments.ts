// Attachments: a disk attached to "a host" is an NBD export of its volume, with an access rule
// (read-only, TLS required, TLS-PSK identity). Attaching opens the volume, unwraps its DEK through
// the key guard (so revocation applies from the first byte), and adds the export; detaching
// removes the export after its in-flight requests are answered (drain), then wipes the key and
// closes the file. The catalog row is the durable intent: a restarted agent re-attaches it.

import { KmsdiskError, errorCodeOf } from '../errors.js';
import { formatHostPort, type HostPort } from '../config.js';
import { Volume } from '../volume/index.js';
import type { AttachmentRow } from './catalog.js';
import type { AgentContext } from './context.js';
import type { DisksService } from './disks.js';
import type { AccessMayReturnEvent } from '../keys/index.js';
import { cmkRefusal } from './kms-refusals.js';
import { checkName } from './names.js';
import { checkPskIdentity, pskUserInfo, type PskStore } from './psk.js';
import { removeExportSeries } from '../metrics/registry.js';
import { keyLoadError, type KeyLoadError, type OpenDisk } from './open-disks.js';

/** Volume.open failures that are about the file (not the request or a conflict in this process). */
const VOLUME_FILE_ERRORS = new Set<string>(['KMSDISK_ERR_VOLUME_CORRUPT', 'KMSDISK_ERR_VOLUME_SIZE', 'KMSDISK_ERR_NOT_FOUND', 'KMSDISK_ERR_IO', 'KMSDISK_ERR_INVALID_ARGUMENT']);

export interface AttachRequest {
  disk: string;
  export?: string;
  readOnly?: boolean;
  requireTls?: boolean;
  tlsPskIdentity?: string;
}

export interface AttachedClient {
  id: number;
  remote: string;
  since: string;
  tls: boolean;
  pskIdentity: string | null;
  inflight: number;
  state: string;
  /** A native lane serves this connection's aligned reads and writes. */
  native: boolean;
}

export interface AttachmentView {
  disk: string;
  export: string;
  readOnly: boolean;
  requireTls: boolean;
  tlsPskIdentity: string | null;
  /** The PSK file clients use (tls-psk-file=...); the key itself is never returned. */
  tlsPskFile: string | null;
  /**
   * TLS without a PSK identity is for x509 clients: the folder they use (tls-certificates=...,
   * qemu tls-creds-x509 dir=...), holding ca-cert.pem for this server.
   */
  tlsCertificatesDir: string | null;
  /** Those clients must present a certificate: client-cert.pem and client-key.pem in that folder. */
  tlsClientCertificate: boolean;
  uri: string;
  createdAt: string;
  /** in-use, or key-revoked while the key is not usable (the export then refuses I/O). */
  state: string;
  clients: AttachedClient[];
}

/** The header names the CMK by id or ARN (both end with the id); an alias could be any key. */
function mayUseCmk(entry: OpenDisk, keyId: string): boolean {
  const cmk = entry.volume.header.kms.keyId;
  return cmk.endsWith(keyId) || cmk.startsWith('alias/');
}

export class AttachmentsService {
  private retryTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly ctx: AgentContext,
    private readonly disks: DisksService,
    private readonly psk: PskStore,
    private readonly nbdAddress: () => HostPort | null,
  ) {}

  list(): AttachmentView[] {
    const conns = this.ctx.nbd.connections();
    return this.ctx.catalog.listAttachments().map((a) => this.viewOf(a, conns));
  }

  show(disk: string): AttachmentView {
    const a = this.ctx.catalog.getAttachment(disk);
    if (!a) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${disk} is not attached`);
    return this.viewOf(a, this.ctx.nbd.connections());
  }

  private viewOf(a: AttachmentRow, conns: ReturnType<AgentContext['nbd']['connections']>): AttachmentView {
    const hp = this.nbdAddress();
    const host = hp ? formatHostPort(hp) : 'HOST:PORT';
    const path = `${host}/${encodeURIComponent(a.exportName)}`;
    const x509Dir = a.requireTls && !a.tlsPskIdentity ? this.ctx.dirs.tlsClientDir : null;
    let uri = `nbd://${path}`;
    if (a.tlsPskIdentity) uri = `nbds://${pskUserInfo(a.tlsPskIdentity)}@${path}?tls-psk-file=${encodeURIComponent(this.psk.path)}`;
    else if (x509Dir) uri = `nbds://${path}?tls-certificates=${encodeURIComponent(x509Dir)}`;
    return {
      disk: a.disk,
      export: a.exportName,
      readOnly: a.readOnly,
      requireTls: a.requireTls,
      tlsPskIdentity: a.tlsPskIdentity,
      tlsPskFile: a.tlsPskIdentity ? this.psk.path : null,
      tlsCertificatesDir: x509Dir,
      tlsClientCertificate: x509Dir !== null && this.ctx.nbd.tlsKinds().clientCertificates,
      uri,
      createdAt: a.createdAt,
      state: this.disks.stateOf(a.disk).state,
      clients: conns
        .filter((c) => c.export === a.exportName)
        .map((c) => ({
          id: c.id,
          remote: c.remote,
          since: c.since.toISOString(),
          tls: c.tls,
          pskIdentity: c.pskIdentity ?? null,
          inflight: c.inflight,
          state: c.state,
          native: c.native,
        })),
    };
  }

  async attach(req: AttachRequest): Promise<AttachmentView> {
    const disk = req.disk;
    return this.ctx.locks.run(`disk:${disk}`, async () => {
      this.disks.row(disk); // 404 for an unknown disk
      const exportName = checkName(req.export ?? disk, 'export');
      if (this.ctx.catalog.getAttachment(disk)) {
        throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${disk} is already attached (export ${this.ctx.catalog.getAttachment(disk)!.exportName})`);
      }
      if (this.ctx.catalog.getAttachmentByExport(exportName) || this.ctx.nbd.hasExport(exportName)) {
        throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `NBD export ${exportName} is in use by another attachment`);
      }
      if (req.requireTls === false && req.tlsPskIdentity) {
        throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'a TLS PSK identity implies requireTls');
      }
      if (req.tlsPskIdentity !== undefined) checkPskIdentity(req.tlsPskIdentity);
      const row: AttachmentRow = {
        disk,
        exportName,
        readOnly: Boolean(req.readOnly),
        requireTls: Boolean(req.requireTls) || req.tlsPskIdentity !== undefined,
        tlsPskIdentity: req.tlsPskIdentity ?? null,
        createdAt: new Date().toISOString(),
      };
      this.checkReachable(row);
      if (row.tlsPskIdentity && this.psk.ensure(row.tlsPskIdentity)) {
        this.ctx.logger.info({ identity: row.tlsPskIdentity, file: this.psk.path }, 'created a TLS PSK for a new identity');
      }
      await this.openAndExport(row, { keyMustLoad: true });
      try {
        this.ctx.catalog.insertAttachment(row);
      } catch (err) {
        await this.closeExport(disk).catch(() => undefined);
        throw err;
      }
      this.ctx.bumpVersion();
      this.ctx.logger.info({ disk, export: exportName, readOnly: row.readOnly, requireTls: row.requireTls }, 'disk attached');
      return this.show(disk);
    });
  }

  async detach(disk: string): Promise<{ detached: string; export: string }> {
    return this.ctx.locks.run(`disk:${disk}`, async () => {
      const row = this.ctx.catalog.getAttachment(disk);
      if (!row) {
        this.disks.row(disk);
        throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `disk ${disk} is not attached`);
      }
      // The catalog first: when it cannot record the detach (the state folder's file system is
      // full or read-only), the detach fails with nothing changed and the export keeps serving.
      // Closing the export first left a row saying "attached" for a disk that served nothing,
      // which the next start attached again. A kill -9 after this line leaves a detached disk.
      this.ctx.catalog.deleteAttachment(disk);
      await this.closeExport(disk);
      this.ctx.bumpVersion();
      this.ctx.logger.info({ disk, export: row.exportName }, 'disk detached');
      return { detached: disk, export: row.exportName };
    });
  }

  /**
   * Start-up: re-attach every attachment of the catalog. A disk whose key cannot be unwrapped
   * now (CMK disabled, grant revoked, KMS down) is still exported -- its I/O is refused -- and the
   * agent keeps retrying the unwrap in the background.
   */
  async restoreAll(retryMs: number): Promise<void> {
    for (const row of this.ctx.catalog.listAttachments()) {
      try {
        await this.openAndExport(row, { keyMustLoad: false });
      } catch (err) {
        this.ctx.logger.error({ disk: row.disk, export: row.exportName, code: errorCodeOf(err), err: (err as Error).message }, 'could not restore an attachment');
      }
    }
    this.ctx.bumpVersion();
    this.retryTimer = setInterval(() => void this.retryKeys(null), retryMs);
    this.retryTimer.unref();
    // The poll is the fallback (no event stream, a missed event); a KMS event saying access may be
    // back (key enabled, grant created) retries at once, so such a disk resumes in milliseconds
    // like one whose key was wiped while it ran.
    this.ctx.guard.on('access-may-return', this.onAccessMayReturn);
  }

  private readonly onAccessMayReturn = (ev: AccessMayReturnEvent): void => void this.retryKeys(ev.keyId);

  /**
   * Retries the unwrap of every export restored without its key (those on `keyId`, if given).
   * With --resume manual only the operator's resume does: the background poll and the KMS events
   * used to load such a key too, so the disks of a CMK revoked while the agent was down served
   * again on EnableKey/CreateGrant with no resume, unlike a disk whose key was wiped while the
   * agent ran. They only check whether access is back (checkAccessBack), to say so. Returns the
   * disks on `keyId` still without their key.
   */
  private async retryKeys(keyId: string | null, operator = false): Promise<OpenDisk[]> {
    const stillKeyless: OpenDisk[] = [];
    const waitForOperator = !operator && this.ctx.guard.resumePolicy === 'manual';
    for (const entry of this.ctx.open.all()) {
      if (!entry.keyError || (keyId !== null && !mayUseCmk(entry, keyId))) continue;
      await this.ctx.locks.run(`disk:${entry.disk}`, async () => {
        if (!entry.keyError || this.ctx.open.get(entry.disk) !== entry) return;
        if (waitForOperator) {
          await this.checkAccessBack(entry);
          return;
        }
        try {
          await this.ctx.guard.open(entry.volume, entry.disk);
          entry.keyError = null;
          entry.accessBack = false;
          this.ctx.bumpVersion();
          this.ctx.logger.info({ disk: entry.disk, operator }, 'disk key loaded on retry; serving again');
        } catch (err) {
          entry.keyError = keyLoadError(err);
          stillKeyless.push(entry);
        }
      });
    }
    return stillKeyless;
  }

  /**
   * --resume manual, a disk restored without its key: asks the KMS whether it would unwrap the key
   * now (without loading it), so that the disk says "access is back, waiting for kmsdisk key
   * resume" as one whose key was wiped while the agent ran does. Without this it kept the old
   * deny cause and no message once the CMK was enabled, with nothing telling the operator to act.
   */
  private async checkAccessBack(entry: OpenDisk): Promise<void> {
    const before = { back: entry.accessBack === true, reason: entry.keyError?.reason };
    try {
      await this.ctx.guard.checkAccess(entry.volume);
      entry.accessBack = true;
    } catch (err) {
      entry.accessBack = false;
      entry.keyError = keyLoadError(err);
    }
    if (entry.accessBack && !before.back) {
      this.ctx.logger.info({ disk: entry.disk, keyId: entry.volume.header.kms.keyId }, 'disk key access is back; waiting for an operator to resume (--resume manual)');
    }
    if (entry.accessBack !== before.back || entry.keyError?.reason !== before.reason) this.ctx.bumpVersion();
  }

  /**
   * --resume manual, `POST /v1/keys/:keyId/resume`: loads the key of the exports on CMK `keyId`
   * (a key id) that were restored without it. False when there is none; throws, naming the disks
   * and the KMS's reason, when the KMS still refuses.
   */
  async resumeRestored(keyId: string): Promise<boolean> {
    if (!this.ctx.open.all().some((e) => e.keyError && mayUseCmk(e, keyId))) return false;
    const still = await this.retryKeys(keyId, true);
    if (still.length > 0) {
      const reason = still[0]!.keyError?.reason ?? 'unknown';
      throw new KmsdiskError('KMSDISK_ERR_KEY_REVOKED', `access to CMK ${keyId} is still denied (${reason}); disk(s) ${still.map((e) => e.disk).join(', ')} keep refusing I/O`, {
        details: { keyId, cause: reason, disks: still.map((e) => e.disk) },
      });
    }
    return true;
  }

  /**
   * Refuses a TLS-only attachment no client could open: without a PSK identity it is for x509
   * clients, and the agent must have a certificate for them.
   */
  private checkReachable(row: AttachmentRow): void {
    if (!row.requireTls || row.tlsPskIdentity || this.ctx.nbd.tlsKinds().x509) return;
    throw new KmsdiskError(
      'KMSDISK_ERR_INVALID_ARGUMENT',
      `export ${row.exportName}: TLS without a PSK identity (--require-tls alone) admits x509 clients only, and this agent has no certificate; ` +
        'start `kmsdisk serve` with --tls-cert FILE --tls-key FILE (env KMSDISK_TLS_CERT, KMSDISK_TLS_KEY), or attach with --tls-psk-identity ID',
    );
  }

  private async openAndExport(row: AttachmentRow, opts: { keyMustLoad: boolean }): Promise<void> {
    this.checkReachable(row);
    const diskRow = this.disks.row(row.disk);
    let volume: Volume;
    try {
      volume = await Volume.open(diskRow.path, { readOnly: row.readOnly });
    } catch (err) {
      // The volume file itself is unusable (corrupt header, wrong size, gone): the disk's state
      // must say so from now on, not the header cached from an earlier good read.
      if (VOLUME_FILE_ERRORS.has(errorCodeOf(err) ?? '')) await this.disks.markUnreadable(diskRow, err);
      throw err;
    }
    let keyError: KeyLoadError | null = null;
    try {
      await this.ctx.guard.open(volume, row.disk);
    } catch (err) {
      if (opts.keyMustLoad) {
        await volume.close();
        // An attach the KMS refuses answers like a disk create does (ECS codes, the
        // `key authorize` hint), not with the raw KMS code of the unwrap.
        throw cmkRefusal(err, volume.header.kms.keyId);
      }
      keyError = keyLoadError(err);
      this.ctx.logger.warn({ disk: row.disk, code: keyError.code, cause: keyError.reason }, 'attached disk restored without its key: I/O is refused until the KMS allows the unwrap');
    }
    try {
      this.ctx.nbd.addExport(row.exportName, {
        device: volume,
        description: `kmsdisk ${row.disk}`,
        readOnly: row.readOnly,
        requireTls: row.requireTls,
        // PSK identities are per export: each is created by the attach that names it, and only
        // attachments naming it admit it (naming it again is how it is shared). A TLS-only
        // attachment without one is for certificate clients; left open to every identity in
        // keys.psk, a key handed out for one export would open all of them.
        ...(row.tlsPskIdentity ? { tlsPskIdentities: [row.tlsPskIdentity] } : row.requireTls ? { tlsPskIdentities: [], tlsX509: true } : {}),
      });
    } catch (err) {
      this.ctx.guard.close(volume);
      await volume.close();
      throw err;
    }
    this.ctx.open.set({ disk: row.disk, volume, exportName: row.exportName, keyError });
    // Not loaded: kmsdisk_disk_key_usable says 0, as for a key wiped while the agent ran. The key
    // guard only has series for the disks it holds, so a disk restored without its key had none,
    // and an alert on `kmsdisk_disk_key_usable == 0` missed it. (Its retry, through guard.open,
    // sets the same series to 1.)
    if (keyError) this.ctx.metrics.diskKeyState.set({ disk: row.disk, key_id: volume.header.kms.keyId }, 0);
    await this.disks.refreshHeader(diskRow);
  }

  /** Drain and remove the export, wipe the key, close the volume. */
  private async closeExport(disk: string): Promise<void> {
    const entry = this.ctx.open.get(disk);
    if (!entry) return;
    if (this.ctx.nbd.hasExport(entry.exportName)) await this.ctx.nbd.removeExport(entry.exportName, { drain: true });
    this.ctx.guard.close(entry.volume);
    // guard.close drops the series of a disk it held; one restored without its key is ours.
    if (entry.keyError) this.ctx.metrics.diskKeyState.remove({ disk, key_id: entry.volume.header.kms.keyId });
    await entry.volume.close();
    this.ctx.open.delete(disk);
    // The export is gone: so are its series on /metrics (the NBD hook counts a connection when it
    // picks its export, so one closing after the drain does not bring them back).
    removeExportSeries(this.ctx.metrics, entry.exportName);
  }

  /** Agent stop: close every export and volume; the catalog keeps the attachments for the next start. */
  async closeAll(): Promise<void> {
    if (this.retryTimer) clearInterval(this.retryTimer);
    this.retryTimer = null;
    this.ctx.guard.off('access-may-return', this.onAccessMayReturn);
    for (const entry of this.ctx.open.all()) {
      await this.closeExport(entry.disk).catch((err: unknown) =>
        this.ctx.logger.warn({ disk: entry.disk, err: (err as Error).message }, 'closing an export at stop failed'),
      );
    }
  }
}
