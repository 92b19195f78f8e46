// The key guard: unwraps each open volume's DEK into a native key slot, keeps one lease per CMK
// in use, watches the KMS event stream, and wipes every slot of a CMK the moment access to it
// is denied -- then re-unwraps when access returns.
//
// Why the wipe path is synchronous: the emulator's synchronous revocation returns DisableKey /
// RevokeGrant only after every agent acknowledged the event, and the ack is sent when our event
// handler's promise resolves. So the handler wipes (native, explicit_bzero) before it awaits
// anything; when the KMS call returns, no slot of that CMK holds key material any more.
//
// Races the guard closes:
//  - a renewal or open whose ExportDataKey was answered before a revocation but arrives after
//    it must not bring the key back: every deny bumps the lease's `generation`, and a result is
//    applied only if the generation it started under is still current;
//  - the NBD server checks `volume.keyUsable` right before sending read data, so a read that was
//    decrypting when the wipe ran replies with an error, never plaintext.

import { EventEmitter } from 'node:events';
import { KmsdiskError, errorCodeOf } from '../errors.js';
import { KeySlot } from '../crypto/index.js';
import type { KeyService } from '../kms/key-service.js';
import { subscribeKmsEvents, type KmsEventsConfig, type KmsEventsOptions } from '../kms/events-client.js';
import { isRevokingEvent, type KmsEvent } from '../kms/emulator/model.js';
import type { Metrics } from '../metrics/registry.js';
import type { Logger } from '../util/logger.js';
import { classifyKmsFailure, type DenyCause } from './deny-causes.js';
import { LeaseTimer } from './lease.js';
import { nowMs } from './clock.js';

/** What the guard needs from a volume (src/volume/Volume implements it). */
export interface GuardedVolume {
  readonly header: {
    readonly kms: { readonly keyId: string; readonly ciphertextBlob: string; readonly encryptionContext: Record<string, string> };
    /** Hex of the slot's 16-byte key-check value. */
    readonly keyCheck: string;
  };
  attachKey(slot: KeySlot): void;
  detachKey(): void;
  readonly keyUsable: boolean;
}


export type RevocationMode = 'immediate' | 'on-attach';
export type ResumeMode = 'auto' | 'manual';

/**
 * - active: the agent may use the CMK; slots are loaded.
 * - revoked: access denied; every slot of the CMK is wiped.
 * - pending: access is back, waiting for `resume(keyId)` (--resume manual); slots still wiped.
 * - revoked-pending-detach: access denied in on-attach mode; attached disks keep serving,
 *   the next open is refused.
 */
export type KeyAccessState = 'active' | 'revoked' | 'pending' | 'revoked-pending-detach';

export interface KeyStatus {
  keyId: string;
  state: KeyAccessState;
  cause?: DenyCause;
  /** Epoch ms (sub-ms resolution) of the revocation signal and of the wipe. */
  revokedAt?: number;
  wipedAt?: number;
  disks: string[];
  lease: { intervalMs: number; renewals: number; lastRenewalAt?: number; failingSince?: number };
}

export interface RevokedEvent {
  keyId: string;
  cause: DenyCause;
  /** What told us: the KMS event stream, a lease renewal, or a failed open. */
  source: 'event' | 'lease';
  /** Epoch ms when the signal arrived. */
  at: number;
  /** Epoch ms when the last slot was wiped; null in on-attach mode (nothing wiped). */
  wipedAt: number | null;
  /** process.hrtime.bigint() at the wipe (null in on-attach mode). */
  wipedAtHr: bigint | null;
  disks: string[];
}

export interface RestoredEvent {
  keyId: string;
  at: number;
  disks: string[];
}

/**
 * A KMS event that may give access back (a key enabled, a grant to us created, our AccessKey
 * re-activated), emitted whether or not a slot of ours holds the key: a disk restored at start
 * without its key has no slot yet, and whoever retries its open can do it now rather than at
 * its next poll. keyId is null for AccessKeyChanged (any key).
 */
export interface AccessMayReturnEvent {
  keyId: string | null;
}

