// The official SDK's classes, resolved once. The packages are CommonJS with `exports.default`;
// under Node's ESM loader a default import yields `module.exports`, so the class sits on
// `.default` at runtime while TypeScript's view may differ: resolve both ways here.

import * as KmsPkg from '@alicloud/kms20160120';
import * as RpcPkg from '@alicloud/rpc-client';
import * as UtilPkg from '@alicloud/tea-util';

type KmsClientClass = typeof KmsPkg.default.default;
type RpcConfigClass = typeof RpcPkg.Config;
type RuntimeOptionsClass = typeof UtilPkg.RuntimeOptions;

function unwrapDefault<T>(mod: unknown): T {
  let m = mod as { default?: unknown };
  // ESM namespace of a CJS module: .default is module.exports, whose .default is the class.
  while (m && typeof m !== 'function' && m.default !== undefined) m = m.default as { default?: unknown };
  return m as T;
}

export const KmsClient: KmsClientClass = unwrapDefault<KmsClientClass>(KmsPkg);
export type KmsClient = InstanceType<KmsClientClass>;
export const RpcConfig: RpcConfigClass = (RpcPkg as { Config?: RpcConfigClass }).Config ?? unwrapDefault<{ Config: RpcConfigClass }>(RpcPkg).Config;
export const RuntimeOptions: RuntimeOptionsClass =
  (UtilPkg as { RuntimeOptions?: RuntimeOptionsClass }).RuntimeOptions ?? unwrapDefault<{ RuntimeOptions: RuntimeOptionsClass }>(UtilPkg).RuntimeOptions;
export * as KMS from '@alicloud/kms20160120';
