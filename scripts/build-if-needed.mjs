#!/usr/bin/env node
// Builds what is missing or stale, so `npm start`, `npm test` and `npm run bench:*` work on a
// fresh clone right after `npm ci`: the native addon (node-gyp, only when its sources are newer
// than the .node file) and the TypeScript (tsc --incremental, a no-op when nothing changed).
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const addon = join(root, 'build', 'Release', 'kmsdisk.node');

function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return newest;
}

const nativeSources = Math.max(newestMtime(join(root, 'native')), statSync(join(root, 'binding.gyp')).mtimeMs);
if (!existsSync(addon) || statSync(addon).mtimeMs < nativeSources) {
  process.stderr.write('kmsdisk: building the native addon (node-gyp)\n');
  execFileSync('npm', ['run', '--silent', 'build:native'], { cwd: root, stdio: 'inherit' });
}
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(root, 'tsconfig.json')], {
  cwd: root,
  stdio: 'inherit',
});
