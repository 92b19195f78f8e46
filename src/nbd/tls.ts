// STARTTLS: upgrading an accepted socket in place to TLS (PSK and/or x509).
//
// GnuTLS peers (libnbd, qemu, nbdkit) negotiate TLS 1.3. Node (OpenSSL 3) does TLS 1.3 PSK when a
// SHA-256 TLS 1.3 suite is offered; AES-GCM first so AES-NI does the work.
//
// The server's order must win (honorCipherOrder): OpenSSL otherwise takes the client's, and
// GnuTLS's default priority lists CHACHA20-POLY1305 before AES-128-GCM, the only SHA-256 suites a
// TLS 1.3 PSK can use, so every libnbd and qemu client got ChaCha20. GnuTLS's ChaCha20 runs at
// about an eighth of its AES-GCM here (gnutls-cli --benchmark-ciphers: 0.38 vs 3.06 GB/s), which
// capped nbdcopy through a TLS-PSK export at 140-270 MiB/s on the client's CPU alone.
//
// TLS 1.2 (a client that does not offer 1.3) gets the same treatment; see TLS12_PSK_SUITES and
// TLS12_CERT_SUITES for the order and why.

import { constants } from 'node:crypto';
import tls from 'node:tls';
import type { Socket } from 'node:net';
import { KmsdiskError } from '../errors.js';

export interface TlsCertConfig {
  key: string | Buffer;
  cert: string | Buffer;
  /** CA bundle to verify client certificates against (with requestCert). */
  ca?: string | Buffer;
  /** Require and verify a client certificate. */
  requestCert?: boolean;
}

export type PskLookup = Map<string, Buffer> | ((identity: string) => Buffer | null);

export interface TlsConfig {
  psk?: PskLookup;
  cert?: TlsCertConfig;
}

export interface TlsUpgrade {
  socket: tls.TLSSocket;
  /** The PSK identity the client authenticated as (undefined for x509). */
  pskIdentity: string | undefined;
}

/** TLS 1.3 suites: AES-GCM first (see the top); 128 before 256, as it is the faster of the two. */
const TLS13_SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'];

/**
 * TLS 1.2 PSK suites, the server's preference first, with their IANA codes (to recognise a TLS 1.2
 * PSK ClientHello: see clientHelloOffersPsk).
 *
 * OpenSSL has no ECDHE-PSK suite with AES-GCM (`openssl ciphers -v PSK`: ECDHE-PSK comes with
 * ChaCha20 or AES-CBC only, and GnuTLS offers the same), so AES-GCM with forward secrecy means
 * DHE-PSK. Order: forward-secret suites first, AES-GCM before ChaCha20 within them, so that a
 * leaked PSK file does not open recorded traffic when the client can avoid it:
 *   1. DHE-PSK-AES-GCM: what libnbd and qemu (GnuTLS, "+DHE-PSK") get; before, they all got
 *      ECDHE-PSK-CHACHA20-POLY1305, at about an eighth of the AES-GCM rate (see the top). The DHE
 *      costs about 12 ms more server CPU per handshake than ECDHE (DH_PARAMS), once per NBD
 *      connection.
 *   2. ECDHE-PSK-CHACHA20-POLY1305: forward-secret, for clients without AES or without DHE-PSK.
 *   3. PSK-AES-GCM: no forward secrecy, for clients with neither of the above.
 */
const TLS12_PSK_SUITES: ReadonlyArray<{ name: string; code: number }> = [
  { name: 'DHE-PSK-AES128-GCM-SHA256', code: 0x00aa },
  { name: 'DHE-PSK-AES256-GCM-SHA384', code: 0x00ab },
  { name: 'ECDHE-PSK-CHACHA20-POLY1305', code: 0xccac },
  { name: 'PSK-AES128-GCM-SHA256', code: 0x00a8 },
  { name: 'PSK-AES256-GCM-SHA384', code: 0x00a9 },
];

/**
 * TLS 1.2 certificate suites: ECDHE with AES-GCM first (GnuTLS lists AES-256-GCM first and
 * ChaCha20 second), ChaCha20 last for clients without AES (before, they found no shared cipher).
 */
const TLS12_CERT_SUITES = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
];

const CIPHERS = [...TLS13_SUITES, ...TLS12_PSK_SUITES.map((s) => s.name), ...TLS12_CERT_SUITES].join(':');

const TLS12_PSK_CODES = new Set(TLS12_PSK_SUITES.map((s) => s.code));

