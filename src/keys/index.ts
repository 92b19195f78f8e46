// Public surface of the key guard (see key-guard.ts for the model).
export {
  KeyGuard,
  type GuardedVolume,
  type KeyAccessState,
  type KeyGuardOptions,
  type KeyStatus,
  type RestoredEvent,
  type AccessMayReturnEvent,
  type RevocationMode,
  type RevokedEvent,
  type ResumeMode,
} from './key-guard.js';
export { classifyKmsFailure, denyCauseOf, DENY_CAUSES, isDenyCause, type DenyCause, type FailureClass } from './deny-causes.js';
export { LeaseTimer, type LeaseTimerOptions } from './lease.js';
export { nowMs } from './clock.js';
