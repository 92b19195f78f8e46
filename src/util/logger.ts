// One pino logger factory so every process (agent, emulator, CLI) logs the same way.
// Redaction is a second line of defence: no code path should put secrets in a log object,
// but if one does, these paths are masked.

import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export function createLogger(opts: { name: string; level?: LevelWithSilent; destination?: number }): Logger {
  const level = (opts.level ?? (process.env.KMSDISK_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info') as LevelWithSilent;
  return pino(
    {
      name: opts.name,
      level,
      redact: {
        paths: ['accessKeySecret', '*.accessKeySecret', 'token', '*.token', 'authorization', '*.authorization', 'req.headers.authorization', 'dek', '*.dek', 'psk', '*.psk'],
        censor: '[redacted]',
      },
    },
    pino.destination({ fd: opts.destination ?? 2, sync: false }),
  );
}