export interface KeyGuardOptions {
  kms: KeyService;
  /**
   * KMS event stream (the emulator's GET /events): its config, or config plus client options;
   * null or absent = lease only (a remote KMS).
   */
  events?: KmsEventsConfig | { config: KmsEventsConfig; options?: KmsEventsOptions } | null;
  leaseIntervalMs?: number;
  /** How long the KMS may be unreachable before the keys are wiped; 0 = fail closed at once. */
  offlineGraceMs?: number;
  /**
   * How long a lease renewal may go unanswered before the KMS counts as unreachable since the
   * renewal was issued (default 3000: the KMS client's per-request timeout). Without it a KMS
   * that accepts connections but never answers would keep keys usable for every retry of the
   * client (4 x 3 s), whatever the offline grace.
   */
  renewalTimeoutMs?: number;
  revocation?: RevocationMode;
  resume?: ResumeMode;
  /**
   * Names and AccessKeyIds the KMS knows the agent by: grant and AccessKey events naming one of
   * them revoke at once. Events naming another principal are ignored; when this list is empty,
   * such events are verified with an immediate lease renewal instead.
   */
  principals?: string[];
  logger: Logger;
  metrics?: Metrics;
}

interface OpenEntry {
  volume: GuardedVolume;
  diskName: string;
  keyId: string;
  slot: KeySlot | null;
}

interface Lease {
  keyId: string;
  entries: Set<OpenEntry>;
  timer: LeaseTimer;
  state: KeyAccessState;
  cause?: DenyCause;
  revokedAt?: number;
  wipedAt?: number;
  /** Bumped by every deny: results of KMS calls started under an older generation are stale. */
  generation: number;
  failingSince: number | null;
  renewals: number;
  lastRenewalAt?: number;
  nextIndex: number;
  restoring: Promise<void> | null;
}

/** Retry pace for transient failures inside the offline grace. */
const TRANSIENT_RETRY_MS = 200;

export class KeyGuard extends EventEmitter {
  private readonly kms: KeyService;
  private readonly leaseIntervalMs: number;
  private readonly offlineGraceMs: number;
  private readonly renewalTimeoutMs: number;
  private readonly revocation: RevocationMode;
  private readonly resumeMode: ResumeMode;
  private readonly principals: Set<string>;
  private readonly logger: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly leases = new Map<string, Lease>();
  private readonly byVolume = new Map<GuardedVolume, OpenEntry>();
  private unsubscribe: (() => void | Promise<void>) | null = null;
  private subscription: { readonly connected: boolean; reconnectNow(): void } | null = null;
  private stopped = false;

