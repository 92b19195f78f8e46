// Volume and image files that no catalog row names. Every create puts its complete file in place
// (rename or link to <uuid>.kdisk / <uuid>.raw) and then writes the row: a kill -9 or a power cut
// between the two left a file no list showed and nothing ever removed (as large as the disk,
// snapshot or image). At start, holding the folder's lock and before any service runs, such files
// are moved to <state>/orphaned/<folder>/ and logged. Not deleted: a catalog restored from an
// older backup also leaves files without rows, and those hold data the user wants back. (A kill
// between a delete's row and its unlink lands here too.)

import { mkdirSync, readdirSync, renameSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Logger } from '../util/logger.js';
import type { Catalog } from './catalog.js';
import type { StateDirs } from './context.js';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
/** The names the agent gives the files of each folder (anything else there is not ours). */
const AGENT_FILES: ReadonlyArray<{ folder: 'volumes' | 'snapshots' | 'images'; name: RegExp }> = [
  { folder: 'volumes', name: new RegExp(`^${UUID}\\.kdisk$`) },
  { folder: 'snapshots', name: new RegExp(`^${UUID}\\.kdisk$`) },
  { folder: 'images', name: new RegExp(`^${UUID}\\.(kdisk|raw)$`) },
];

/** Moves the agent's files that no disk, snapshot or image row names to dirs.orphaned. */
export function quarantineOrphans(dirs: StateDirs, catalog: Catalog, logger: Logger): void {
  // By file name, not full path: the names are uuids, and a state folder moved or mounted
  // elsewhere keeps its rows' old absolute paths -- those files must not look orphaned.
  const named = new Set([...catalog.listDisks(), ...catalog.listSnapshots(), ...catalog.listImages()].map((r) => basename(r.path)));
  for (const { folder, name } of AGENT_FILES) {
    const dir = dirs[folder];
    for (const f of readdirSync(dir)) {
      if (!name.test(f) || named.has(f)) continue;
      const from = join(dir, f);
      const to = join(dirs.orphaned, folder, f);
      try {
        mkdirSync(join(dirs.orphaned, folder), { recursive: true, mode: 0o700 });
        renameSync(from, to);
      } catch (err) {
        // Left where it is (harmless, it is tried again at the next start): a full or read-only
        // file system must not stop the agent from starting.
        logger.warn({ file: from, err: (err as Error).message }, 'could not move a volume or image file that no catalog row names');
        continue;
      }
      logger.warn(
        { file: from, movedTo: to },
        'moved a volume or image file that no catalog row names (an agent killed while creating or deleting it, or a catalog restored from an older backup); delete it to free the space',
      );
    }
  }
}
