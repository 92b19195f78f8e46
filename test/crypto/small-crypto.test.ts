// The emulator's native short-message crypto (native/kms_crypto.h through
// src/crypto/small-crypto.ts), cross-checked against node:crypto: AES-256-GCM seal/open over
// every length class that matters (empty, partial block, whole blocks, several blocks, with and
// without AAD), tampering of each part, HMAC-SHA1 through both SHA-1 implementations, and bad
// arguments getting coded errors instead of crashes.
import { createCipheriv, createDecipheriv, createHash, createHmac, createSecretKey, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';

import { native } from '../../src/crypto/native.js';
import { gcmOpen, gcmSeal, hmacSha1SignatureV1, nodeGcmOpen, nodeGcmSeal } from '../../src/crypto/small-crypto.js';

function nodeSeal(key: Buffer, iv: Buffer, aad: Buffer, pt: Buffer): Buffer {
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
}

function nodeOpen(key: Buffer, iv: Buffer, aad: Buffer, sealed: Buffer): Buffer {
  const d = createDecipheriv('aes-256-gcm', key, iv);
  d.setAAD(aad);
  d.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([d.update(sealed.subarray(0, sealed.length - 16)), d.final()]);
}

const LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 64, 88, 100, 255, 1024, 4099];

describe('AES-256-GCM (native)', () => {
  it('runs natively on this CPU (AES-NI and PCLMULQDQ)', () => {
    expect(native.gcmSupported()).toBe(true);
  });

  it('matches the SP 800-38D reference vector for AES-256 (test case 14: zero key, IV, block)', () => {
    const key = Buffer.alloc(32);
    const sealed = gcmSeal(key, Buffer.alloc(12), Buffer.alloc(0), Buffer.alloc(16));
    expect(sealed.toString('hex')).toBe('cea7403d4d606b6e074ec5d3baf39d18' + 'd0d1c8a799996bf0265b98b5d48ab919');
  });

  it('agrees with node:crypto both ways for every length class, with and without AAD', () => {
    for (const len of LENGTHS) {
      for (const aadLen of [0, 5, 16, 27, 80]) {
        const key = randomBytes(32);
        const iv = randomBytes(12);
        const aad = randomBytes(aadLen);
        const pt = randomBytes(len);
        const ours = gcmSeal(key, iv, aad, pt);
        expect(ours.equals(nodeSeal(key, iv, aad, pt)), `seal len ${len} aad ${aadLen}`).toBe(true);
        expect(nodeOpen(key, iv, aad, ours).equals(pt)).toBe(true);
        expect(gcmOpen(key, iv, aad, nodeSeal(key, iv, aad, pt))?.equals(pt), `open len ${len} aad ${aadLen}`).toBe(true);
      }
    }
  });

  it('has a node:crypto fallback (CPUs without AES-NI) that agrees with the native path, tampering included', () => {
    for (const len of LENGTHS) {
      const key = randomBytes(32);
      const iv = randomBytes(12);
      const aad = randomBytes(len % 40);
      const pt = randomBytes(len);
      const sealed = nodeGcmSeal(createSecretKey(key), iv, aad, pt);
      expect(sealed.equals(gcmSeal(key, iv, aad, pt)), `len ${len}`).toBe(true);
      const ct = sealed.subarray(0, len);
      const tag = sealed.subarray(len);
      expect(nodeGcmOpen(key, iv, aad, ct, tag)?.equals(pt)).toBe(true);
      const bad = Buffer.from(tag);
      bad[0]! ^= 1;
      expect(nodeGcmOpen(key, iv, aad, ct, bad)).toBeNull();
    }
  });

  it('accepts a KeyObject as well as a Buffer (the keystore holds KeyObjects)', () => {
    const raw = randomBytes(32);
    const ko = createSecretKey(raw);
    const iv = randomBytes(12);
    const aad = Buffer.from('{"a":"b"}');
    const sealed = gcmSeal(ko, iv, aad, Buffer.from('data key'));
    expect(gcmOpen(raw, iv, aad, sealed)?.toString()).toBe('data key');
    expect(ko.export().equals(raw)).toBe(true); // exporting for the native key left it intact
  });

  it('refuses any tampering: ciphertext, tag, AAD, IV, key, truncation', () => {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const aad = Buffer.from('{"kmsdisk:volume":"v"}');
    const pt = randomBytes(88);
    const sealed = gcmSeal(key, iv, aad, pt);
    for (let i = 0; i < sealed.length; i++) {
      const bad = Buffer.from(sealed);
      bad[i]! ^= 0x01;
      expect(gcmOpen(key, iv, aad, bad), `bit flip at ${i}`).toBeNull();
    }
    const otherAad = Buffer.from(aad);
    otherAad[3]! ^= 0x20;
    expect(gcmOpen(key, iv, otherAad, sealed)).toBeNull();
    expect(gcmOpen(key, iv, Buffer.alloc(0), sealed)).toBeNull();
    const otherIv = Buffer.from(iv);
    otherIv[11]! ^= 0x80;
    expect(gcmOpen(key, otherIv, aad, sealed)).toBeNull();
    expect(gcmOpen(randomBytes(32), iv, aad, sealed)).toBeNull();
    expect(gcmOpen(key, iv, aad, sealed.subarray(0, sealed.length - 1))).toBeNull();
    expect(gcmOpen(key, iv, aad, sealed.subarray(0, 15))).toBeNull();
    expect(gcmOpen(key, iv, aad, sealed)?.equals(pt)).toBe(true);
  });

  it('gives coded errors for bad arguments and for a wiped key, never a crash', () => {
    const I = 'KMSDISK_ERR_INVALID_ARGUMENT';
    expect(() => new native.NativeGcmKey(Buffer.alloc(16))).toThrow(expect.objectContaining({ code: I }));
    expect(() => new native.NativeGcmKey('k'.repeat(32) as unknown as Buffer)).toThrow(expect.objectContaining({ code: I }));
    const k = new native.NativeGcmKey(randomBytes(32));
    const iv = randomBytes(12);
    expect(() => k.seal(Buffer.alloc(11), Buffer.alloc(0), Buffer.alloc(1))).toThrow(expect.objectContaining({ code: I }));
    expect(() => k.seal(iv, 'aad' as unknown as Buffer, Buffer.alloc(1))).toThrow(expect.objectContaining({ code: I }));
    expect(() => k.seal(iv, Buffer.alloc(0), new Float64Array(2) as unknown as Buffer)).toThrow(expect.objectContaining({ code: I }));
    expect(() => k.open(iv, Buffer.alloc(0), Buffer.alloc(4), Buffer.alloc(15))).toThrow(expect.objectContaining({ code: I }));
    // Past GCM's counter range (and far past any blob): a coded error, not a wrapped counter.
    const huge = new Uint8Array(new ArrayBuffer(2 ** 30 + 16), 0, 2 ** 30 + 16);
    expect(() => k.seal(iv, Buffer.alloc(0), huge)).toThrow(expect.objectContaining({ code: 'KMSDISK_ERR_OUT_OF_RANGE' }));
    const sealed = k.seal(iv, Buffer.alloc(0), Buffer.from('x'));
    expect(k.open(iv, Buffer.alloc(0), sealed.subarray(0, 1), sealed.subarray(1))?.toString()).toBe('x');
    k.wipe();
    k.wipe(); // idempotent
    expect(() => k.seal(iv, Buffer.alloc(0), Buffer.from('x'))).toThrow(expect.objectContaining({ code: I, message: expect.stringMatching(/wiped/) }));
    expect(() => k.open(iv, Buffer.alloc(0), sealed.subarray(0, 1), sealed.subarray(1))).toThrow(expect.objectContaining({ code: I }));
  });
});

