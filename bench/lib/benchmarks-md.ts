// Every benchmark keeps its latest table in one section of BENCHMARKS.md (at the package root),
// replacing only its own section and leaving the others as they are.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/cli/version-info.js';

/** Replaces (or appends) the section that starts with `heading` (a "## ..." line) by `section`. */
export function writeBenchmarksSection(heading: string, section: string): string {
  const path = join(projectRoot(), 'BENCHMARKS.md');
  let text = existsSync(path) ? readFileSync(path, 'utf8') : '# kmsdisk benchmarks\n';
  const start = text.indexOf(heading);
  if (start === -1) {
    text = text.trimEnd() + '\n\n' + section;
  } else {
    const next = text.indexOf('\n## ', start + heading.length);
    text = text.slice(0, start) + section + (next === -1 ? '' : text.slice(next + 1));
  }
  writeFileSync(path, text.endsWith('\n') ? text : text + '\n');
  return path;
}
