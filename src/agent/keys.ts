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
}

const GRANT_NAME_PREFIX = 'kmsdisk-agent:';

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

  private isAgentGrant(g: GrantInfo): boolean {
    return g.name === this.grantName() || g.granteePrincipal === this.ctx.agentPrincipal || this.opts.principalNames.includes(g.granteePrincipal);
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
          authorized = grants.some((g) => this.isAgentGrant(g));
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
    const meta = await admin.createKey({
      ...(req.description !== undefined ? { description: req.description } : {}),
      origin: req.origin ?? 'Aliyun_KMS',
    });
    if (req.alias) await admin.createAlias(req.alias, meta.keyId);
    this.ctx.logger.info({ keyId: meta.keyId, origin: meta.origin }, 'customer CMK created');
    return viewOf(meta.keyId, meta, req.alias ? [req.alias] : [], false, false, []);
  }

  private async resolve(keyId: string): Promise<KeyMetadata> {
    return this.admin().describeKey(keyId);
  }

  /** The console's "Confirm Authorization": a grant for the agent. Idempotent. */
  async authorize(keyId: string): Promise<{ keyId: string; authorized: true; grantId: string; created: boolean }> {
    const admin = this.admin();
    const meta = await this.resolve(keyId);
    const existing = (await admin.listGrants(meta.keyId)).find((g) => this.isAgentGrant(g));
    if (existing) return { keyId: meta.keyId, authorized: true, grantId: existing.grantId, created: false };
    const g = await admin.createGrant({
      keyId: meta.keyId,
      granteePrincipal: this.ctx.agentPrincipal,
      operations: AGENT_GRANT_OPERATIONS,
      name: this.grantName(),
    });
    this.ctx.logger.info({ keyId: meta.keyId, grantId: g.grantId }, 'CMK authorized for the agent');
    // Disks of this CMK that were revoked come back through the key guard (event stream/lease).
    this.ctx.bumpVersion();
    return { keyId: meta.keyId, authorized: true, grantId: g.grantId, created: true };
  }

  /** Revokes every grant the agent holds on the CMK: its disks stop serving. */
  async revokeAuthorization(keyId: string): Promise<{ keyId: string; authorized: false; revokedGrants: string[]; revocationAcks?: MutationResult['revocationAcks'] }> {
    const admin = this.admin();
    const meta = await this.resolve(keyId);
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
      throw serviceKeyGuard(err, keyId);
    });
    this.ctx.bumpVersion();
    return { keyId, state: 'Disabled', ...(r.revocationAcks ? { revocationAcks: r.revocationAcks } : {}) };
  }

  /** --resume manual: re-unwrap and serve the disks of a CMK whose access came back. */
  async resume(keyId: string): Promise<{ keyId: string; state: string }> {
    const leases = this.ctx.guard.keys();
    const lease = leases.find((k) => k.keyId === keyId);
    if (!lease) {
      // Accept an alias or ARN: resolve it to the key id the guard knows.
      const meta = await (this.ctx.adminKms ?? this.ctx.kms).describeKey(keyId).catch(() => undefined);
      const byId = meta ? leases.find((k) => k.keyId === meta.keyId) : undefined;
      if (!byId) throw new KmsdiskError('KMSDISK_ERR_NOT_FOUND', `no attached disk uses CMK ${keyId}`);
      keyId = byId.keyId;
    }
    await this.ctx.guard.resume(keyId);
    this.ctx.bumpVersion();
    return { keyId, state: this.ctx.guard.keyState(keyId)?.state ?? 'active' };
  }

  /** The key guard's view: one lease per CMK in use, its state and renewals. */
  leases(): ReturnType<AgentContext['guard']['keys']> {
    return this.ctx.guard.keys();
  }

  async enable(keyId: string): Promise<{ keyId: string; state: string }> {
    await this.admin().enableKey(keyId);
    this.ctx.bumpVersion();
    return { keyId, state: 'Enabled' };
  }
}

function serviceKeyGuard(err: unknown, keyId: string): unknown {
  if (errorCodeOf(err) === 'KMSDISK_ERR_KMS_REQUEST' && keyId.startsWith('alias/acs/')) {
    return new KmsdiskError('KMSDISK_ERR_CONFLICT', `${keyId} is a service key: it cannot be disabled`, { cause: err });
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
