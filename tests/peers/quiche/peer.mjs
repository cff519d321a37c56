// quiche (through npm @matrixai/quic, a Node binding with a prebuilt quiche) as an
// hq-interop client: one bidirectional stream per path, "GET /path\r\n" + FIN, the file's
// bytes + FIN. Run by tests/support/quiche.py with NODE_PATH pointing at the cached
// node_modules. JSON lines on stdout, the protocol of tests/support/hq_peers.py:
//   node peer.mjs client --connect HOST:PORT --ca F --server-name N --out DIR /path...
//     {"event":"handshake","alpn":...} {"event":"result","files":[{path,bytes,sha256}]}
//     {"event":"closed","how":"application","code":0}
import { createHash, webcrypto } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';

// the package is ESM-only: import its entry file from the cached node_modules
const entry = join(process.env.QUICHE_PEER_MODULES, '@matrixai', 'quic', 'dist', 'index.js');
const { QUICClient } = await import(pathToFileURL(entry).href);

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
  else opts.paths.push(a);
}
if (argv[0] !== 'client') { console.error('only the client role'); process.exit(2); }

const [host, port] = [opts.connect.slice(0, opts.connect.lastIndexOf(':')),
                      Number(opts.connect.slice(opts.connect.lastIndexOf(':') + 1))];
const client = await QUICClient.createQUICClient({
  host, port, serverName: opts.serverName,
  crypto: { ops: { randomBytes: async (data) => { webcrypto.getRandomValues(new Uint8Array(data)); } } },
  // verifyPeer off: quiche's BoringSSL rejects the tests' self-signed leaf as its own CA
  // (unknown_ca, 0x130); --ca is accepted for the protocol's sake
  config: { applicationProtos: ['hq-interop'], verifyPeer: false },
});
emit({ event: 'handshake', alpn: 'hq-interop' });

async function fetch(path) {
  const stream = client.connection.newStream('bidi');
  const writer = stream.writable.getWriter();
  await writer.write(Buffer.from(`GET ${path}\r\n`));
  await writer.close();
  const chunks = [];
  for await (const chunk of stream.readable) chunks.push(Buffer.from(chunk));
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
await client.destroy({ isApp: true, errorCode: 0 });
emit({ event: 'closed', how: 'application', code: 0, remote: false });
process.exit(0);
