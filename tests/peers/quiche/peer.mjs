// quiche (through npm @matrixai/quic, a Node binding with a prebuilt quiche) as an
// hq-interop client and server: one bidirectional stream per path, "GET /path\r\n" + FIN,
// the file's bytes + FIN. Run by tests/support/quiche.py with QUICHE_PEER_MODULES pointing
// at the cached node_modules. JSON lines on stdout, the protocol of
// tests/support/hq_peers.py:
//   node peer.mjs client --connect HOST:PORT --ca F --server-name N --out DIR
//            [--pause-at N1[,N2...] --resume-file F] /path...
//     {"event":"paused","path":...,"bytes":N,"k":K}   (with --pause-at)
//     {"event":"handshake","alpn":...} {"event":"result","files":[{path,bytes,sha256}]}
//     {"event":"closed","how":"application","code":0}
//   node peer.mjs server --cert C --key K --root DIR   (one connection, then it exits)
//     {"event":"ready","port":N} {"event":"handshake",...} {"event":"closed",...}
// quiche's server (QUICServer) always answers a first Initial with a Retry; its TLS
// (BoringSSL) has no cipher-suite setting and the binding no way to start a key update.
import { createHash, createHmac, timingSafeEqual, webcrypto } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

// the package is ESM-only: import its entry file from the cached node_modules
const entry = join(process.env.QUICHE_PEER_MODULES, '@matrixai', 'quic', 'dist', 'index.js');
const { QUICClient, QUICServer, events, errors } = await import(pathToFileURL(entry).href);

function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

const argv = process.argv.slice(2);
const opts = { paths: [] };
for (let i = 1; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--connect') opts.connect = argv[++i];
  else if (a === '--ca') opts.ca = argv[++i];
  else if (a === '--server-name') opts.serverName = argv[++i];
  else if (a === '--out') opts.out = argv[++i];
  else if (a === '--sequential') opts.sequential = true;
  else if (a === '--pause-at') opts.pauseAt = argv[++i].split(',').map(Number);
  else if (a === '--resume-file') opts.resumeFile = argv[++i];
  else if (a === '--cert') opts.cert = argv[++i];
  else if (a === '--key') opts.key = argv[++i];
  else if (a === '--root') opts.root = argv[++i];
  else opts.paths.push(a);
}
if (argv[0] === 'server') {
  await runServer();
} else if (argv[0] !== 'client') {
  console.error('usage: peer.mjs client|server ...');
  process.exit(2);
}

function toArrayBuffer(buf) { return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength); }

