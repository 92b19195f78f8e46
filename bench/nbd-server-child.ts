// Runs our NBD server in its own process for `npm run bench:nbd`, so its CPU time and RSS are
// measured like nbdkit's and qemu-nbd's and the clients do not share its event loop.
// Usage: node dist/bench/nbd-server-child.js PATH SIZE_BYTES PORT
// KMS settings (endpoint + agent AccessKey) come as JSON in $KMSDISK_BENCH_NBD_KMS; without them
// the volume gets a random DEK. With $KMSDISK_BENCH_NBD_TLS_PSK (a PSK file, `identity:hex` lines)
// the export requires TLS-PSK. Prints "LISTENING <port>" when ready; exits on SIGTERM after a
// graceful close.
//
// The libuv threadpool size is read once, when the pool first starts: it is set here, before any
// import can queue work (static imports would run first, hence the dynamic imports below).
// The default (4) oversubscribes a 2-core machine shared with the clients; see BENCHMARKS.md.
process.env.UV_THREADPOOL_SIZE ??= '4';

const { NbdServer } = await import('../src/nbd/server.js');
const { createBenchDevice, BENCH_KMS_ENV, BENCH_TLS_PSK_ENV } = await import('./nbd-device.js');
const { PskStore } = await import('../src/agent/psk.js');
type Settings = import('./nbd-device.js').BenchKmsSettings;

const [path, sizeArg, portArg] = process.argv.slice(2);
if (!path || !sizeArg || !portArg) {
  process.stderr.write('usage: nbd-server-child.js PATH SIZE_BYTES PORT\n');
  process.exit(2);
}
const kmsJson = process.env[BENCH_KMS_ENV];
const kms = kmsJson ? (JSON.parse(kmsJson) as Settings) : undefined;
delete process.env[BENCH_KMS_ENV];
const bench = await createBenchDevice(path, Number(sizeArg), kms);
const pskPath = process.env[BENCH_TLS_PSK_ENV];
let psk: InstanceType<typeof PskStore>['lookup'] | undefined;
if (pskPath) {
  const store = new PskStore(pskPath);
  store.load();
  psk = store.lookup;
}
const server = new NbdServer(psk ? { tls: { psk } } : {});
server.addExport('bench', { device: bench.device, description: bench.label, ...(psk ? { requireTls: true } : {}) });
const addr = await server.listen({ host: '127.0.0.1', port: Number(portArg) });
process.stdout.write(`LISTENING ${typeof addr === 'string' ? addr : addr.port}\n`);
process.on('SIGTERM', () => {
  void server
    .close()
    .then(() => bench.close())
    .finally(() => process.exit(0));
});