/**
 * Diffie-Hellman group for the DHE-PSK suites: RFC 7919's ffdhe3072 (`openssl genpkey -genparam
 * -algorithm DH -pkeyopt group:ffdhe3072`), 128-bit strength like AES-128 and P-256. Without DH
 * parameters OpenSSL silently drops DHE suites; with dhparam 'auto' it picks 1024-bit DH for the
 * AES-128 PSK suites, which OpenSSL clients refuse ("dh key too small"). Measured with a Node
 * server here: ffdhe3072 handshakes take about 16 ms of server CPU, ffdhe2048 about 8, ECDHE-PSK 4.
 */
const DH_PARAMS = `-----BEGIN DH PARAMETERS-----
MIIBiAKCAYEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEfz9zeNVs7ZRkDW7w09N75nAI4YbRvydbmyQd62R0mkff3
7lmMsPrBhtkcrv4TCYUTknC0EwyTvEN5RPT9RFLi103TZPLiHnH1S/9croKrnJ32
nuhtK8UiNjoNq8Uhl5sN6todv5pC1cRITgq80Gv6U93vPBsg7j/VnXwl5B0rZsYu
N///////////AgEC
-----END DH PARAMETERS-----
`;

/**
 * Whether a TLS ClientHello offers a pre-shared key: in TLS 1.3 the pre_shared_key extension (41);
 * from a client that does not offer TLS 1.3 (no 0x0304 in supported_versions, 43), one of our
 * TLS 1.2 PSK suites. Clients offer PSK suites only with a key to use (GnuTLS and OpenSSL drop
 * them without PSK credentials), so a TLS 1.2 certificate client lists none; before this, a TLS
 * 1.2 PSK client was taken for a certificate client and found "no shared cipher".
 * Returns undefined when `hello` is not a complete ClientHello record we can parse.
 */
export function clientHelloOffersPsk(hello: Buffer): boolean | undefined {
  try {
    if (hello[0] !== 22 || hello.length < 5 + 4) return undefined;
    const body = hello.subarray(5, 5 + hello.readUInt16BE(3));
    if (body[0] !== 1) return undefined;
    let p = 4 + 2 + 32; // handshake header, legacy version, random
    p += 1 + body[p]!; // session id
    const suitesEnd = p + 2 + body.readUInt16BE(p);
    let offersTls12Psk = false;
    for (let q = p + 2; q + 2 <= suitesEnd; q += 2) offersTls12Psk ||= TLS12_PSK_CODES.has(body.readUInt16BE(q));
    p = suitesEnd;
    p += 1 + body[p]!; // compression methods
    if (p + 2 > body.length) return offersTls12Psk; // no extensions at all: TLS 1.2 or older
    const end = Math.min(body.length, p + 2 + body.readUInt16BE(p));
    p += 2;
    let offersTls13 = false;
    while (p + 4 <= end) {
      const type = body.readUInt16BE(p);
      const length = body.readUInt16BE(p + 2);
      if (type === 41) return true;
      if (type === 43) {
        for (let q = p + 5; q + 2 <= p + 4 + length; q += 2) offersTls13 ||= body.readUInt16BE(q) === 0x0304;
      }
      p += 4 + length;
    }
    return !offersTls13 && offersTls12Psk;
  } catch {
    return undefined;
  }
}

/**
 * Options common to both contexts. The server's cipher order wins (see the top). No session
 * tickets: a client resuming a session skips the PSK callback and the certificate check, so it
 * would come back with no identity -- taken for a certificate client, and let into exports that
 * require a client certificate. No NBD client resumes sessions (libnbd and qemu connect afresh).
 */
const CONTEXT_OPTIONS: tls.SecureContextOptions = {
  ciphers: CIPHERS,
  honorCipherOrder: true,
  dhparam: DH_PARAMS,
  secureOptions: constants.SSL_OP_NO_TICKET,
  minVersion: 'TLSv1.2',
};

/** Frames at least this long go to TLS alone (see writeLargeFramesAlone). */
const LARGE_FRAME = 64 * 1024;

/**
 * Makes the socket's batched writes hand large frames (READ replies) to TLS one at a time.
 *
 * Why: while a write is in progress, a Writable queues the next ones and passes them to _writev
 * together, and Node's TLSWrap::DoWrite copies a multi-buffer write into one freshly allocated
 * ArrayBuffer before SSL_write. Under sequential reads that copied every byte served once more,
 * and the allocations (external memory, hundreds of MiB/s) made V8 run a full mark-compact every
 * ~100 ms. A single buffer is encrypted where it is. Small frames are still joined into one write
 * (one TLS record and syscall for many 4 KiB replies); the join is zeroed once written, as it may
 * hold plaintext of small READ replies.
 */
