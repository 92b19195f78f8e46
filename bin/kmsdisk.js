#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript under dist/ (npm run build).
import { main } from '../dist/src/cli/main.js';

main(process.argv).catch((err) => {
  process.stderr.write(`kmsdisk: ${err?.message ?? err}\n`);
  process.exitCode = 1;
});
