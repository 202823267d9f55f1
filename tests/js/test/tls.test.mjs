// The client TLS listener with ably-js 2.28.0: `tls: true` and `tlsPort` reach the
// node over wss (Realtime) and https (REST), and a client that does not trust the
// certificate's CA is refused the handshake. Each client runs in a child process
// (test/tls-client.mjs) because Node reads NODE_EXTRA_CA_CERTS only at startup; the
// test CA and certificate come from `region-node ca`, for 127.0.0.1.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import {
  FORMATS, binaryPath, startNode, connectedClient, collect, closeAll, until, within, freshChannel,
} from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));

/** Makes a CA and a certificate for 127.0.0.1 in `dir`; returns their paths. */
function makeCertificates(dir) {
  const ca = join(dir, 'ca');
  execFileSync(binaryPath(), ['ca', 'create', '--dir', ca]);
  execFileSync(binaryPath(), ['ca', 'issue', '--dir', ca, '--name', '127.0.0.1', '--out', dir]);
  return { ca: join(ca, 'ca.pem'), cert: join(dir, '127.0.0.1.pem'), key: join(dir, '127.0.0.1.key') };
}

/** Starts tls-client.mjs with `job`; its reports collect in `events`. */
function startClient(job, env) {
  const child = spawn(process.execPath, [join(here, 'tls-client.mjs')], {
    env: { ...process.env, ...env, STARLING_TLS_CLIENT: JSON.stringify(job) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const events = [];
  createInterface({ input: child.stdout }).on('line', (line) => events.push(JSON.parse(line)));
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  const next = (event) => until(
    () => {
      const failure = events.find((e) => e.event === 'error');
      if (failure) throw new Error(`tls-client failed: ${JSON.stringify(failure)}`);
      return events.find((e) => e.event === event);
    },
    `tls-client to report ${event} (so far ${JSON.stringify(events)})`,
  );
  return { child, events, exited, next };
}

describe('client TLS listener', () => {
  let dir;
  let files;
  let node;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'starling-js-tls-'));
    files = makeCertificates(dir);
    node = await startNode({
      STARLING_CLIENT_TLS__LISTEN: '127.0.0.1:0',
      STARLING_CLIENT_TLS__CERT: files.cert,
      STARLING_CLIENT_TLS__KEY: files.key,
    });
  });

  after(async () => {
    await node?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const format of FORMATS) {
    it(`${format.name}: ably-js over wss and https exchanges messages with a plain client`, async () => {
      const channelName = freshChannel('tls');
      const plain = await connectedClient(node, format);
      const child = startClient(
        {
          key: node.key, tlsPort: node.tlsPort, channel: channelName,
          useBinaryProtocol: format.useBinaryProtocol, mode: 'trusted',
        },
        { NODE_EXTRA_CA_CERTS: files.ca },
      );
      try {
        const time = await child.next('time');
        assert.ok(Math.abs(time.time - Date.now()) < 60_000, `REST time over https: ${time.time}`);
        await child.next('attached');

        const channel = plain.channels.get(channelName);
        const replies = await collect(channel, 'reply');
        await channel.publish('hello', { over: 'ws' });
        const received = await child.next('message');
        assert.deepEqual(received.data, { over: 'ws' });

        await child.next('published');
        const [reply] = await replies.waitFor(1);
        assert.equal(reply.data, 'over wss');
        assert.equal(await within(child.exited, 'tls-client to exit'), 0);
      } finally {
        child.child.kill('SIGKILL');
        closeAll(plain);
      }
    });
  }

  it('a client that does not trust the CA never connects', async () => {
    const child = startClient(
      { key: node.key, tlsPort: node.tlsPort, useBinaryProtocol: true, mode: 'untrusted' },
      { NODE_EXTRA_CA_CERTS: '' },
    );
    try {
      const refused = await child.next('refused');
      assert.notEqual(refused.state, 'connected');
      assert.equal(await within(child.exited, 'tls-client to exit'), 0);
    } finally {
      child.child.kill('SIGKILL');
    }
  });
});
