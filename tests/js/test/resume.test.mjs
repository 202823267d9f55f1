// Connection continuity with the real client: ably-js loses its transport while
// another client publishes, resumes on its own with its connection key, keeps its
// connectionId, and receives every message once, in order, with no discontinuity.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  FORMATS, startNode, connectedClient, collect, closeAll, within, freshChannel, until,
} from './harness.mjs';

const MISSED = 500;

describe('resume', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    it(`${format.name}: a dropped transport resumes with the same connectionId and loses nothing`, async () => {
      const name = freshChannel('resume');
      let publisher, subscriber;
      try {
        publisher = await connectedClient(node, format);
        subscriber = await connectedClient(node, format);
        const idBefore = subscriber.connection.id;
        const channel = subscriber.channels.get(name);
        const got = await collect(channel);
        const discontinuities = [];
        channel.on('update', (change) => {
          if (!change.resumed) discontinuities.push(change.reason?.code ?? 'no reason');
        });
        const reconnected = [];
        subscriber.connection.on('connected', (change) => reconnected.push(change));

        const out = publisher.channels.get(name);
        await within(out.publish('m0', 'first'), 'ACK for m0');
        await got.waitFor(1);

        // Drop the transport as a network would; the client resumes by itself.
        subscriber.connection.connectionManager.disconnectAllTransports();
        for (let i = 1; i <= MISSED; i++) {
          await within(out.publish(`m${i}`, `payload ${i}`), `ACK for m${i}`);
        }

        await until(() => reconnected.length > 0, 'the subscriber to reconnect', 30_000);
        assert.equal(subscriber.connection.id, idBefore, 'resume kept the connectionId');
        assert.equal(reconnected[0].reason ?? null, null, 'resumed without an error');

        const all = await got.waitFor(MISSED + 1, 30_000);
        const names = all.map((m) => m.name);
        const wanted = Array.from({ length: MISSED + 1 }, (_, i) => `m${i}`);
        assert.deepEqual(names, wanted, 'every message once, in order');
        assert.deepEqual(discontinuities, [], 'no re-attach without RESUMED');
        assert.equal(channel.state, 'attached');
      } finally {
        closeAll(publisher, subscriber);
      }
    });
  }
});

describe('rewind', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    it(`${format.name}: a channel attached with params.rewind gets the last messages first`, async () => {
      const name = freshChannel('rewind');
      let publisher, late;
      try {
        publisher = await connectedClient(node, format);
        const out = publisher.channels.get(name);
        for (let i = 0; i < 6; i++) await within(out.publish(`m${i}`, `payload ${i}`), `ACK for m${i}`);

        late = await connectedClient(node, format);
        const channel = late.channels.get(name, { params: { rewind: '2' } });
        const got = await collect(channel);
        await within(out.publish('live', 'now'), 'ACK for live');
        const all = await got.waitFor(3);
        assert.deepEqual(all.map((m) => m.name), ['m4', 'm5', 'live']);
      } finally {
        closeAll(publisher, late);
      }
    });
  }
});
