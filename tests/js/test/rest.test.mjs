// REST compatibility: publish, history with pagination in both directions, history of
// realtime-published messages, payload decoding in history, channel status/occupancy.
// Each test runs once per wire format (msgpack and JSON).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Ably, FORMATS, startNode, connectedClient, collect, closeAll, within, freshChannel,
  allPages, asBuffer, isBinary, until,
} from './harness.mjs';

describe('rest', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    describe(format.name, () => {
      it('REST publish then history pages newest-first, and forwards in publish order', async () => {
        const rest = new Ably.Rest(node.options(format));
        const channel = rest.channels.get(freshChannel('rest-history'));
        const names = ['m0', 'm1', 'm2', 'm3', 'm4'];
        for (const [i, n] of names.entries()) {
          await within(channel.publish(n, `data-${i}`), `REST publish ${n}`);
        }

        // Backwards (the default), two at a time.
        const page1 = await within(channel.history({ limit: 2 }), 'history page 1');
        assert.deepEqual(page1.items.map((m) => m.name), ['m4', 'm3']);
        assert.equal(page1.hasNext(), true, 'page 1 has a next page');
        assert.equal(page1.isLast(), false);
        const page2 = await within(page1.next(), 'history page 2');
        assert.ok(page2, 'next() gave a page');
        assert.deepEqual(page2.items.map((m) => m.name), ['m2', 'm1']);
        assert.equal(page2.hasNext(), true, 'page 2 has a next page');
        const page3 = await within(page2.next(), 'history page 3');
        assert.ok(page3, 'next() gave a page');
        assert.deepEqual(page3.items.map((m) => m.name), ['m0']);
        assert.equal(page3.hasNext(), false, 'page 3 is the last');
        assert.equal(page3.isLast(), true);

        const seen = [...page1.items, ...page2.items, ...page3.items];
        assert.deepEqual(seen.map((m) => m.data), ['data-4', 'data-3', 'data-2', 'data-1', 'data-0']);
        assert.equal(new Set(seen.map((m) => m.id)).size, 5, 'five distinct ids');
        for (const m of seen) {
          assert.equal(typeof m.id, 'string');
          assert.equal(typeof m.timestamp, 'number');
          assert.ok(Math.abs(Date.now() - m.timestamp) < 60_000, 'timestamp near now');
        }

        // Without a limit: one page with all five, newest first.
        const all = await within(channel.history(), 'history without limit');
        assert.deepEqual(all.items.map((m) => m.name), ['m4', 'm3', 'm2', 'm1', 'm0']);
        assert.equal(all.hasNext(), false);

        // Forwards: publish order, also paginated.
        const fwd = await within(channel.history({ direction: 'forwards' }), 'forwards history');
        assert.deepEqual(fwd.items.map((m) => m.name), names);
        const fwdPages = await allPages(await within(
          channel.history({ direction: 'forwards', limit: 2 }), 'forwards page 1'));
        assert.deepEqual(fwdPages.map((p) => p.map((m) => m.name)), [['m0', 'm1'], ['m2', 'm3'], ['m4']]);
      });

      it('REST history of an unused channel is empty', async () => {
        const rest = new Ably.Rest(node.options(format));
        const page = await within(rest.channels.get(freshChannel('rest-empty')).history(), 'history');
        assert.deepEqual(page.items, []);
        assert.equal(page.hasNext(), false);
      });

      it('REST publish of string, JSON and binary data reads back equal from history', async () => {
        const rest = new Ably.Rest(node.options(format));
        const channel = rest.channels.get(freshChannel('rest-payloads'));
        const payloads = [
          { name: 'str', data: 'text ✓' },
          { name: 'obj', data: { k: [1, 2, { z: null }] } },
          { name: 'bin', data: Buffer.from([0, 255, 1, 254]) },
        ];
        // One publish of an array (one request), then one single message.
        await within(channel.publish(payloads.slice(0, 2)), 'REST publish of two messages');
        await within(channel.publish(payloads[2].name, payloads[2].data), 'REST publish binary');
        const page = await within(channel.history({ direction: 'forwards' }), 'history');
        assert.deepEqual(page.items.map((m) => m.name), ['str', 'obj', 'bin']);
        assert.equal(page.items[0].data, payloads[0].data);
        assert.deepEqual(page.items[1].data, payloads[1].data);
        assert.ok(isBinary(page.items[2].data), `binary read back as binary: ${JSON.stringify(page.items[2].data)}`);
        assert.deepEqual([...asBuffer(page.items[2].data)], [0, 255, 1, 254]);
        for (const m of page.items) assert.ok(!m.encoding, `encoding decoded, left ${m.encoding}`);

        // The other wire format reads the same data back.
        const otherRest = new Ably.Rest(node.options(!format.useBinaryProtocol));
        const other = await within(otherRest.channels.get(channel.name).history({ direction: 'forwards' }),
          'history in the other format');
        assert.equal(other.items[0].data, payloads[0].data);
        assert.deepEqual(other.items[1].data, payloads[1].data);
        assert.deepEqual([...asBuffer(other.items[2].data)], [0, 255, 1, 254]);
      });

      it('realtime channel.history() returns realtime-published messages newest first', async () => {
        let client;
        try {
          client = await connectedClient(node, format);
          const channel = client.channels.get(freshChannel('rt-history'));
          await within(channel.attach(), 'attach');
          for (const n of ['r0', 'r1', 'r2']) {
            await within(channel.publish(n, { n }), `publish ${n}`);
          }
          const page = await within(channel.history(), 'realtime history');
          assert.deepEqual(page.items.map((m) => m.name), ['r2', 'r1', 'r0']);
          assert.deepEqual(page.items.map((m) => m.data), [{ n: 'r2' }, { n: 'r1' }, { n: 'r0' }]);
          const connId = client.connection.id;
          assert.deepEqual(page.items.map((m) => m.id), [`${connId}:2:0`, `${connId}:1:0`, `${connId}:0:0`]);
          for (const m of page.items) assert.equal(m.connectionId, connId);

          // Paginated and forwards through the realtime channel too.
          const pages = await allPages(await within(
            channel.history({ limit: 2, direction: 'forwards' }), 'forwards page 1'));
          assert.deepEqual(pages.map((p) => p.map((m) => m.name)), [['r0', 'r1'], ['r2']]);
        } finally {
          closeAll(client);
        }
      });

      it('messages published over REST reach realtime subscribers', async () => {
        let client;
        try {
          const name = freshChannel('rest-to-rt');
          client = await connectedClient(node, format);
          const got = await collect(client.channels.get(name));
          const rest = new Ably.Rest(node.options(format));
          await within(rest.channels.get(name).publish('via-rest', { hello: 'world' }), 'REST publish');
          await got.waitFor(1);
          assert.equal(got.messages[0].name, 'via-rest');
          assert.deepEqual(got.messages[0].data, { hello: 'world' });
        } finally {
          closeAll(client);
        }
      });

      it('channel.status() reports occupancy of an attached realtime client', async () => {
        const name = freshChannel('status');
        let client;
        try {
          client = await connectedClient(node, format);
          await within(client.channels.get(name).attach(), 'attach');
          const rest = new Ably.Rest(node.options(format));
          const details = await until(async () => {
            const d = await within(rest.channels.get(name).status(), 'channel status');
            return d?.status?.occupancy?.metrics?.connections >= 1 ? d : null;
          }, 'occupancy.metrics.connections >= 1');
          assert.equal(details.channelId, name);
          assert.equal(details.status.isActive, true);
          const metrics = details.status.occupancy.metrics;
          assert.ok(metrics.connections >= 1, `connections ${metrics.connections}`);
          for (const field of ['publishers', 'subscribers', 'presenceConnections', 'presenceMembers',
            'presenceSubscribers']) {
            assert.equal(typeof metrics[field], 'number', `metrics.${field} is a number`);
          }
          assert.ok(metrics.publishers >= 1, 'the default modes include publish');
          assert.ok(metrics.subscribers >= 1, 'the default modes include subscribe');
        } finally {
          closeAll(client);
        }
      });
    });
  }
});
