// Public surface of the revocation drill (kmsdisk drill, bench:revocation).
export {
  DRILL_ACTIONS,
  drillSvg,
  formatDrillText,
  pollWipeTime,
  runDrill,
  type DataSendAudit,
  type DrillAction,
  type DrillOptions,
  type DrillReport,
  type DrillTimeline,
} from './drill.js';
export { NbdClient, parseNbdUri, type NbdConnectOptions, type NbdReply, type NbdTarget } from './nbd-client.js';
export { renderTimelineSvg, type TimelineInput, type TimelineMark } from './svg.js';
export {
  AGENT_GRANT_OPERATIONS,
  AuditedDevice,
  createAgentKey,
  startDrillAgent,
  startDrillHarness,
  startDrillKms,
  type DrillAgent,
  type DrillAgentOptions,
  type DrillHarness,
  type DrillHarnessOptions,
  type DrillKms,
} from './harness.js';
export { startAgentChild, startKmsChild, type AgentChild, type KmsChild } from './child.js';
