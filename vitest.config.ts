import { defineConfig } from 'vitest/config';

// Integration tests start real servers (KMS emulator, NBD agent) and real clients
// (nbdinfo, qemu-img, fio): give them room, and run files in parallel only up to the
// machine's two cores so timing-sensitive revocation tests are not starved.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
