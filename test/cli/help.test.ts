// --help says what the commands do (the real CLI, no agent needed).

import { describe, expect, it } from 'vitest';
import { cli } from './helpers.js';

describe('kmsdisk --help', () => {
  it('disk create --help: a disk from an encrypted image keeps the image CMK (a different --kms-key-id is refused)', () => {
    const r = cli(['disk', 'create', '--help']);
    expect(r.status).toBe(0);
    const text = r.stdout.replace(/\s+/g, ' ');
    expect(text).toContain('--from-image <image> create from an image: a plain one is encrypted under --kms-key-id, an encrypted one keeps its CMK (like a snapshot)');
  });
});
