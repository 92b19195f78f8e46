import { defineFuseExt4Suite } from './fuse-ext4-suite.js';
import { plainFileDevice } from './file-device.js';

defineFuseExt4Suite('plain file device', plainFileDevice);
