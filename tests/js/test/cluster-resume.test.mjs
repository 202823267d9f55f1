// Resume across nodes with real processes: an ably-js subscriber connected through the
// region's entry loses its node to SIGKILL, reconnects through the entry to a
// surviving node and resumes there: the same connectionId, no error, the channel
// continued with RESUMED, and every message a publisher on another node had ACKed
// delivered exactly once, in order.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Ably, FORMATS, collect, closeAll, within, until, freshChannel } from './harness.mjs';
import { startRegion } from './cluster-harness.mjs';

const FAILURE_TIMEOUT_MS = 1000;
const SLOW_MS = 30_000;
const TEST_TIMEOUT = { timeout: 240_000 };

for (const format of FORMATS) {
  describe(`cluster (${format.name}): a subscriber's node is killed and it resumes on another`, () => {
    let region;
    before(async () => { region = await startRegion({ nodes: 3, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'resume' }); });
    after(async () => { await region?.stop(); });

    it(`${format.name}: same connectionId, RESUMED, every ACKed message once and in order`, TEST_TIMEOUT, async () => region.guard(async () => {
      const name = freshChannel('node-killed');
      const [host, port] = region.entry.split(':');
      const entry = {
        key: region.key, endpoint: host, port: Number(port), tls: false,
        disableConnectivityCheck: true, useBinaryProtocol: format.useBinaryProtocol,
      };
      let subscriber, publisher;
      try {
        subscriber = new Ably.Realtime(entry);
        await until(() => subscriber.connection.state === 'connected', 'the subscriber to connect', SLOW_MS);
        const idBefore = subscriber.connection.id;
        const servedBy = region.node(subscriber.connection.connectionManager.connectionDetails?.serverId
          ?? subscriber.connection.serverId);
        const channel = subscriber.channels.get(name);
        const got = await collect(channel);
        const discontinuities = [];
        channel.on('update', (change) => { if (!change.resumed) discontinuities.push(change.reason?.code ?? null); });

        // The publisher sits on another node, so it survives the kill.
        const other = region.nodes.find((n) => n.id !== servedBy.id && n.alive());
        publisher = new Ably.Realtime(other.options(format));
        await until(() => publisher.connection.state === 'connected', 'the publisher to connect', SLOW_MS);
        const out = publisher.channels.get(name);
        const acked = [];
        for (let i = 0; i < 5; i++) {
          await within(out.publish(`m${i}`, `before ${i}`), `ACK for m${i}`, SLOW_MS);
          acked.push(`m${i}`);
        }
        await got.waitFor(5, SLOW_MS);

        servedBy.signal('SIGKILL');
        await servedBy.waitExit(`${servedBy.id} to die`);
        for (let i = 5; i < 30; i++) {
          await within(out.publish(`m${i}`, `after ${i}`), `ACK for m${i}`, SLOW_MS);
          acked.push(`m${i}`);
        }

        await until(() => subscriber.connection.state === 'connected'
          && subscriber.connection.connectionManager.connectionDetails?.serverId !== servedBy.id,
        'the subscriber to reconnect to a surviving node', SLOW_MS);
        assert.equal(subscriber.connection.id, idBefore, 'the connection resumed on another node');
        const all = await got.waitFor(acked.length, SLOW_MS);
        assert.deepEqual(all.map((m) => m.name), acked, 'every ACKed message once, in order');
        assert.deepEqual(discontinuities, [], 'no re-attach without RESUMED');
      } finally {
        closeAll(subscriber, publisher);
      }
    }));
  });
}
