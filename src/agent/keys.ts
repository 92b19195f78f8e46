// CMKs as the ECS console shows them: list the keys the agent can see, create a customer CMK
// (Origin Aliyun_KMS or EXTERNAL -- BYOK material is imported by the CLI process straight into
// the KMS, so CMK material never passes through the agent), "authorize" a CMK for the agent
// (the console's Confirm Authorization = a grant for the agent's principal), revoke that
// authorization, disable and enable. Management calls use the admin credentials.

import { KmsdiskError, errorCodeOf } from '../errors.js';
import type { GrantInfo, GrantOperation, KeyMetadata, MutationResult } from '../kms/key-service.js';
import type { AgentContext } from './context.js';

/** What "authorize" allows the agent to do with the CMK: everything the disk lifecycle needs. */
export const AGENT_GRANT_OPERATIONS: GrantOperation[] = [
  'Encrypt',
  'Decrypt',
  'GenerateDataKey',
  'GenerateDataKeyWithoutPlaintext',
  'ExportDataKey',
  'GenerateAndExportDataKey',
  'DescribeKey',
];

/**
 * The operations the agent itself calls on a CMK with its own AccessKey (GenerateAndExportDataKey
 * for a new disk, ExportDataKey to open one, DescribeKey to resolve an alias). A grant to the agent
 * that lacks one of them (say, an application's Decrypt-only grant) does not let its disks work,
 * so it is not the console's authorization.
 */
const AGENT_NEEDS: GrantOperation[] = ['GenerateAndExportDataKey', 'ExportDataKey', 'DescribeKey'];

export interface KeyView {
  keyId: string;
  aliases: string[];
  state: string;
  origin: string | null;
  description: string;
  creationDate: string | null;
  /** The service key alias/acs/ecs: usable by every principal, no authorization needed. */
  service: boolean;
  /** The agent holds a grant on the key (always true for the service key). */
  authorized: boolean;
  /** Disks whose volumes are encrypted under it. */
  disks: string[];
}

export interface KeysServiceOptions {
  /** Names the KMS may record the agent's grants under, besides its AccessKeyId. */
  principalNames: string[];
  /** Lists the disks per CMK (from the header cache). */
  disksByKey: () => Map<string, string[]>;
  /**
   * --resume manual: loads the key of the disks on a CMK (key id) restored at start-up without it,
   * which the key guard holds no lease for; false when there is none.
   */
  resumeRestored: (keyId: string) => Promise<boolean>;
}

const GRANT_NAME_PREFIX = 'kmsdisk-agent:';

/** Aliases under alias/acs/ belong to cloud services' keys (alias/acs/ecs for ECS disks). */
const SERVICE_ALIAS_PREFIX = 'alias/acs/';

/** Pending window for a CMK rolled back by `create`: the shortest the KMS allows (7-30 days). */
const ORPHAN_PENDING_WINDOW_DAYS = 7;

export interface AuthorizeResult {
  keyId: string;
  authorized: true;
  /** The service key: nothing was granted, none is needed. */
  service: boolean;
  /** The agent's grant (absent for the service key). */
  grantId?: string;
  /** A grant was created by this call. */
  created: boolean;
  /** Why nothing was done, for the service key. */
  note?: string;
}

export class KeysService {
  constructor(
    private readonly ctx: AgentContext,
    private readonly opts: KeysServiceOptions,
  ) {}

  private admin() {
    if (!this.ctx.adminKms) {
      throw new KmsdiskError(
        'KMSDISK_ERR_KMS_ACCESS_KEY',
        'this agent has no KMS admin credentials (they come from the emulator credentials file); manage keys in the KMS console instead',
      );
    }
    return this.ctx.adminKms;
  }

  private grantName(): string {
    return GRANT_NAME_PREFIX + this.ctx.agentPrincipal;
  }

  /** A grant to the agent, whatever it allows (revoking the authorization revokes them all). */
  private isAgentGrant(g: GrantInfo): boolean {
    return g.name === this.grantName() || g.granteePrincipal === this.ctx.agentPrincipal || this.opts.principalNames.includes(g.granteePrincipal);
  }

  /**
   * A grant to the agent that covers what its disks need: what `authorized` means. Any agent grant
   * used to count, so a Decrypt-only grant showed "authorized yes", `key authorize` answered
   * created:false without granting anything, and disk create kept failing with KMSUnauthorized
   * and the hint to run `key authorize`.
   */
  private authorizesAgent(g: GrantInfo): boolean {
    return this.isAgentGrant(g) && AGENT_NEEDS.every((op) => g.operations.includes(op));
  }