  constructor(opts: KeyGuardOptions) {
    super();
    this.kms = opts.kms;
    this.leaseIntervalMs = opts.leaseIntervalMs ?? 1000;
    this.offlineGraceMs = opts.offlineGraceMs ?? 0;
    this.renewalTimeoutMs = opts.renewalTimeoutMs ?? 3000;
    this.revocation = opts.revocation ?? 'immediate';
    this.resumeMode = opts.resume ?? 'auto';
    this.principals = new Set(opts.principals ?? []);
    this.logger = opts.logger;
    this.metrics = opts.metrics;
    if (!(this.leaseIntervalMs >= 10)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'leaseIntervalMs must be at least 10 ms');
    if (!(this.offlineGraceMs >= 0)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'offlineGraceMs must be >= 0');
    if (!(this.renewalTimeoutMs > 0)) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'renewalTimeoutMs must be > 0');
    if (this.revocation !== 'immediate' && this.revocation !== 'on-attach') {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `revocation must be immediate or on-attach, not ${String(this.revocation)}`);
    }
    if (this.resumeMode !== 'auto' && this.resumeMode !== 'manual') {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `resume must be auto or manual, not ${String(this.resumeMode)}`);
    }
    if (opts.events) {
      const { config, options } = 'config' in opts.events ? opts.events : { config: opts.events, options: undefined };
      const user = options ?? {};
      const sub = subscribeKmsEvents(config, (ev) => this.onKmsEvent(ev), {
        logger: this.logger,
        ...user,
        // A broken stream may hide a revocation (or the KMS going away): let the leases check now
        // rather than at their next tick. Events missed meanwhile are replayed on reconnect.
        onDisconnected: (err) => {
          this.logger.warn({ code: err.code }, 'key guard: KMS event stream lost; renewing leases now');
          this.kickAll();
          user.onDisconnected?.(err);
        },
        // Back after a gap: events of the gap may be lost (an emulator restart empties its replay
        // buffer), and access may have come back meanwhile. One renewal per CMK settles both.
        onConnected: (info) => {
          this.kickAll();
          user.onConnected?.(info);
        },
      });
      this.subscription = sub;
      this.unsubscribe = () => sub.close();
    }
  }

  // --- public API -----------------------------------------------------------------------------

  /**
   * Unwraps the volume's DEK (ExportDataKey of the header's blob), loads it into a key slot and
   * attaches it; the volume then counts for its CMK's lease. A KMS refusal is thrown as the KMS
   * error (KMSDISK_ERR_KEY_DISABLED, ..._KMS_NO_PERMISSION, ...): nothing is attached.
   */
  async open(volume: GuardedVolume, diskName: string): Promise<void> {
    if (this.stopped) throw new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN', 'the key guard is stopped');
    if (this.byVolume.has(volume)) throw new KmsdiskError('KMSDISK_ERR_CONFLICT', `disk ${diskName} is already open`);
    const keyId = volume.header.kms.keyId;
    const lease = this.leaseFor(keyId);
    const generation = lease.generation;
    const entry: OpenEntry = { volume, diskName, keyId, slot: null };
    let slot: KeySlot;
    try {
      slot = await this.unwrap(volume);
    } catch (err) {
      this.dropLeaseIfUnused(lease);
      const failure = classifyKmsFailure(err);
      this.logger.warn({ keyId, disk: diskName, code: errorCodeOf(err), cause: failure.kind === 'deny' ? failure.cause : undefined }, 'key guard: open refused');
      throw err;
    }
    if (lease.generation !== generation || this.stopped) {
      // Access was revoked while the KMS answered: the fresh key must not be used.
      slot.wipe();
      this.dropLeaseIfUnused(lease);
      throw new KmsdiskError('KMSDISK_ERR_KEY_REVOKED', `access to CMK ${keyId} was revoked while disk ${diskName} was opening`, {
        details: { keyId, cause: lease.cause },
      });
    }
    const waitForOperator = lease.state === 'pending' || (lease.state === 'revoked' && this.resumeMode === 'manual');
    if (waitForOperator) {
      // Access is back but the operator has not resumed this CMK: register without a key.
      slot.wipe();
    } else {
      try {
        volume.attachKey(slot);
      } catch (err) {
        slot.wipe();
        this.dropLeaseIfUnused(lease);
        throw err;
      }
      entry.slot = slot;
    }
    lease.entries.add(entry);
    this.byVolume.set(volume, entry);
    if (!waitForOperator && (lease.state === 'revoked-pending-detach' || lease.state === 'revoked')) {
      // The KMS just granted an unwrap: access is back for this CMK.
      if (lease.state === 'revoked') void this.restore(lease, 'open');
      else this.setActive(lease);
    } else if (!waitForOperator) {
      this.metrics?.keyState.set({ key_id: keyId }, 1);
    }
    this.metrics?.diskKeyState.set({ disk: diskName, key_id: keyId }, entry.slot ? 1 : 0);
    lease.timer.start();
    this.logger.info({ keyId, disk: diskName, state: lease.state }, 'key guard: disk key loaded');
  }

  /** Wipes the volume's slot and forgets it; the CMK's lease ends with its last volume. */
  close(volume: GuardedVolume): void {
    const entry = this.byVolume.get(volume);
    if (!entry) return;
    this.byVolume.delete(volume);
    const lease = this.leases.get(entry.keyId);
    this.wipeEntry(entry);
    this.metrics?.diskKeyState.remove({ disk: entry.diskName, key_id: entry.keyId });
    if (lease) {
      lease.entries.delete(entry);
      this.dropLeaseIfUnused(lease);
    }
  }

  keyState(keyId: string): KeyStatus | undefined {
    const lease = this.leases.get(keyId);
    if (!lease) return undefined;
    return {
      keyId,
      state: lease.state,
      ...(lease.cause ? { cause: lease.cause } : {}),
      ...(lease.revokedAt !== undefined ? { revokedAt: lease.revokedAt } : {}),
      ...(lease.wipedAt !== undefined ? { wipedAt: lease.wipedAt } : {}),
      disks: [...lease.entries].map((e) => e.diskName),
      lease: {
        intervalMs: this.leaseIntervalMs,
        renewals: lease.renewals,
        ...(lease.lastRenewalAt !== undefined ? { lastRenewalAt: lease.lastRenewalAt } : {}),
        ...(lease.failingSince !== null ? { failingSince: lease.failingSince } : {}),
      },
    };
  }

  diskState(volume: GuardedVolume): { state: KeyAccessState; cause?: DenyCause; keyId: string } | undefined {
    const entry = this.byVolume.get(volume);
    if (!entry) return undefined;
    const lease = this.leases.get(entry.keyId);
    const state: KeyAccessState = lease?.state ?? 'revoked';
    return { keyId: entry.keyId, state, ...(lease?.cause ? { cause: lease.cause } : {}) };
  }

  /** What a denial does: wipe and refuse I/O now (immediate), or refuse the next attach only. */
  get revocationPolicy(): RevocationMode {
    return this.revocation;
  }

  /** How serving comes back once access returns: by itself, or on `resume(keyId)` only. */
  get resumePolicy(): ResumeMode {
    return this.resumeMode;
  }

  /** Every CMK the guard holds a lease for. */
  keys(): KeyStatus[] {
    return [...this.leases.keys()].map((k) => this.keyState(k)!);
  }

  /**
   * --resume manual: re-unwraps and attaches every volume of the CMK now. Throws the KMS error if
   * access is still denied (the key stays wiped).
   */
  async resume(keyId: string): Promise<void> {
    const lease = this.leases.get(keyId);
    if (!lease) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no open disk uses CMK ${keyId}`);
    if (lease.state === 'active') return;
    if (lease.state === 'revoked-pending-detach') {
      await this.renewOnce(lease);
      return;
    }
    await this.restore(lease, 'operator', true);
    if ((lease.state as KeyAccessState) !== 'active') {
      throw new KmsdiskError('KMSDISK_ERR_KEY_REVOKED', `access to CMK ${keyId} is still denied (${lease.cause ?? 'unknown'})`, {
        details: { keyId, cause: lease.cause },
      });
    }
  }

  /**
   * Whether the KMS would give the volume's DEK now, without loading it: unwrapped, checked against
   * the header's key check and wiped at once, as a lease renewal does. Throws the KMS's refusal
   * (KMSDISK_ERR_WRONG_KEY for a key that does not match). For --resume manual's disks restored
   * without their key, which hold no lease: they can say access is back before the operator resumes.
   */
  async checkAccess(volume: GuardedVolume): Promise<void> {
    if (this.stopped) throw new KmsdiskError('KMSDISK_ERR_SHUTTING_DOWN', 'the key guard is stopped');
    if (!(await this.unwrapMatches(volume))) {
      throw new KmsdiskError('KMSDISK_ERR_WRONG_KEY', `the key the KMS unwrapped for CMK ${volume.header.kms.keyId} does not match the volume's key check`);
    }
  }

  /** Unwraps the volume's DEK through the KMS, compares it with the header's key check and wipes it. */
  private async unwrapMatches(volume: GuardedVolume): Promise<boolean> {
    const temp = await this.unwrap(volume);
    try {
      return keyCheckHex(temp.keyCheckValue()) === volume.header.keyCheck;
    } finally {
      temp.wipe();
    }
  }

  /** Runs a lease renewal for the CMK now and waits for it (drills, tests, the API's "check"). */
  async renewNow(keyId: string): Promise<void> {
    const lease = this.leases.get(keyId);
    if (lease) await lease.timer.kick();
  }

  /** True once the KMS event stream is connected (always false without one). */
  get eventsLive(): boolean {
    return this.subscription?.connected ?? false;
  }

  /** Stops leases and the event stream and wipes every slot. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    for (const lease of this.leases.values()) {
      lease.generation++;
      lease.timer.stop();
      for (const entry of lease.entries) this.wipeEntry(entry);
    }
    this.leases.clear();
    this.byVolume.clear();
    const unsub = this.unsubscribe;
    this.unsubscribe = null;
    if (unsub) await unsub();
  }

  // --- event stream ---------------------------------------------------------------------------

  /**
   * Handles one KMS event. Revoking events wipe synchronously before the first await, so the
   * ack (sent when this promise resolves) is truthful.
   */
  async onKmsEvent(ev: KmsEvent): Promise<void> {
    if (this.stopped) return;
    const at = nowMs();
    const targets = this.leasesFor(ev);
    const revoking = isRevokingEvent(ev);
    const aboutUs = this.namesUs(ev.principal);
    const needsPrincipal = ev.type === 'GrantRevoked' || ev.type === 'GrantRetired' || ev.type === 'GrantCreated' || ev.type === 'AccessKeyChanged';
    if (!revoking && !(needsPrincipal && aboutUs === false)) {
      this.emit('access-may-return', { keyId: ev.keyId ?? null } satisfies AccessMayReturnEvent);
    }
    if (targets.length === 0) return;

    if (revoking && grantNeverUnwrapped(ev)) {
      // A grant to us that did not allow ExportDataKey (an application's Decrypt-only grant, say)
      // never unwrapped a slot here, so its revocation takes nothing away: wiping would only cut
      // the disks off until a renewal (or, with --resume manual, an operator) brings them back.
      this.logEvent(ev, targets.length);
      return;
    }
    if (revoking) {
      const cause = causeOfEvent(ev);
      if (!needsPrincipal || aboutUs === true) {
        // Wipe first; log after (the ack, and so the KMS call's answer, waits for this).
        for (const lease of targets) this.deny(lease, cause, at, 'event');
        this.logEvent(ev, targets.length);
        // Another grant may still cover us (GrantRevoked of one of two grants): a renewal
        // tells, and with --resume auto brings the key back.
        if (needsPrincipal) for (const lease of targets) void lease.timer.kick();
        return;
      }
      this.logEvent(ev, targets.length);
      if (aboutUs === undefined) {
        // We cannot tell whether the event is about us: ask the KMS before acknowledging.
        await Promise.all(targets.map((lease) => lease.timer.kick()));
      }
      return;
    }
    this.logEvent(ev, targets.length);
    // Access may have come back: renew now (not awaited: the ack must not wait for it).
    if (needsPrincipal && aboutUs === false) return;
    for (const lease of targets) if (lease.state !== 'active') void lease.timer.kick();
  }

  // --- internals ------------------------------------------------------------------------------

  private logEvent(ev: KmsEvent, targets: number): void {
    this.logger.info({ event: { type: ev.type, keyId: ev.keyId, state: ev.state, seq: ev.seq, principal: ev.principal }, targets }, 'key guard: KMS event');
  }

  private kickAll(): void {
    for (const lease of this.leases.values()) if (lease.entries.size > 0) void lease.timer.kick();
  }

  private leaseFor(keyId: string): Lease {
    let lease = this.leases.get(keyId);
    if (lease) return lease;
    const created: Lease = {
      keyId,
      entries: new Set(),
      state: 'active',
      generation: 0,
      failingSince: null,
      renewals: 0,
      nextIndex: 0,
      restoring: null,
      timer: new LeaseTimer({
        intervalMs: this.leaseIntervalMs,
        renew: () => this.renewOnce(created),
        onError: (err) => this.logger.error({ err, keyId }, 'key guard: lease renewal failed unexpectedly'),
      }),
    };
    this.leases.set(keyId, created);
    return created;
  }

  private dropLeaseIfUnused(lease: Lease): void {
    if (lease.entries.size > 0) return;
    lease.timer.stop();
    if (this.leases.get(lease.keyId) === lease) this.leases.delete(lease.keyId);
    this.metrics?.keyState.remove({ key_id: lease.keyId });
  }

  private leasesFor(ev: KmsEvent): Lease[] {
    if (ev.keyId !== undefined) {
      const lease = this.leases.get(ev.keyId);
      return lease && lease.entries.size > 0 ? [lease] : [];
    }
    // AccessKeyChanged concerns every CMK we use.
    return [...this.leases.values()].filter((l) => l.entries.size > 0);
  }

  /** true: the principal is us; false: someone else; undefined: we cannot tell. */
  private namesUs(principal: string | undefined): boolean | undefined {
    if (principal === undefined || this.principals.size === 0) return undefined;
    return this.principals.has(principal);
  }

  /** DEK of the volume into a fresh key slot (the Buffer from the KMS client is zeroed by import). */
  private async unwrap(volume: GuardedVolume): Promise<KeySlot> {
    const { ciphertextBlob, encryptionContext } = volume.header.kms;
    const { dek } = await this.kms.openDataKey(ciphertextBlob, encryptionContext);
    return KeySlot.import(dek);
  }

  /** One lease renewal: ExportDataKey of one open volume's blob, checked against its key check. */
  private async renewOnce(lease: Lease): Promise<number | undefined> {
    const entries = [...lease.entries];
    if (entries.length === 0 || this.stopped) return undefined;
    const entry = entries[lease.nextIndex++ % entries.length]!;
    const generation = lease.generation;
    const issuedAt = nowMs();
    // A KMS that takes the request and never answers is unreachable too: once this renewal has
    // gone unanswered for renewalTimeoutMs, and the grace (counted from the first failure) is
    // spent, wipe now rather than after the client's last retry gives up. A late answer then
    // finds the generation bumped and renews again at once (success brings the key back).
    const failingFrom = lease.failingSince ?? issuedAt;
    const overdue = setTimeout(() => this.renewalOverdue(lease, generation, failingFrom), Math.max(this.renewalTimeoutMs, failingFrom + this.offlineGraceMs - issuedAt));
    overdue.unref();
    let matches: boolean;
    try {
      matches = await this.unwrapMatches(entry.volume);
    } catch (err) {
      return this.renewalFailed(lease, err, issuedAt, generation);
    } finally {
      clearTimeout(overdue);
    }
    lease.renewals++;
    lease.lastRenewalAt = nowMs();
    if (!matches) {
      this.metrics?.leaseRenewals.inc({ key_id: lease.keyId, outcome: 'key-check-mismatch' });
      if (lease.generation === generation) this.deny(lease, 'KeyCheckMismatch', nowMs(), 'lease');
      return undefined;
    }
    this.metrics?.leaseRenewals.inc({ key_id: lease.keyId, outcome: 'ok' });
    lease.failingSince = null;
    // The KMS takes our credentials again (e.g. after EnableAccessKey): bring the event stream
    // back now rather than after its backoff, so the next revocation reaches us by event.
    this.subscription?.reconnectNow();
    if (lease.generation !== generation) return 0; // a deny arrived meanwhile: renew again at once
    if (lease.state === 'revoked-pending-detach') this.setActive(lease);
    else if (lease.state === 'revoked') {
      if (this.resumeMode === 'auto') await this.restore(lease, 'lease');
      else this.setPending(lease);
    }
    return undefined;
  }

  private renewalFailed(lease: Lease, err: unknown, issuedAt: number, generation: number): number | undefined {
    const failure = classifyKmsFailure(err);
    const code = errorCodeOf(err) ?? 'unknown';
    this.metrics?.leaseRenewals.inc({ key_id: lease.keyId, outcome: failure.kind === 'deny' ? 'denied' : 'error' });
    if (failure.kind === 'deny') {
      lease.failingSince = null;
      if (lease.generation === generation) this.deny(lease, failure.cause, nowMs(), 'lease');
      else return 0; // stale answer (state changed meanwhile): ask again at once
      return undefined;
    }
    if (lease.generation !== generation) return 0;
    lease.failingSince ??= issuedAt;
    const failingFor = nowMs() - lease.failingSince;
    if (failingFor >= this.offlineGraceMs) {
      if (lease.state === 'active' || lease.state === 'pending') {
        this.logger.warn({ keyId: lease.keyId, code, failingForMs: Math.round(failingFor), graceMs: this.offlineGraceMs }, 'key guard: KMS unreachable past the grace');
        this.deny(lease, 'KmsUnreachable', nowMs(), 'lease');
      }
      return undefined;
    }
    this.logger.warn({ keyId: lease.keyId, code, failingForMs: Math.round(failingFor), graceMs: this.offlineGraceMs }, 'key guard: lease renewal failed, retrying within the grace');
    return Math.min(TRANSIENT_RETRY_MS, this.offlineGraceMs - failingFor, this.leaseIntervalMs);
  }

  /** A renewal still unanswered past renewalTimeoutMs and the grace: the KMS is unreachable. */
  private renewalOverdue(lease: Lease, generation: number, failingFrom: number): void {
    if (this.stopped || lease.generation !== generation) return;
    lease.failingSince ??= failingFrom;
    if (lease.state !== 'active' && lease.state !== 'pending') return;
    const failingFor = nowMs() - lease.failingSince;
    // (Not counted in leaseRenewals here: the renewal is, with its outcome, when it settles.)
    this.logger.warn(
      { keyId: lease.keyId, code: 'KMSDISK_ERR_KMS_UNAVAILABLE', failingForMs: Math.round(failingFor), graceMs: this.offlineGraceMs, renewalTimeoutMs: this.renewalTimeoutMs },
      'key guard: lease renewal unanswered past the renewal timeout and the grace; KMS unreachable',
    );
    this.deny(lease, 'KmsUnreachable', nowMs(), 'lease');
  }

  /**
   * Access denied. Immediate mode: wipe every slot of the CMK *now* (no await on this path),
   * then account for it. On-attach mode: keep serving, mark the CMK, refuse the next open.
   */
  private deny(lease: Lease, cause: DenyCause, at: number, source: 'event' | 'lease'): void {
    const wasActive = lease.state === 'active';
    lease.generation++;
    if (this.revocation === 'on-attach') {
      if (lease.state !== 'active') return;
      lease.state = 'revoked-pending-detach';
      lease.cause = cause;
      lease.revokedAt = at;
      this.metrics?.revocations.inc({ key_id: lease.keyId, cause });
      this.metrics?.keyState.set({ key_id: lease.keyId }, 0);
      const disks = [...lease.entries].map((e) => e.diskName);
      this.logger.warn({ keyId: lease.keyId, cause, source, disks }, 'key guard: CMK access denied; on-attach mode keeps attached disks serving, the next attach is refused');
      this.emit('revoked', { keyId: lease.keyId, cause, source, at, wipedAt: null, wipedAtHr: null, disks } satisfies RevokedEvent);
      return;
    }
    if (lease.state === 'revoked') return; // already wiped; keep the first cause
    for (const entry of lease.entries) this.wipeEntry(entry);
    const wipedAtHr = process.hrtime.bigint();
    const wipedAt = nowMs();
    lease.state = 'revoked';
    lease.cause = cause;
    if (!wasActive) {
      // pending -> revoked: nothing was loaded, nothing more to announce.
      this.logger.warn({ keyId: lease.keyId, cause, source }, 'key guard: CMK access denied again before resume');
      return;
    }
    lease.revokedAt = at;
    lease.wipedAt = wipedAt;
    const disks = [...lease.entries].map((e) => e.diskName);
    this.metrics?.revocations.inc({ key_id: lease.keyId, cause });
    this.metrics?.revokeToWipe.observe({ key_id: lease.keyId }, Math.max(0, wipedAt - at) / 1000);
    this.metrics?.keyState.set({ key_id: lease.keyId }, 0);
    for (const e of lease.entries) this.metrics?.diskKeyState.set({ disk: e.diskName, key_id: lease.keyId }, 0);
    this.logger.warn({ keyId: lease.keyId, cause, source, disks, revokeToWipeMs: +(wipedAt - at).toFixed(3) }, 'key guard: CMK access denied, key slots wiped');
    this.emit('revoked', { keyId: lease.keyId, cause, source, at, wipedAt, wipedAtHr, disks } satisfies RevokedEvent);
  }

  private wipeEntry(entry: OpenEntry): void {
    const slot = entry.slot;
    entry.slot = null;
    if (!slot) return;
    slot.wipe();
    try {
      entry.volume.detachKey();
    } catch (err) {
      // The slot is already wiped; a volume that fails to let go of it cannot serve anyway.
      this.logger.error({ err, disk: entry.diskName }, 'key guard: detachKey failed after wipe');
    }
  }

  private setPending(lease: Lease): void {
    if (lease.state !== 'revoked') return;
    lease.state = 'pending';
    this.logger.info({ keyId: lease.keyId, cause: lease.cause }, 'key guard: CMK access is back; waiting for an operator to resume (--resume manual)');
    this.emit('access-returned', { keyId: lease.keyId, at: nowMs() });
  }

  private setActive(lease: Lease): void {
    const was = lease.state;
    // New epoch: a denial from a renewal issued before access came back must not count.
    if (was !== 'active') lease.generation++;
    lease.state = 'active';
    delete lease.cause;
    this.metrics?.keyState.set({ key_id: lease.keyId }, 1);
    if (was !== 'active') {
      this.logger.info({ keyId: lease.keyId, was }, 'key guard: CMK access restored');
      this.emit('restored', { keyId: lease.keyId, at: nowMs(), disks: [...lease.entries].map((e) => e.diskName) } satisfies RestoredEvent);
    }
  }

  /** Re-unwraps and attaches every volume of a revoked CMK; one restore at a time per CMK. */
  private restore(lease: Lease, trigger: 'lease' | 'open' | 'operator', operator = false): Promise<void> {
    if (lease.restoring) return lease.restoring;
    if (!operator && this.resumeMode === 'manual') {
      this.setPending(lease);
      return Promise.resolve();
    }
    lease.restoring = this.doRestore(lease, trigger).finally(() => {
      lease.restoring = null;
    });
    return lease.restoring;
  }

  private async doRestore(lease: Lease, trigger: string): Promise<void> {
    const generation = lease.generation;
    const loaded: OpenEntry[] = [];
    try {
      for (const entry of [...lease.entries]) {
        if (entry.slot) continue;
        const slot = await this.unwrap(entry.volume);
        if (lease.generation !== generation || !lease.entries.has(entry) || this.stopped) {
          slot.wipe();
          throw new KmsdiskError('KMSDISK_ERR_KEY_REVOKED', 'access was revoked again while restoring');
        }
        try {
          entry.volume.attachKey(slot);
        } catch (err) {
          slot.wipe();
          throw err;
        }
        entry.slot = slot;
        loaded.push(entry);
      }
    } catch (err) {
      for (const e of loaded) this.wipeEntry(e);
      const failure = classifyKmsFailure(err);
      if (failure.kind === 'deny' && lease.generation === generation) {
        lease.generation++;
        lease.cause = failure.cause;
        if (lease.state === 'pending') lease.state = 'revoked';
      }
      this.logger.warn({ keyId: lease.keyId, trigger, code: errorCodeOf(err) }, 'key guard: restore failed; the key stays wiped');
      return;
    }
    for (const e of lease.entries) this.metrics?.diskKeyState.set({ disk: e.diskName, key_id: lease.keyId }, e.slot ? 1 : 0);
    this.setActive(lease);
  }
}

/**
 * A GrantRevoked / GrantRetired whose grant did not allow ExportDataKey, the only call that loads
 * and renews the guard's slots. Without `operations` (an older emulator) it cannot tell: false.
 */
function grantNeverUnwrapped(ev: KmsEvent): boolean {
  return (ev.type === 'GrantRevoked' || ev.type === 'GrantRetired') && Array.isArray(ev.operations) && !ev.operations.includes('ExportDataKey');
}

function causeOfEvent(ev: KmsEvent): DenyCause {
  switch (ev.type) {
    case 'KeyStateChanged':
      if (ev.state === 'PendingDeletion') return 'Rejected.PendingDeletion';
      if (ev.state === 'PendingImport') return 'Rejected.PendingImport';
      return 'Rejected.Disabled';
    case 'KeyMaterialDeleted':
      return 'Rejected.PendingImport';
    case 'AccessKeyChanged':
      return 'Forbidden.AccessKey';
    default:
      return 'Forbidden.NoPermission';
  }
}

function keyCheckHex(value: Buffer | Uint8Array | string): string {
  return typeof value === 'string' ? value.toLowerCase() : Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex');
}
