// Runs our NBD server in its own process for `npm run bench:nbd`, so its CPU time and RSS are
// measured like nbdkit's and qemu-nbd's and the clients do not share its event loop.
// Usage: node dist/bench/nbd-server-child.js PATH SIZE_BYTES PORT
// Prints "LISTENING <port>" when ready; exits on SIGTERM after a graceful close.
import { NbdServer } from '../src/nbd/server.js';
import { createBenchDevice } from './nbd-device.js';

const [path, sizeArg, portArg] = process.argv.slice(2);
if (!path || !sizeArg || !portArg) {
  process.stderr.write('usage: nbd-server-child.js PATH SIZE_BYTES PORT\n');
  process.exit(2);
}
const bench = await createBenchDevice(path, Number(sizeArg));
const server = new NbdServer();
server.addExport('bench', { device: bench.device, description: bench.label });
const addr = await server.listen({ host: '127.0.0.1', port: Number(portArg) });
process.stdout.write(`LISTENING ${typeof addr === 'string' ? addr : addr.port}\n`);
process.on('SIGTERM', () => {
  void server
    .close()
    .then(() => bench.close())
    .finally(() => process.exit(0));
});
