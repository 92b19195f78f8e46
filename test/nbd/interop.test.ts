import { defineInteropSuite } from './interop-suite.js';
import { plainFileDevice } from './file-device.js';

defineInteropSuite('plain file device', plainFileDevice);
