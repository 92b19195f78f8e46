/** True when buf[0..n) is all zero bytes: 8 bytes at a time through a BigUint64 view when aligned. */
export function isAllZero(buf: Buffer, n: number = buf.length): boolean {
  let i = 0;
  if (buf.byteOffset % 8 === 0) {
    const words = new BigUint64Array(buf.buffer, buf.byteOffset, Math.floor(n / 8));
    for (const w of words) if (w !== 0n) return false;
    i = words.length * 8;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