  async list(): Promise<KeyView[]> {
    const kms = this.ctx.adminKms ?? this.ctx.kms;
    const entries = await kms.listKeys();
    const aliases = await kms.listAliases().catch(() => []);
    const byKey = this.opts.disksByKey();
    const views = await Promise.all(
      entries.map(async (e) => {
        const meta = await kms.describeKey(e.keyId).catch(() => undefined);
        const keyAliases = aliases.filter((a) => a.keyId === e.keyId).map((a) => a.aliasName);
        const service = keyAliases.includes('alias/acs/ecs');
        let authorized = service;
        if (!service && this.ctx.adminKms) {
          const grants = await this.ctx.adminKms.listGrants(e.keyId).catch(() => [] as GrantInfo[]);
          authorized = grants.some((g) => this.authorizesAgent(g));
        } else if (!service) {
          // Without admin rights, "can the agent describe it" is the best proxy.
          authorized = meta !== undefined;
        }
        return viewOf(e.keyId, meta, keyAliases, service, authorized, byKey.get(e.keyId) ?? []);
      }),
    );
    return views.sort((a, b) => Number(b.service) - Number(a.service) || a.keyId.localeCompare(b.keyId));
  }

  async create(req: { description?: string; origin?: 'Aliyun_KMS' | 'EXTERNAL'; alias?: string }): Promise<KeyView> {
    const admin = this.admin();
    if (req.alias !== undefined && !/^alias\/[a-zA-Z0-9:/_-]{1,255}$/.test(req.alias)) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', `alias must look like alias/NAME, got ${JSON.stringify(req.alias)}`);
    }
    if (req.alias?.startsWith('alias/acs/')) throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'alias/acs/ is reserved for service keys');
    // CreateKey and CreateAlias are two KMS calls: check the alias first so the common mistake
    // (an alias that is taken) creates nothing. Another client can still take it in between;
    // then the new key is rolled back below.
    if (req.alias) await this.refuseTakenAlias(req.alias);
    const meta = await admin.createKey({
      ...(req.description !== undefined ? { description: req.description } : {}),
      origin: req.origin ?? 'Aliyun_KMS',
    });
    if (req.alias) {
      try {
        await admin.createAlias(req.alias, meta.keyId);
      } catch (err) {
        throw await this.rollBackCreate(meta.keyId, req.alias, err);
      }
    }
    this.ctx.logger.info({ keyId: meta.keyId, origin: meta.origin }, 'customer CMK created');
    return viewOf(meta.keyId, meta, req.alias ? [req.alias] : [], false, false, []);
  }

  /**
   * AliasAlreadyExists, the code CreateAlias would give, when `alias` names a CMK already.
   * ListAliases rather than DescribeKey(alias): a free alias must not count as a failed KMS
   * call in kmsdisk_kms_errors_total.
   */
  private async refuseTakenAlias(alias: string): Promise<void> {
    const owner = (await this.admin().listAliases()).find((a) => a.aliasName === alias)?.keyId;
    if (owner !== undefined) {
      throw new KmsdiskError('KMSDISK_ERR_ALREADY_EXISTS', `the alias ${alias} already exists (CMK ${owner}); no CMK was created`, {
        ecsCode: 'AliasAlreadyExists',
        details: { alias, keyId: owner },
      });
    }
  }

  /**
   * CreateAlias failed after CreateKey: schedule the new, alias-less key for deletion (KMS has no
   * immediate delete; the shortest pending window is 7 days) and return the original error,
   * saying what happened to the key.
   */
  private async rollBackCreate(keyId: string, alias: string, err: unknown): Promise<unknown> {
    let note: string;
    let rolledBack = false;
    try {
      await this.admin().scheduleKeyDeletion(keyId, ORPHAN_PENDING_WINDOW_DAYS);
      rolledBack = true;
      note = `the CMK ${keyId} created for it was scheduled for deletion in ${ORPHAN_PENDING_WINDOW_DAYS} days`;
      this.ctx.logger.warn({ keyId, alias, code: errorCodeOf(err) }, 'creating the alias failed: the new CMK was scheduled for deletion');
    } catch (rbErr) {
      note = `the CMK ${keyId} created for it could not be scheduled for deletion (${errorCodeOf(rbErr) ?? 'error'}): schedule its deletion in the KMS`;
      this.ctx.logger.error({ keyId, alias, code: errorCodeOf(err), rollbackCode: errorCodeOf(rbErr) }, 'creating the alias failed and the new CMK could not be rolled back');
    }
    if (!(err instanceof KmsdiskError)) return err;
    return new KmsdiskError(err.code, `${err.message} (${note})`, {
      cause: err,
      ...(err.ecsCode ? { ecsCode: err.ecsCode } : {}),
      ...(err.requestId ? { requestId: err.requestId } : {}),
      details: { ...err.details, alias, orphanKeyId: keyId, orphanScheduledForDeletion: rolledBack },
    });
  }

  private async resolve(keyId: string): Promise<KeyMetadata> {
    return this.admin().describeKey(keyId);
  }

  /**
   * The service alias (alias/acs/...) of a resolved key, or undefined for a customer CMK. By the
   * KMS's aliases, not by the argument's spelling: the key id or ARN of the service key counts.
   */
  private async serviceAlias(arg: string, meta: KeyMetadata): Promise<string | undefined> {
    if (arg.startsWith(SERVICE_ALIAS_PREFIX)) return arg;
    const aliases = await this.admin().listAliases(meta.keyId);
    return aliases.find((a) => a.aliasName.startsWith(SERVICE_ALIAS_PREFIX))?.aliasName;
  }

  /**
   * The console's "Confirm Authorization": a grant for the agent. Idempotent. The service key
   * needs none (every disk may use it, as in ECS): authorizing it succeeds without a grant, so a
   * script can authorize whatever CMK it is about to use.
   */
  async authorize(keyId: string): Promise<AuthorizeResult> {
    const admin = this.admin();
    const meta = await this.resolve(keyId);
    const service = await this.serviceAlias(keyId, meta);
    if (service) {
      return { keyId: meta.keyId, authorized: true, service: true, created: false, note: `the service key ${service} needs no authorization` };
    }
    const existing = (await admin.listGrants(meta.keyId)).find((g) => this.authorizesAgent(g));
    if (existing) return { keyId: meta.keyId, authorized: true, service: false, grantId: existing.grantId, created: false };
    const g = await admin.createGrant({
      keyId: meta.keyId,
      granteePrincipal: this.ctx.agentPrincipal,
      operations: AGENT_GRANT_OPERATIONS,
      name: this.grantName(),
    });
    this.ctx.logger.info({ keyId: meta.keyId, grantId: g.grantId }, 'CMK authorized for the agent');
    // Disks of this CMK that were revoked come back through the key guard (event stream/lease).
    this.ctx.bumpVersion();
    return { keyId: meta.keyId, authorized: true, service: false, grantId: g.grantId, created: true };
  }

  /**
   * Revokes every grant the agent holds on the CMK: its disks stop serving. Refused for the
   * service key: its use is not an authorization that can be taken away, and answering
   * "authorized false" would claim its disks stopped when they did not.
   */
  async revokeAuthorization(keyId: string): Promise<{ keyId: string; authorized: false; revokedGrants: string[]; revocationAcks?: MutationResult['revocationAcks'] }> {
    const admin = this.admin();
    const meta = await this.resolve(keyId);
    const service = await this.serviceAlias(keyId, meta);
    if (service) {
      throw new KmsdiskError(
        'KMSDISK_ERR_INVALID_ARGUMENT',
        `the service key ${service} needs no authorization, so there is none to revoke (it cannot be disabled either); to stop a disk on it from serving, detach the disk`,
        { details: { keyId: meta.keyId, service: true } },
      );
    }
    const grants = (await admin.listGrants(meta.keyId)).filter((g) => this.isAgentGrant(g));
    const revoked: string[] = [];
    let acks: MutationResult['revocationAcks'];
    for (const g of grants) {
      const r = await admin.revokeGrant(meta.keyId, g.grantId);
      revoked.push(g.grantId);
      acks = r.revocationAcks ?? acks;
    }
    this.ctx.logger.info({ keyId: meta.keyId, grants: revoked.length }, 'CMK authorization revoked');
    this.ctx.bumpVersion();
    return { keyId: meta.keyId, authorized: false, revokedGrants: revoked, ...(acks ? { revocationAcks: acks } : {}) };
  }

  async disable(keyId: string): Promise<{ keyId: string; state: string; revocationAcks?: MutationResult['revocationAcks'] }> {
    const r = await this.admin().disableKey(keyId).catch((err: unknown) => {
      throw serviceKeyGuard(err, keyId, 'disabled');
    });
    this.ctx.bumpVersion();
    return { ...(await this.stateOf(keyId)), ...(r.revocationAcks ? { revocationAcks: r.revocationAcks } : {}) };
  }

  /**
   * The key id and state of a CMK as `key list` shows them, after a disable or enable. Those used
   * to echo the argument and a fixed state, so `key disable alias/x --json` answered
   * {"keyId":"alias/x"}: a script could not match it against `key list --json` by KeyId.
   */
  private async stateOf(keyId: string): Promise<{ keyId: string; state: string }> {
    const meta = await this.resolve(keyId);
    return { keyId: meta.keyId, state: meta.keyState };
  }

  /** --resume manual: re-unwrap and serve the disks of a CMK whose access came back. */
  async resume(keyId: string): Promise<{ keyId: string; state: string }> {
    const leases = this.ctx.guard.keys();
    const lease = leases.find((k) => k.keyId === keyId);
    if (!lease) {
      // Accept an alias or ARN: resolve it to the key id the guard knows.
      const meta = await (this.ctx.adminKms ?? this.ctx.kms).describeKey(keyId).catch(() => undefined);
      const byId = meta ? leases.find((k) => k.keyId === meta.keyId) : undefined;
      if (!byId) {
        // Disks restored at start-up without their key (CMK revoked while the agent was down)
        // have no lease: this used to answer "no attached disk uses CMK" while they were attached
        // and refusing I/O, and, with --resume manual, left them nothing that would serve them.
        if (await this.opts.resumeRestored(meta?.keyId ?? keyId)) return { keyId: meta?.keyId ?? keyId, state: 'active' };
        throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no attached disk uses CMK ${keyId}`);
      }
      keyId = byId.keyId;
    }
    await this.ctx.guard.resume(keyId);
    // A CMK can have both: disks whose key was wiped while the agent ran and disks restored without it.
    await this.opts.resumeRestored(keyId);
    this.ctx.bumpVersion();
    return { keyId, state: this.ctx.guard.keyState(keyId)?.state ?? 'active' };
  }

  /** The key guard's view: one lease per CMK in use, its state and renewals. */
  leases(): ReturnType<AgentContext['guard']['keys']> {
    return this.ctx.guard.keys();
  }

  async enable(keyId: string): Promise<{ keyId: string; state: string }> {
    await this.admin().enableKey(keyId).catch((err: unknown) => {
      throw serviceKeyGuard(err, keyId, 'enabled');
    });
    this.ctx.bumpVersion();
    return this.stateOf(keyId);
  }
}

/**
 * DisableKey or EnableKey on the service key: a conflict (exit 4), whichever way the key was
 * named. By the KMS's answer (the emulator refuses management of the service key with
 * UnsupportedOperation), not only by an alias/acs/ spelling: its key id or ARN was a KMS_REQUEST
 * usage error (exit 2) with the KMS's raw text. The service key is always enabled: enabling it
 * is refused the same way as disabling it, not reported as done.
 */
function serviceKeyGuard(err: unknown, keyId: string, verb: 'disabled' | 'enabled'): unknown {
  const serviceRefusal = err instanceof KmsdiskError && err.ecsCode === 'UnsupportedOperation';
  if (errorCodeOf(err) === 'KMSDISK_ERR_KMS_REQUEST' && (serviceRefusal || keyId.startsWith('alias/acs/'))) {
    const why = verb === 'disabled' ? 'it cannot be disabled' : 'it is always enabled and cannot be managed';
    return new KmsdiskError('KMSDISK_ERR_CONFLICT', `${keyId} is a service key: ${why}`, { cause: err });
  }
  return err;
}

function viewOf(keyId: string, meta: KeyMetadata | undefined, aliases: string[], service: boolean, authorized: boolean, disks: string[]): KeyView {
  return {
    keyId,
    aliases,
    state: meta?.keyState ?? 'Unknown',
    origin: meta?.origin ?? null,
    description: meta?.description ?? '',
    creationDate: meta?.creationDate ?? null,
    service,
    authorized,
    disks,
  };
}