describe('HMAC-SHA1 (native)', () => {
  it('agrees with node:crypto for keys (secret + "&") shorter, equal to and longer than a block, messages of every padding case', () => {
    for (const keyLen of [1, 20, 31, 63, 64, 65, 100, 200]) {
      for (const msgLen of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 600, 1000]) {
        const secret = randomBytes(keyLen).toString('latin1');
        const msg = randomBytes(msgLen).toString('latin1');
        const expected = createHmac('sha1', Buffer.from(secret + '&', 'utf8')).update(msg, 'latin1').digest('base64');
        expect(hmacSha1SignatureV1(secret, msg), `key ${keyLen} msg ${msgLen}`).toBe(expected);
      }
    }
  });

  it('signs what the SDK signs: an AccessKey secret plus "&" over a string to sign', () => {
    const toSign = 'POST&%2F&AccessKeyId%3Dtestid%26Action%3DDecrypt';
    expect(hmacSha1SignatureV1('testsecret', toSign)).toBe(createHmac('sha1', 'testsecret&').update(toSign).digest('base64'));
  });

  it('keeps the portable SHA-1 rounds correct (used where the CPU lacks the SHA extensions)', () => {
    for (const len of [0, 3, 55, 56, 64, 65, 200, 1000, 4096]) {
      const data = randomBytes(len);
      expect(native._sha1PortableForTests(data).toString('hex'), `len ${len}`).toBe(createHash('sha1').update(data).digest('hex'));
    }
    expect(native._sha1PortableForTests(Buffer.from('abc')).toString('hex')).toBe('a9993e364706816aba3e25717850c26c9cd0d89d');
  });

  it('gives a coded error for a message that is not a string or a key that is not bytes', () => {
    const I = 'KMSDISK_ERR_INVALID_ARGUMENT';
    const h = new native.NativeHmacSha1(Buffer.from('k'));
    expect(() => h.signBase64(42 as unknown as string)).toThrow(expect.objectContaining({ code: I }));
    expect(() => new native.NativeHmacSha1('k' as unknown as Buffer)).toThrow(expect.objectContaining({ code: I }));
  });
});
