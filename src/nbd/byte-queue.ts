// A FIFO of received socket chunks with a read cursor.
//
// Why not Buffer.concat on every 'data' event: a 32 MiB WRITE arrives as ~500 chunks, and
// concatenating the backlog each time is quadratic. Here bytes are copied at most once, when a
// caller asks for a contiguous range that spans chunks (or never, when it sits in one chunk).

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private total = 0;

  get length(): number {
    return this.total;
  }

  /** Bytes available contiguously at the read position (take() of up to this many copies nothing). */
  get firstChunkLength(): number {
    const first = this.chunks[0];
    return first === undefined ? 0 : first.length - this.head;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /**
   * Removes and returns the next `n` bytes (n <= length) as one contiguous Buffer. Zero-copy when
   * they lie inside one chunk; the returned Buffer then shares memory with the received chunk.
   */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`ByteQueue.take(${n}) with only ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Removes the next `n` bytes (n <= length) into `target` at `targetOffset`. */
  copyInto(target: Buffer, targetOffset: number, n: number): void {
    let filled = 0;
    while (filled < n) {
      const first = this.chunks[0]!;
      const avail = first.length - this.head;
      const step = Math.min(avail, n - filled);
      first.copy(target, targetOffset + filled, this.head, this.head + step);
      // The chunk is garbage once consumed and would be freed as it is: zero what was copied
      // out (WRITE payload plaintext) so it does not outlive a key wipe in the free heap.
      first.fill(0, this.head, this.head + step);
      filled += step;
      this.advance(step);
    }
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const step = Math.min(n, this.total);
    let left = step;
    while (left > 0) {
      const first = this.chunks[0]!;
      const avail = first.length - this.head;
      const s = Math.min(avail, left);
      first.fill(0, this.head, this.head + s); // dropped payload bytes: see copyInto
      this.advance(s);
      left -= s;
    }
    return step;
  }

  /** Everything still queued (used to hand leftover bytes from the handshake to transmission). */
  drainAll(): Buffer[] {
    const out: Buffer[] = [];
    if (this.chunks.length > 0) {
      out.push(this.chunks[0]!.subarray(this.head), ...this.chunks.slice(1));
    }
    this.chunks = [];
    this.head = 0;
    this.total = 0;
    return out;
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    while (this.chunks.length > 0 && this.head >= this.chunks[0]!.length) {
      this.head -= this.chunks[0]!.length;
      this.chunks.shift();
    }
  }
}
