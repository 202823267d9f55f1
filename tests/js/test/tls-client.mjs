// A child process of tls.test.mjs: ably-js over wss and https to a node's client TLS
// listener. A separate process because Node reads NODE_EXTRA_CA_CERTS (the test CA)
// only at startup. Not a test file (the runner loads `*.test.mjs` only).
//
// Reads its job from STARLING_TLS_CLIENT (JSON: key, tlsPort, channel,
// useBinaryProtocol, mode) and reports on stdout, one JSON object a line:
//   mode "trusted":   time, attached, message, published; then exits 0
//   mode "untrusted": refused (the connection never got CONNECTED); then exits 0
// Anything unexpected prints {"event":"error"} and exits 1.

import * as Ably from 'ably';

const job = JSON.parse(process.env.STARLING_TLS_CLIENT);
const report = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const options = {
  key: job.key,
  endpoint: '127.0.0.1',
  tls: true,
  tlsPort: job.tlsPort,
  disableConnectivityCheck: true,
  useBinaryProtocol: job.useBinaryProtocol,
};

async function trusted() {
  const rest = new Ably.Rest(options);
  report({ event: 'time', time: await rest.time() });

  const realtime = new Ably.Realtime(options);
  const channel = realtime.channels.get(job.channel);
  const first = new Promise((resolve) => channel.subscribe('hello', resolve));
  await channel.attach();
  report({ event: 'attached', connectionId: realtime.connection.id });

  const message = await first;
  report({ event: 'message', name: message.name, data: message.data });
  await channel.publish('reply', 'over wss');
  report({ event: 'published' });
  realtime.close();
}

async function untrusted() {
  const realtime = new Ably.Realtime(options);
  const change = await new Promise((resolve) => {
    realtime.connection.on((c) => {
      if (c.current === 'connected' || c.current === 'disconnected' || c.current === 'failed') {
        resolve(c);
      }
    });
  });
  realtime.close();
  if (change.current === 'connected') throw new Error('connected without trusting the CA');
  report({ event: 'refused', state: change.current, code: change.reason?.code ?? null });
}

const deadline = setTimeout(() => {
  report({ event: 'error', message: 'tls-client timed out' });
  process.exit(1);
}, 30_000);

(job.mode === 'untrusted' ? untrusted() : trusted()).then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (error) => {
    report({ event: 'error', code: error.code ?? null, message: String(error.message ?? error) });
    process.exit(1);
  },
);