async function readAll(readable) {
  const chunks = [];
  for await (const chunk of readable) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

async function serveStream(conn, stream) {
  const request = (await readAll(stream.readable)).toString('latin1');
  const writer = stream.writable.getWriter();
  const match = /^GET (\/[^\r\n]*)\r?\n?$/.exec(request);
  const root = resolve(opts.root);
  const file = match ? resolve(root, '.' + decodeURIComponent(match[1])) : null;
  if (file === null || !file.startsWith(root + sep)) {
    await writer.abort(1);
    return;
  }
  let data;
  try { data = readFileSync(file); } catch { await writer.abort(1); return; }
  await sendWithFin(conn, stream, data);
}

// The body goes to quiche directly, its last piece together with the FIN: this quiche
// only sends a FIN that finds data still unsent on the stream, so the binding's
// writer.close() after the data went out (a 0-byte write with FIN) leaves the stream
// unfinished for ever
async function sendWithFin(conn, stream, data) {
  let off = 0;
  for (;;) {
    const chunk = data.subarray(off, Math.min(off + 65536, data.length));
    const fin = off + chunk.length === data.length;
    const sent = conn.conn.streamSend(stream.streamId, chunk, fin) ?? 0;
    stream.dispatchEvent(new events.EventQUICStreamSend());  // the connection sends now
    off += sent;
    if (fin && sent === chunk.length) return;
    if (sent < chunk.length) await new Promise((r) => setTimeout(r, 1));
  }
}

// The binding can lose quiche's timer (its loss detection included): after a tail loss
// the connection then never sends a probe and the transfer stalls for ever. Drive an
// expired timer ourselves (logged on stderr when it happens).
function driveLostTimers(conn) {
  return setInterval(() => {
    const left = conn.conn.timeout();
    if (left !== null && left <= 0 && !conn.conn.isClosed()) {
      console.error('watchdog: drove an expired quiche timer');
      conn.conn.onTimeout();
      conn.send().catch(() => {});
    }
  }, 20);
}

async function runServer() {
  const key = toArrayBuffer(Buffer.from(webcrypto.getRandomValues(new Uint8Array(32))));
  const hmac = (k, data) => createHmac('sha256', Buffer.from(k)).update(Buffer.from(data)).digest();
  const server = new QUICServer({
    crypto: {
      key,
      ops: {
        sign: async (k, data) => toArrayBuffer(hmac(k, data)),
        verify: async (k, data, sig) => {
          const want = hmac(k, data);
          const got = Buffer.from(sig);
          return got.length === want.length && timingSafeEqual(got, want);
        },
      },
    },
    config: {
      key: readFileSync(opts.key, 'utf8'), cert: readFileSync(opts.cert, 'utf8'),
      applicationProtos: ['hq-interop'], verifyPeer: false,
    },
  });
  const done = new Promise((resolveDone) => {
    server.addEventListener(events.EventQUICServerConnection.name, (evt) => {
      const conn = evt.detail;
      let closed = { event: 'closed', how: 'application', code: 0, remote: false };
      conn.addEventListener(events.EventQUICConnectionStream.name, (e) => {
        serveStream(conn, e.detail).catch((err) => console.error('stream:', err));
      });
      conn.addEventListener(events.EventQUICConnectionError.name, (e) => {
        const err = e.detail;
        const data = err.data ?? {};
        closed = { event: 'closed', how: data.isApp ? 'application' : 'transport',
                   code: data.errorCode ?? null, remote: err instanceof errors.ErrorQUICConnectionPeer,
                   error: String(err.message) };
      });
      const watchdog = driveLostTimers(conn);
      conn.addEventListener(events.EventQUICConnectionStopped.name, () => {
        clearInterval(watchdog);
        emit(closed);
        resolveDone();
      }, { once: true });
      emit({ event: 'handshake', alpn: 'hq-interop' });
    });
  });
  await server.start({ host: '127.0.0.1', port: 0 });
  emit({ event: 'ready', port: server.port });
  await done;
  await server.stop({ force: true });
  process.exit(0);
}

const [host, port] = [opts.connect.slice(0, opts.connect.lastIndexOf(':')),
                      Number(opts.connect.slice(opts.connect.lastIndexOf(':') + 1))];
const client = await QUICClient.createQUICClient({
  host, port, serverName: opts.serverName,
  crypto: { ops: { randomBytes: async (data) => { webcrypto.getRandomValues(new Uint8Array(data)); } } },
  // the server's certificate is verified against --ca: a CA certificate, since this
  // BoringSSL takes no self-signed leaf as its own trust anchor (see
  // tests/test_interop_quiche.py)
  config: { applicationProtos: ['hq-interop'], verifyPeer: true, ca: readFileSync(opts.ca, 'utf8') },
});
emit({ event: 'handshake', alpn: 'hq-interop' });
const watchdog = driveLostTimers(client.connection);

// --pause-at N1[,N2...]: the first file to reach N1 bytes stops being read at each Nk (the
// server is then held by flow control) until the file --resume-file holds at least k bytes
// (a test replaces the server then)
let paused = false;
function resumeSize() {
  try { return statSync(opts.resumeFile).size; } catch { return -1; }
}
async function fetch(path) {
  const stream = client.connection.newStream('bidi');
  stream.writable.getWriter();  // the request goes to quiche directly, with its FIN
  await sendWithFin(client.connection, stream, Buffer.from(`GET ${path}\r\n`));
  const chunks = [];
  let got = 0;
  let k = 0;  // pauses done
  for await (const chunk of stream.readable) {
    let buf = Buffer.from(chunk);
    while (opts.pauseAt && k < opts.pauseAt.length && got + buf.length >= opts.pauseAt[k]) {
      if (k === 0 && paused) break;  // another file pauses
      paused = true;
      const head = buf.subarray(0, opts.pauseAt[k] - got);
      chunks.push(head);
      got += head.length;
      buf = buf.subarray(head.length);
      k += 1;
      emit({ event: 'paused', path, bytes: got, k });
      while (resumeSize() < k) await new Promise((r) => setTimeout(r, 5));
    }
    chunks.push(buf);
    got += buf.length;
  }
  const data = Buffer.concat(chunks);
  writeFileSync(join(opts.out, basename(path)), data);
  return { path, bytes: data.length, sha256: createHash('sha256').update(data).digest('hex') };
}

let files;
if (opts.sequential) {
  files = [];
  for (const p of opts.paths) files.push(await fetch(p));
} else {
  files = await Promise.all(opts.paths.map(fetch));
}
emit({ event: 'result', files });
clearInterval(watchdog);
await client.destroy({ isApp: true, errorCode: 0 });
emit({ event: 'closed', how: 'application', code: 0, remote: false });
process.exit(0);
