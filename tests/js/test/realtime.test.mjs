// Realtime (WebSocket) compatibility: connect, publish/subscribe with ACKs, payload
// encodings, echo, ping, close, invalid channel names. Each test runs once per wire
// format (msgpack and JSON); payload tests also cross the formats.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Ably, FORMATS, startNode, connectedClient, waitForState, collect, closeAll, within,
  freshChannel, asBuffer, isBinary, until,
} from './harness.mjs';

describe('realtime', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    describe(format.name, () => {
      it('connects: state connected, connection id without ":", connection key set', async () => {
        const client = new Ably.Realtime(node.options(format));
        try {
          const change = await waitForState(client.connection, 'connected');
          assert.equal(client.connection.state, 'connected');
          assert.equal(change?.reason ?? null, null, 'no error on a fresh connect');
          const { id, key } = client.connection;
          assert.equal(typeof id, 'string');
          assert.ok(id.length > 0, 'connection.id is set');
          assert.ok(!id.includes(':'), `connection.id ${id} must not contain ':'`);
          assert.equal(typeof key, 'string');
          assert.ok(key.length > 0, 'connection.key is set');
          assert.equal(client.connection.errorReason ?? null, null);
        } finally {
          closeAll(client);
        }
      });

      it('two clients publish and subscribe with ACKs, ids and a consistent order', async () => {
        const name = freshChannel('pubsub');
        let a, b;
        try {
          a = await connectedClient(node, format);
          b = await connectedClient(node, format);
          const chA = a.channels.get(name);
          const chB = b.channels.get(name);
          const gotA = await collect(chA);
          const gotB = await collect(chB);
          assert.equal(chA.state, 'attached');
          assert.equal(chB.state, 'attached');

          const perClient = 5;
          // Publish concurrently from both, each sequentially awaiting its ACK, then one
          // batch of two messages each (one ProtocolMessage, two indexes).
          const sent = { A: [], B: [] }; // [{name, data, serial, index}]
          const publishFrom = async (label, channel) => {
            let serial = 0;
            for (let i = 0; i < perClient; i++) {
              const msg = { name: `${label}-${i}`, data: `payload ${label} ${i}` };
              const started = Date.now();
              await within(channel.publish(msg.name, msg.data), `ACK for ${msg.name}`);
              assert.ok(Date.now() - started < 10_000);
              sent[label].push({ ...msg, serial: serial++, index: 0 });
            }
            const batch = [
              { name: `${label}-batch-0`, data: { n: 0, from: label } },
              { name: `${label}-batch-1`, data: { n: 1, from: label } },
            ];
            await within(channel.publish(batch), `ACK for ${label}'s batch`);
            batch.forEach((m, index) => sent[label].push({ ...m, serial, index }));
          };
          await Promise.all([publishFrom('A', chA), publishFrom('B', chB)]);

          const total = 2 * (perClient + 2);
          await gotA.waitFor(total);
          await gotB.waitFor(total);
          // Nothing extra (e.g. duplicates) arrived by the time both have everything.
          assert.equal(gotA.messages.length, total, 'A got exactly the messages sent');
          assert.equal(gotB.messages.length, total, 'B got exactly the messages sent');

          const orderA = gotA.messages.map((m) => m.id);
          const orderB = gotB.messages.map((m) => m.id);
          assert.deepEqual(orderA, orderB, 'both subscribers see the same order');

          const connId = { A: a.connection.id, B: b.connection.id };
          const now = Date.now();
          for (const label of ['A', 'B']) {
            const received = gotA.messages.filter((m) => m.connectionId === connId[label]);
            assert.equal(received.length, sent[label].length,
              `all of ${label}'s messages carry ${label}'s connectionId`);
            // Per-publisher order is publish order.
            received.forEach((m, i) => {
              const s = sent[label][i];
              assert.equal(m.name, s.name);
              assert.deepEqual(m.data, s.data);
              assert.equal(m.id, `${connId[label]}:${s.serial}:${s.index}`, `id of ${s.name}`);
              assert.equal(m.connectionId, connId[label]);
              assert.equal(typeof m.timestamp, 'number', `timestamp of ${s.name}`);
              assert.ok(Math.abs(now - m.timestamp) < 60_000,
                `timestamp ${m.timestamp} of ${s.name} is near now ${now}`);
            });
          }
          // The same objects reached B (names and data), in A's order.
          assert.deepEqual(
            gotB.messages.map((m) => [m.name, m.data, m.connectionId]),
            gotA.messages.map((m) => [m.name, m.data, m.connectionId]),
          );
        } finally {
          closeAll(a, b);
        }
      });

      it('echoMessages: false suppresses only the client\'s own messages', async () => {
        const name = freshChannel('echo');
        let quiet, other;
        try {
          quiet = await connectedClient(node, format, { echoMessages: false });
          other = await connectedClient(node, format);
          const chQ = quiet.channels.get(name);
          const chO = other.channels.get(name);
          const gotQ = await collect(chQ);
          const gotO = await collect(chO);

          await within(chQ.publish('own-0', 'mine'), 'ACK own-0');
          await within(chQ.publish('own-1', 'mine'), 'ACK own-1');
          // Published after the quiet client's messages were ACKed, so on a
          // consistently ordered channel they would have been delivered before it.
          await within(chO.publish('other-0', 'theirs'), 'ACK other-0');

          await gotO.waitFor(3);
          await gotQ.waitFor(1);
          assert.deepEqual(gotO.messages.map((m) => m.name), ['own-0', 'own-1', 'other-0']);
          assert.deepEqual(gotQ.messages.map((m) => m.name), ['other-0'],
            'the echo-off client receives only the other client\'s message');
          assert.equal(gotQ.messages[0].connectionId, other.connection.id);
        } finally {
          closeAll(quiet, other);
        }
      });

      it('connection.ping() resolves with a round-trip time', async () => {
        let client;
        try {
          client = await connectedClient(node, format);
          for (let i = 0; i < 3; i++) {
            const rtt = await within(client.connection.ping(), `ping ${i}`);
            assert.equal(typeof rtt, 'number', `ping resolves with a number, got ${rtt}`);
            assert.ok(rtt >= 0 && rtt < 10_000, `ping took ${rtt} ms`);
          }
          assert.equal(client.connection.state, 'connected');
        } finally {
          closeAll(client);
        }
      });

      it('close() takes the connection to closed without an error', async () => {
        let client;
        try {
          client = await connectedClient(node, format);
          const channel = client.channels.get(freshChannel('close'));
          await within(channel.attach(), 'attach');
          const states = [];
          client.connection.on((change) => states.push(change));
          const closed = waitForState(client.connection, 'closed');
          client.close();
          await closed;
          assert.deepEqual(states.map((c) => c.current), ['closing', 'closed']);
          // ably-js itself reports a requested close as 80017 "Connection closed";
          // anything else (e.g. an error from the server) is not a clean close.
          const reason = states[1].reason;
          assert.ok(reason == null || reason.code === 80017,
            `closed carries no server error, got ${reason?.code} ${reason?.message}`);
          assert.equal(client.connection.state, 'closed');
          const err = client.connection.errorReason;
          assert.ok(err == null || err.code === 80017, `errorReason ${err?.code} ${err?.message}`);
          await assert.rejects(within(channel.publish('x', 'y'), 'publish after close'),
            'a closed connection does not publish');
        } finally {
          closeAll(client);
        }
      });

      it('close() releases the connection on the server (occupancy drops to 0)', async () => {
        const name = freshChannel('close-occupancy');
        let client;
        const rest = new Ably.Rest(node.options(format));
        const connections = async () => {
          const details = await within(rest.channels.get(name).status(), 'channel status');
          return details.status.occupancy.metrics.connections;
        };
        try {
          client = await connectedClient(node, format);
          await within(client.channels.get(name).attach(), 'attach');
          await until(async () => (await connections()) === 1, 'occupancy 1 while attached');
          client.close();
          await waitForState(client.connection, 'closed');
          await until(async () => (await connections()) === 0, 'occupancy 0 after close');
        } finally {
          closeAll(client);
        }
      });

      it('attaching ":bad" fails with 40010 and the connection stays usable', async () => {
        let client;
        try {
          client = await connectedClient(node, format);
          const bad = client.channels.get(':bad');
          const err = await within(bad.attach().then(
            () => { throw new Error('attach to ":bad" succeeded'); },
            (e) => e,
          ), 'attach to :bad to be refused');
          assert.equal(err.code, 40010, `error code (${err.code} ${err.statusCode} ${err.message})`);
          assert.equal(bad.state, 'failed');
          assert.equal(bad.errorReason?.code, 40010);
          assert.equal(client.connection.state, 'connected');

          const good = client.channels.get(freshChannel('after-bad'));
          const got = await collect(good);
          await within(good.publish('ok', 'still works'), 'publish after a refused attach');
          await got.waitFor(1);
          assert.equal(got.messages[0].data, 'still works');
          assert.equal(client.connection.state, 'connected');
        } finally {
          closeAll(client);
        }
      });
    });
  }

  // Payload round-trips: every publisher format against every subscriber format.
  const payloads = [
    { label: 'string', name: 'str', data: 'hello, wörld ✓ \u0000 end' },
    { label: 'empty string', name: 'empty', data: '' },
    { label: 'JSON object', name: 'obj', data: { a: 1, nested: { b: [1, 'two', null, true] }, s: 'x' } },
    { label: 'JSON array', name: 'arr', data: [1, { c: 'd' }, 'e'] },
    { label: 'Buffer', name: 'buf', data: Buffer.from([0, 1, 2, 253, 254, 255, 0x80, 0x7f]) },
    { label: 'Uint8Array', name: 'u8', data: new Uint8Array([9, 8, 7, 0, 255]) },
    { label: 'no data', name: 'nodata', data: undefined },
  ];

  for (const pub of FORMATS) {
    for (const sub of FORMATS) {
      describe(`payloads ${pub.name} publisher -> ${sub.name} subscriber`, () => {
        it('string, JSON and binary data round-trip equal', async () => {
          const name = freshChannel(`payload-${pub.name}-${sub.name}`);
          let publisher, subscriber;
          try {
            publisher = await connectedClient(node, pub);
            subscriber = await connectedClient(node, sub);
            const got = await collect(subscriber.channels.get(name));
            const chP = publisher.channels.get(name);
            for (const p of payloads) {
              await within(chP.publish(p.name, p.data), `ACK for ${p.label}`);
            }
            await got.waitFor(payloads.length);
            assert.equal(got.messages.length, payloads.length);
            got.messages.forEach((m, i) => {
              const p = payloads[i];
              assert.equal(m.name, p.name, `message ${i} name`);
              if (p.data === undefined) {
                assert.ok(m.data === undefined || m.data === null,
                  `${p.label}: no data, got ${JSON.stringify(m.data)}`);
              } else if (isBinary(p.data)) {
                assert.ok(isBinary(m.data),
                  `${p.label}: binary delivered as binary, got ${typeof m.data} ${JSON.stringify(m.data)}`);
                assert.deepEqual([...asBuffer(m.data)], [...asBuffer(p.data)], `${p.label} bytes`);
              } else {
                assert.deepEqual(m.data, p.data, `${p.label} data`);
              }
              // Decoding is complete: nothing left in encoding.
              assert.ok(!m.encoding, `${p.label}: encoding fully decoded, left ${m.encoding}`);
            });
          } finally {
            closeAll(publisher, subscriber);
          }
        });
      });
    }
  }
});