function writeLargeFramesAlone(socket: tls.TLSSocket): void {
  socket._writev = (chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void => {
    const writes: Array<{ buf: Buffer; joined: boolean }> = [];
    let small: Buffer[] = [];
    const flushSmall = (): void => {
      if (small.length === 1) writes.push({ buf: small[0]!, joined: false });
      else if (small.length > 1) writes.push({ buf: Buffer.concat(small), joined: true });
      small = [];
    };
    for (const { chunk } of chunks) {
      if (chunk.length < LARGE_FRAME) {
        small.push(chunk);
        continue;
      }
      flushSmall();
      writes.push({ buf: chunk, joined: false });
    }
    flushSmall();
    let next = 0;
    const writeNext = (err?: Error | null): void => {
      const done = writes[next - 1];
      if (done?.joined) done.buf.fill(0);
      if (err || next === writes.length) {
        callback(err);
        return;
      }
      // One TLS write at a time, as Writable itself does (TLSWrap takes one write in progress).
      // 'buffer' is the encoding Writable passes with Buffer chunks (net.Socket writes them as they
      // are; a string encoding would make it write the bytes as a string); @types lacks it.
      socket._write(writes[next++]!.buf, 'buffer' as BufferEncoding, writeNext);
    };
    writeNext();
  };
}

/** OpenSSL's reason for a failed handshake ("binder does not verify"), else the error's message. */
function opensslReason(err: Error): string {
  const reason = (err as Error & { reason?: unknown }).reason;
  return typeof reason === 'string' && reason !== '' ? reason : err.message.trim();
}

/** What OpenSSL says when both sides name the same PSK identity with different keys. */
const PSK_MISMATCH = /binder does not verify|decrypt error|bad record mac|digest check failed/i;

/**
 * Says why a TLS-PSK handshake failed in the operator's terms. OpenSSL's own text is about its
 * internals: a wrong key is "tls_psk_do_binder:binder does not verify", an unknown identity (the
 * server then falls back to a certificate it does not have) "no suitable signature algorithm".
 */
function pskFailure(err: Error, offered: string | undefined, known: boolean, pskOnly: boolean): Error {
  const reason = opensslReason(err);
  if (!('library' in err) && !('reason' in err)) return err; // a timeout or a close: already clear
  let message: string;
  if (offered === undefined) {
    // With a certificate too, this context was chosen for a pre-shared key in the ClientHello:
    // a session ticket, which this server does not take (see CONTEXT_OPTIONS).
    message = pskOnly
      ? `TLS handshake failed: ${reason} (the client presented no TLS-PSK identity, and this server takes TLS-PSK clients only: no --tls-cert)`
      : `TLS handshake failed: ${reason} (the client offered a pre-shared key but no TLS-PSK identity: a session to resume? this server resumes none)`;
  } else if (!known) {
    message = `TLS-PSK handshake refused: identity ${JSON.stringify(offered)} is unknown to this server`;
  } else if (PSK_MISMATCH.test(reason)) {
    message = `TLS-PSK handshake refused: the client's key for identity ${JSON.stringify(offered)} does not match this server's`;
  } else {
    message = `TLS-PSK handshake as identity ${JSON.stringify(offered)} failed: ${reason}`;
  }
  return new Error(message, { cause: err });
}

/**
 * The same for a certificate client. OpenSSL says "peer did not return a certificate" when the
 * server requires one (--tls-ca) and the client sent none: libnbd and qemu send theirs only if it
 * comes from a CA the server names, so a certificate from another CA ends the same way.
 */
function x509Failure(err: Error, requireClientCert: boolean): Error {
  const reason = opensslReason(err);
  if (!('library' in err) && !('reason' in err)) return err;
  let message = `TLS handshake failed: ${reason}`;
  if (requireClientCert && /peer did not return a certificate/i.test(reason)) {
    message = 'TLS handshake refused: the client sent no certificate, and this server requires one issued by its --tls-ca CA (clients send theirs only when it is)';
  } else if (requireClientCert && /certificate verify failed|unknown ca|certificate (has )?expired|unsupported certificate/i.test(reason)) {
    message = `TLS handshake refused: the client's certificate was not accepted (${reason}); this server requires one issued by its --tls-ca CA`;
  }
  return new Error(message, { cause: err });
}

/** A validated, reusable TLS setup for a server. */
export class TlsContext {
  /**
   * OpenSSL with a certificate loaded fails TLS 1.3 PSK handshakes from GnuTLS clients
   * ("Insufficient credentials"), so PSK and certificate clients get separate contexts; the
   * ClientHello says which one a client wants (see clientHelloOffersPsk).
   */
  private readonly pskContext: tls.SecureContext | undefined;
  private readonly certContext: tls.SecureContext | undefined;
  private readonly psk: PskLookup | undefined;
  private readonly requestCert: boolean;

  constructor(cfg: TlsConfig) {
    if (!cfg.psk && !cfg.cert) {
      throw new KmsdiskError('KMSDISK_ERR_INVALID_ARGUMENT', 'TLS needs a PSK table, a certificate, or both');
    }
    this.psk = cfg.psk;
    this.requestCert = Boolean(cfg.cert?.requestCert);
    this.pskContext = cfg.psk ? tls.createSecureContext(CONTEXT_OPTIONS) : undefined;
    this.certContext = cfg.cert
      ? tls.createSecureContext({
          ...CONTEXT_OPTIONS,
          key: cfg.cert.key,
          cert: cfg.cert.cert,
          ...(cfg.cert.ca ? { ca: cfg.cert.ca } : {}),
        })
      : undefined;
  }

  /** Which kinds of TLS client this server can take (what export rules can be satisfied by). */
  get kinds(): { psk: boolean; x509: boolean; clientCertificates: boolean } {
    return { psk: this.pskContext !== undefined, x509: this.certContext !== undefined, clientCertificates: this.requestCert };
  }

  /** True when both kinds are configured and the ClientHello must be inspected to choose. */
  get needsClientHello(): boolean {
    return this.pskContext !== undefined && this.certContext !== undefined;
  }

  private lookupPsk(identity: string): Buffer | null {
    const psk = this.psk;
    if (!psk) return null;
    const key = typeof psk === 'function' ? psk(identity) : psk.get(identity);
    return key ?? null;
  }

  /**
   * Runs the server side of the TLS handshake on `socket` (nothing else may read it meanwhile).
   * `wantsPsk` is what the ClientHello said (undefined: unknown; PSK is then used only if it is
   * the only kind configured).
   */
  upgrade(socket: Socket, timeoutMs: number, wantsPsk?: boolean): Promise<TlsUpgrade> {
    let pskIdentity: string | undefined;
    /** The PSK identity the client presented, known to us or not (for the failure message). */
    let offered: string | undefined;
    const usePsk = this.pskContext !== undefined && (this.certContext === undefined || wantsPsk === true);
    const tlsSocket = new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: usePsk ? this.pskContext : this.certContext,
      requestCert: !usePsk && this.requestCert,
      rejectUnauthorized: !usePsk && this.requestCert,
      ...(usePsk
        ? {
            pskCallback: (_s: tls.TLSSocket, identity: string): Buffer | null => {
              offered = identity;
              const key = this.lookupPsk(identity);
              if (key) pskIdentity = identity;
              return key;
            },
          }
        : {}),
    });
    return new Promise<TlsUpgrade>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('TLS handshake timed out')), timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        tlsSocket.off('secure', onSecure);
        tlsSocket.off('error', fail);
        tlsSocket.off('close', onClose);
      };
      const fail = (err: Error): void => {
        cleanup();
        tlsSocket.destroy();
        reject(usePsk ? pskFailure(err, offered, pskIdentity !== undefined, this.certContext === undefined) : x509Failure(err, this.requestCert));
      };
      const onClose = (): void => fail(new Error('connection closed during the TLS handshake'));
      const onSecure = (): void => {
        if (usePsk && pskIdentity === undefined) {
          // Keyed without our PSK callback approving an identity: a resumed session (see
          // CONTEXT_OPTIONS). Who the client is cannot be known, so it gets nothing.
          fail(new Error('TLS-PSK handshake refused: the client resumed an earlier session instead of presenting its identity'));
          return;
        }
        cleanup();
        writeLargeFramesAlone(tlsSocket);
        resolve({ socket: tlsSocket, pskIdentity });
      };
      tlsSocket.once('secure', onSecure);
      tlsSocket.on('error', fail);
      tlsSocket.once('close', onClose);
    });
  }
}
