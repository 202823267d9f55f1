// Bridged regions with real processes: `region-node dev --regions eu,us` (three
// `global-master` processes, each region its own mesh and entry balancer), ably-js
// 2.28.0 clients connected through each region's entry or directly to chosen nodes.
//
// 1. Two regions of two nodes: a channel first used in eu is homed there; subscribers
//    in both regions see one identical sequence, each publisher's messages in publish
//    order, every message once, with the serials the ACKs gave; REST history through
//    either region (entry and every node) is the same, oldest first. Both formats.
// 2. Two regions of three nodes: SIGKILL the us node relaying the channel while eu
//    (and a surviving us node) keep publishing: the surviving us subscribers receive
//    every ACKed message exactly once, in order. Three nodes, because a 2-node region
//    that loses one has no majority and sends its clients away by design
//    (docs/architecture.md, "Failover").
// 3. Two regions of three nodes: channels homed in eu, subscribed on every us node and
//    published to steadily from eu; a fourth us node joins (started by hand from
//    us-2's config) and the ring makes it the relay of some of them: the original us
//    subscribers still get every ACKed message exactly once, in order, and a client
//    on the new node gets everything published after it attached.
// 4. Two regions of three nodes: SIGKILL the eu node that both masters a channel and
//    accepted the us relay's bridge stream, while eu (from a surviving node) and us
//    publish: the link moves to a surviving eu node, a new eu master takes over, and
//    subscribers in both regions get every ACKed message exactly once, in order.
//
// Every describe block starts its own federation and kills everything (launcher,
// nodes and global masters by pid) in after hooks. The folder is kept when a test
// fails (`STARLING_CLUSTER_KEEP=1` keeps it always).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Ably, FORMATS, connectedClient, collect, closeAll, within, until, freshChannel, allPages,
} from './harness.mjs';
import {
  startFederation, agreedPlacement, steadyPublisher, checkDelivery, checkSerialOrder, ackGaps,
  compact, channelReport, explained, waitRegionHealthy,
} from './cluster-harness.mjs';

const FAILURE_TIMEOUT_MS = 1000;
const [MSGPACK, JSON_FMT] = FORMATS;
/** How long a region may take to reach a channel's home over a new bridge. */
const LINK_UP_MS = 15_000;
/** Generous deadline for what a busy 2-core machine may take. */
const SLOW_MS = 30_000;
const TEST_TIMEOUT = { timeout: 240_000 };
/**
 * After the relay dies, an eu message ACKed at the home reaches the surviving us
 * subscribers within this long: failure detection (1 s), a new relay, the home's replay.
 */
const RELAY_LAG_MS = 10_000;

function note(t, text) {
  t.diagnostic(text);
  if (process.env.STARLING_CLUSTER_VERBOSE) process.stderr.write(`[federation] ${text}\n`);
}

/**
 * Attaches `channel`, retrying while the region cannot reach the channel's home yet
 * (the attach fails with a retriable error, e.g. 50001, until the bridge is up).
 * Returns how many attempts it took.
 */
async function attachWhenLinked(channel, who, ms = LINK_UP_MS) {
  let attempts = 0;
  let last = null;
  await until(async () => {
    attempts += 1;
    try {
      await within(channel.attach(), `${who}: attach ${channel.name}`, 5_000);
      return true;
    } catch (e) {
      last = e;
      return false;
    }
  }, `${who} to attach ${channel.name} (last error: ${last?.code ?? ''} ${last?.message ?? last})`, ms, 200)
    .catch((e) => {
      e.message += ` (after ${attempts} attempts; last: ${last?.code ?? ''} ${last?.message ?? last})`;
      throw e;
    });
  return attempts;
}

/** A subscriber: a client, its channel attached (retried while linking), a collector. */
async function subscriber(target, format, name, who, clients) {
  const client = await connectedClient(target, format);
  clients.push(client);
  return subscribeWith(client, name, who);
}

/**
 * Attaches `name` on an already connected `client` (retried while linking) and
 * collects it; `since` is when the collector was in place.
 */
async function subscribeWith(client, name, who) {
  const channel = client.channels.get(name);
  const attempts = await attachWhenLinked(channel, who);
  const arrivals = new Map(); // message id -> when it arrived
  await channel.subscribe((m) => { if (!arrivals.has(m.id)) arrivals.set(m.id, Date.now()); });
  const got = await collect(channel);
  // Channel state changes after the attach (an ATTACHED with an error is a
  // discontinuity the server announced): for failure reports.
  const changes = [];
  channel.on((c) => changes.push({
    at: new Date().toISOString(), current: c.current, previous: c.previous, resumed: c.resumed,
    reason: c.reason ? `${c.reason.code} ${c.reason.message}` : null,
  }));
  return { who, name, client, channel, attempts, arrivals, got, changes, since: Date.now() };
}

/** The largest delay from a publisher's ACK to the message's arrival at `sub`. */
function maxLag(sub, run) {
  const byN = new Map(sub.got.messages.filter((m) => m.name === run.label).map((m) => [m.data.n, m]));
  let worst = { lag: -Infinity, n: null };
  for (const a of run.acks) {
    const m = byN.get(a.n);
    const lag = m ? sub.arrivals.get(m.id) - a.ackAt : Infinity;
    if (lag > worst.lag) worst = { lag, n: a.n };
  }
  return worst;
}

function ids(sub) {
  return sub.got.messages.map((m) => m.id);
}

function namesOf(messages) {
  return messages.map((m) => m.name);
}

function assertNoDuplicateIds(sub) {
  const seen = new Map();
  for (const [i, m] of sub.got.messages.entries()) {
    assert.ok(!seen.has(m.id), `${sub.who}: message ${m.id} (${m.name} ${JSON.stringify(m.data)}) ` +
      `delivered twice, at ${seen.get(m.id)} and ${i}`);
    seen.set(m.id, i);
  }
}

async function waitForName(sub, name, ms = SLOW_MS) {
  await until(() => sub.got.messages.some((m) => m.name === name),
    `${sub.who} to receive ${name} (got ${sub.got.messages.length} messages, last ` +
    `${sub.got.messages[sub.got.messages.length - 1]?.name ?? '-'})`, ms);
}

/** REST history of `name`, oldest first, through `target` (a region's entry or a node). */
async function historyThrough(target, format, name, what) {
  const rest = new Ably.Rest(target.options(format));
  const first = await within(rest.channels.get(name).history({ direction: 'forwards', limit: 100 }),
    `REST history through ${what}`, SLOW_MS);
  return (await allPages(first)).flat();
}

/** How many client connections each node holds (which nodes the entry chose). */
async function connectionsPerNode(nodes) {
  const counts = await Promise.all(nodes.map(async (n) => {
    const h = await n.health(1000);
    return `${n.id}=${h.body?.connections ?? h.error ?? h.status}`;
  }));
  return counts.join(' ');
}

/** `agreedPlacement`, retried until the nodes agree (right after a view change). */
async function settledPlacement(nodes, name, ms = SLOW_MS) {
  let owners = null;
  await until(async () => {
    owners = await agreedPlacement(nodes, name);
    return true;
  }, `${nodes.map((n) => n.id).join(', ')} to agree on ${name}'s placement`, ms, 100);
  return owners;
}

/** A failure report: each node's view of the channel, each subscriber, each publisher. */
async function report(fed, name, subs, pubs = [], { logs = true } = {}) {
  const lines = [await channelReport(fed.nodes, name)];
  for (const s of subs) {
    const last = s.got.messages[s.got.messages.length - 1];
    lines.push(`${s.who}: ${s.got.messages.length} messages, last ${last ? `${last.name} ${JSON.stringify(last.data)} ${last.serial}` : '-'}; ` +
      `connection ${s.client.connection.state}, channel ${s.channel.state}` +
      `${s.changes?.length ? `; channel changes ${JSON.stringify(s.changes)}` : ''}`);
  }
  for (const p of pubs) {
    const a = p.run.acks[p.run.acks.length - 1];
    lines.push(`${p.label}: ${p.run.acks.length} acked (last #${a?.n} ${a?.serial} at ${a ? new Date(a.ackAt).toISOString() : '-'}), ` +
      `refused ${JSON.stringify(p.run.failures)}, in flight ${JSON.stringify(p.run.state.inflight)}`);
  }
  if (logs) lines.push(fed.logs(25));
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------

/**
 * After a node was killed at `killAt`: every subscriber catches up with the latest ACKed
 * message of each publisher, then gets the end marker last (with its ACK's serial); all
 * see the same messages in one order, each ACKed message once; no publish was refused;
 * the first two subscribers got eu's messages soon after their ACKs.
 */
async function verifyAfterKill(t, { subs, pubs, euPub, killAt, why }) {
  for (const s of subs) {
    await until(() => pubs.every((p) => s.got.messages.some((m) => m.name === p.label &&
      m.data?.n === p.run.acks[p.run.acks.length - 1].n)),
    `${s.who} to receive the latest ACKed messages after the kill`, SLOW_MS);
  }

  for (const p of pubs) await p.run.stop();
  const end = await within(euPub.publish('end', { end: true }), 'ACK for the end marker', SLOW_MS);
  for (const s of subs) await waitForName(s, 'end');

  for (const s of subs) {
    assertNoDuplicateIds(s);
    checkSerialOrder(assert, s.got.messages, s.who);
    const last = s.got.messages[s.got.messages.length - 1];
    assert.equal(last.name, 'end', `${s.who}: nothing after the end marker`);
    assert.equal(last.serial, end.serials[0], `${s.who}: the end marker has its ACK's serial`);
    for (const p of pubs) {
      const { received, unackedDelivered } = checkDelivery(assert, s.got.messages, p.run, s.who);
      note(t, `${s.who}: ${received} of ${p.label}'s ${p.run.published} published ` +
        `(${p.run.acks.length} acked, ${p.run.failures.length} refused; delivered unacked ${compact(unackedDelivered)})`);
    }
  }
  for (const s of subs.slice(1)) {
    assert.deepEqual(ids(s), ids(subs[0]), `${s.who} sees the same messages in the same order as ${subs[0].who}`);
  }
  for (const p of pubs) {
    const gaps = ackGaps(p.run.acks, killAt);
    note(t, `${p.label}: first ACK ${gaps.sinceEvent} ms after the kill (gap ${gaps.gapAround} ms; ` +
      `largest ${gaps.maxGap} ms); refused ${JSON.stringify(p.run.failures)}`);
  }
  for (const p of pubs) {
    assert.deepEqual(p.run.failures, [], `${p.label}: no publish refused (${why})`);
  }
  // The first two subscribers kept receiving: no eu message took long after its ACK.
  for (const s of subs.slice(0, 2)) {
    const worst = maxLag(s, pubs[0].run);
    note(t, `${s.who}: eu messages arrived at most ${worst.lag} ms after their ACK (#${worst.n})`);
    assert.ok(worst.lag < RELAY_LAG_MS,
      `${s.who}: eu #${worst.n} arrived ${worst.lag} ms after its ACK (limit ${RELAY_LAG_MS})`);
  }
}

describe('federation: two regions share a channel homed in eu', () => {
  let fed;
  before(async () => {
    fed = await startFederation({
      regions: ['eu', 'us'], nodes: 2, globalMasters: 3, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'share',
    });
  });
  after(async () => { await fed?.stop(); });

  for (const format of FORMATS) {
    it(`(${format.name}) subscribers in both regions see one sequence, each message once; history agrees in both regions`, TEST_TIMEOUT, async (t) => fed.guard(async () => {
      const eu = fed.region('eu');
      const us = fed.region('us');
      const name = freshChannel(`fed-share-${format.name}`);
      const clients = [];
      const subs = [];
      try {
        await explained(async () => {
          // First use in eu: eu becomes the channel's home.
          const euPubClient = await connectedClient(eu, format);
          clients.push(euPubClient);
          const euPub = euPubClient.channels.get(name);
          const home = await within(euPub.publish('home', { first: true }), 'ACK for the first publish, in eu', SLOW_MS);
          const homeSerial = home?.serials?.[0];
          const euOwners = await agreedPlacement(eu.nodes, name);
          const euMaster = await fed.node(euOwners[0]).placement(name);
          note(t, `channel ${name}: eu owners ${euOwners.join(', ')} (master epoch ${euMaster.epoch}), first serial ${homeSerial}`);
          assert.notEqual(euMaster.epoch, null, `eu's master ${euOwners[0]} sequences ${name} (its home is eu)`);

          // Two subscribers per region, through each region's entry (round robin: one per node).
          for (const region of [eu, us]) {
            for (let i = 0; i < 2; i++) {
              const sub = await subscriber(region, format, name, `subscriber ${i + 1} in ${region.name}`, clients);
              subs.push(sub);
            }
          }
          const usPubClient = await connectedClient(us, format);
          clients.push(usPubClient);
          const usPub = usPubClient.channels.get(name);
          const usOwners = await agreedPlacement(us.nodes, name);
          note(t, `us relay and copy: ${usOwners.join(', ')}; attach attempts ${subs.map((s) => `${s.who}=${s.attempts}`).join(', ')}; ` +
            `connections ${await connectionsPerNode(fed.nodes)}`);

          // Interleaved, each ACK awaited before the next publish: causally ordered, so
          // the one sequence must be exactly eu-0, us-0, eu-1, us-1, ...
          const perRegion = 20;
          const expected = [];
          const acks = new Map();
          for (let n = 0; n < perRegion; n++) {
            for (const [label, channel] of [['eu', euPub], ['us', usPub]]) {
              const msgName = `${label}-${n}`;
              const result = await within(channel.publish(msgName, { n, p: label }), `ACK for ${msgName}`, SLOW_MS);
              assert.equal(result?.serials?.length, 1, `${msgName}: the ACK carries one serial`);
              acks.set(msgName, result.serials[0]);
              expected.push(msgName);
            }
          }
          // A last message from us: once it arrived, nothing earlier is still on its way.
          const end = await within(usPub.publish('end', { end: true }), 'ACK for the end marker', SLOW_MS);
          acks.set('end', end.serials[0]);
          expected.push('end');
          for (const s of subs) await waitForName(s, 'end');

          for (const s of subs) {
            assertNoDuplicateIds(s);
            assert.deepEqual(namesOf(s.got.messages), expected,
              `${s.who}: every message once, in the order they were acknowledged`);
            checkSerialOrder(assert, s.got.messages, s.who);
            for (const m of s.got.messages) {
              assert.equal(m.serial, acks.get(m.name), `${s.who}: ${m.name} carries the serial its ACK gave`);
            }
            for (const label of ['eu', 'us']) {
              checkDelivery(assert, s.got.messages.filter((m) => m.data?.p === label).map((m) => ({ ...m, name: label })),
                { label, acks: [...Array(perRegion).keys()].map((n) => ({ n, serial: acks.get(`${label}-${n}`) })) }, s.who);
            }
          }
          for (const s of subs.slice(1)) {
            assert.deepEqual(ids(s), ids(subs[0]), `${s.who} sees the same messages (ids) as ${subs[0].who}`);
          }

          // REST history, oldest first: the same through either region's entry and
          // through every node, and what the subscribers saw after the first publish.
          const wanted = ['home', ...expected];
          const byId = new Map(subs[0].got.messages.map((m) => [m.id, m]));
          const histories = [];
          for (const target of [us, eu, ...us.nodes, ...eu.nodes]) {
            const what = target.nodes ? `${target.name}'s entry` : `node ${target.id}`;
            histories.push({ what, items: await historyThrough(target, format, name, what) });
          }
          for (const { what, items } of histories) {
            assert.deepEqual(namesOf(items), wanted, `history through ${what} (${format.name})`);
            assert.equal(items[0].serial ?? homeSerial, homeSerial, `history through ${what}: the first message's serial`);
            for (const m of items.slice(1)) {
              const d = byId.get(m.id);
              assert.ok(d, `history through ${what}: ${m.name} has the id subscribers saw (${m.id})`);
              assert.deepEqual(m.data, d.data, `history through ${what}: data of ${m.name}`);
              if (m.serial != null) assert.equal(m.serial, d.serial, `history through ${what}: serial of ${m.name}`);
            }
          }
          assert.deepEqual(histories[0].items.map((m) => m.id), histories[1].items.map((m) => m.id),
            'history through us and through eu: the same messages in the same order');
        }, () => report(fed, name, subs));
      } finally {
        closeAll(clients);
      }
    }));
  }
});

// ---------------------------------------------------------------------------------------

describe('federation: SIGKILL the us node relaying a channel homed in eu', () => {
  let fed;
  before(async () => {
    fed = await startFederation({
      regions: ['eu', 'us'], nodes: 3, globalMasters: 3, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'relay-kill',
    });
  });
  after(async () => { await fed?.stop(); });

  it('the surviving us subscribers keep receiving every ACKed message exactly once, in order', TEST_TIMEOUT, async (t) => fed.guard(async () => {
    const eu = fed.region('eu');
    const us = fed.region('us');
    const name = freshChannel('fed-relay-kill');
    const clients = [];
    const subs = [];
    const pubs = [];
    try {
      await explained(async () => {
        const euPubClient = await connectedClient(eu, MSGPACK);
        clients.push(euPubClient);
        const euPub = euPubClient.channels.get(name);
        await within(euPub.publish('home', { first: true }), 'ACK for the first publish, in eu', SLOW_MS);

        // Subscribers on both us nodes that do not relay the channel (connected to
        // them directly, not through the entry), and one in eu.
        const owners = await agreedPlacement(us.nodes, name);
        const relay = fed.node(owners[0]);
        const survivors = us.nodes.filter((n) => n !== relay);
        for (const [i, node] of survivors.entries()) {
          const format = i === 0 ? JSON_FMT : MSGPACK;
          subs.push(await subscriber(node, format, name, `subscriber on ${node.id} (${format.name})`, clients));
        }
        subs.push(await subscriber(eu, JSON_FMT, name, 'subscriber in eu (json)', clients));
        // Publishers: one in eu (the home), and one on a surviving us node, whose
        // publishes the relay forwards to eu.
        await within(euPub.attach(), 'eu publisher attach', SLOW_MS);
        pubs.push({ label: 'eu', run: steadyPublisher(euPub, 'eu', { intervalMs: 50 }) });
        const usPubClient = await connectedClient(survivors[0], MSGPACK);
        clients.push(usPubClient);
        const usPub = usPubClient.channels.get(name);
        await attachWhenLinked(usPub, `publisher on ${survivors[0].id}`);
        pubs.push({ label: 'us', channel: usPub, run: steadyPublisher(usPub, 'us', { intervalMs: 50 }) });
        note(t, `channel ${name}: us owners ${owners.join(', ')}, killing the relay ${relay.id}; ` +
          `subscribers on ${survivors.map((n) => n.id).join(', ')} and in eu; us publisher on ${survivors[0].id}`);

        for (const p of pubs) await p.run.waitAcks(20, '20 ACKs before the kill', SLOW_MS);
        for (const s of subs.slice(0, 2)) {
          await until(() => s.got.messages.filter((m) => m.name === 'us').length >= 10 &&
            s.got.messages.filter((m) => m.name === 'eu').length >= 10,
          `${s.who} to receive messages of both publishers before the kill`, SLOW_MS);
        }

        const killAt = Date.now();
        assert.ok(relay.signal('SIGKILL'), `SIGKILL ${relay.id}`);
        await relay.waitExit(`${relay.id} to die`);

        for (const p of pubs) {
          await p.run.waitUntil(() => p.run.acks.filter((a) => a.ackAt > killAt).length >= 30,
            '30 ACKs after the kill', SLOW_MS);
        }
        const movedAt = await until(async () => {
          const views = await Promise.all(survivors.map((n) => n.placement(name)));
          return views.every((v) => !v.owners.includes(relay.id)) ? Date.now() : null;
        }, `the surviving us nodes' placement of ${name} to drop ${relay.id}`, SLOW_MS);
        const newOwners = await agreedPlacement(survivors, name);
        note(t, `us placement after the kill: ${newOwners.join(', ')} (seen ${movedAt - killAt} ms after it)`);
        // Every subscriber has caught up with what was published after the kill.
        await verifyAfterKill(t, { subs, pubs, euPub, killAt, why: 'only a us relay died; us keeps a majority' });

        // History through a surviving us node and through eu: the same, in the
        // subscribers' order.
        const viaUs = await historyThrough(survivors[1], MSGPACK, name, `node ${survivors[1].id}`);
        const viaEu = await historyThrough(eu, JSON_FMT, name, "eu's entry");
        assert.deepEqual(viaUs.map((m) => m.id), viaEu.map((m) => m.id), 'history through us and through eu agree');
        assert.deepEqual(viaEu.slice(1).map((m) => m.id), ids(subs[0]),
          'history (after the first message) is what the subscribers saw, in order');
      }, () => report(fed, name, subs, pubs));
    } finally {
      for (const p of pubs) p.run.state.stopped = true;
      closeAll(clients);
    }
  }));
});

// ---------------------------------------------------------------------------------------

/**
 * Candidate channels for the join test: all are homed in eu, subscribed in us and
 * published to before us-4 exists; the ones the 4-node us ring gives to us-4 are the
 * ones the test follows. Placement hashes node ids and names only, so in a fresh
 * federation the same candidates go to us-4 every run (3 of these 6 today).
 */
const JOIN_CANDIDATES = Array.from({ length: 6 }, (_, i) => `joined-${i}`);

describe('federation: a node joins the region relaying a channel homed in eu', () => {
  let fed;
  before(async () => {
    fed = await startFederation({
      regions: ['eu', 'us'], nodes: 3, globalMasters: 3, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'join',
    });
  });
  after(async () => { await fed?.stop(); });

  it("a node added to a region after interest was established receives the home's traffic", TEST_TIMEOUT, async (t) => fed.guard(async () => {
    const eu = fed.region('eu');
    const us = fed.region('us');
    const originals = [...us.nodes];
    const clients = [];
    const subs = []; // { who, name, node, ... } per (client, channel)
    const pubs = new Map(); // channel -> { label, name, channel, run }
    let chosen = [];
    try {
      await explained(async () => {
        // Every candidate is homed in eu by its first publish there.
        const euPubClient = await connectedClient(eu.nodes[0], MSGPACK);
        clients.push(euPubClient);
        for (const name of JOIN_CANDIDATES) {
          await within(euPubClient.channels.get(name).publish('home', { first: true }),
            `ACK for the first publish of ${name}, in eu`, SLOW_MS);
        }
        // One subscriber client on each original us node, attached to every candidate.
        for (const [i, node] of originals.entries()) {
          const format = FORMATS[i % 2];
          const client = await connectedClient(node, format);
          clients.push(client);
          for (const name of JOIN_CANDIDATES) {
            const sub = await subscribeWith(client, name, `subscriber on ${node.id} (${format.name}) to ${name}`);
            subs.push({ ...sub, node });
          }
        }
        // Steady eu publishing on every candidate, each ACK awaited.
        for (const name of JOIN_CANDIDATES) {
          const channel = euPubClient.channels.get(name);
          pubs.set(name, { label: 'eu', name, channel, run: steadyPublisher(channel, 'eu', { intervalMs: 100 }) });
        }
        for (const p of pubs.values()) await p.run.waitAcks(15, '15 ACKs before the join', SLOW_MS);
        for (const s of subs) {
          await until(() => s.got.messages.filter((m) => m.name === 'eu').length >= 5,
            `${s.who} to receive eu messages before the join`, SLOW_MS);
        }
        // Interest is established: each candidate's us ring owner relays it.
        const before3 = {};
        for (const name of JOIN_CANDIDATES) {
          before3[name] = await settledPlacement(originals, name);
          const relay = fed.node(before3[name][0]);
          await until(async () => {
            const p = await relay.placement(name);
            return p.relaying && p.home === 'eu';
          }, `${relay.id} to relay ${name} from eu before the join`, SLOW_MS);
        }

        // A fourth us node, started from us-2's config (same region, seeds, global
        // members, a bridge listener on port 0) with its own id and certificate.
        const joinAt = Date.now();
        const joined = await fed.addNode({ id: 'us-4', region: 'us', from: 'us-2' });
        await waitRegionHealthy(us.nodes, 4, 'every us node healthy with 4 live (us-4 joined)', SLOW_MS);
        const joinedAt = Date.now();
        const after4 = {};
        for (const name of JOIN_CANDIDATES) after4[name] = await settledPlacement(us.nodes, name);
        const moves = JOIN_CANDIDATES.map((n) => `${n} ${before3[n].join(',')} -> ${after4[n].join(',')}`).join('; ');
        note(t, `us-4 joined in ${joinedAt - joinAt} ms (bridge ${joined.bridge}); us placement: ${moves}`);
        chosen = JOIN_CANDIDATES.filter((n) => after4[n][0] === joined.id);
        assert.ok(chosen.length > 0,
          `some candidate channel is relayed by ${joined.id} after the join (add candidates if none is): ${moves}`);
        // Only the channels whose relay moved to us-4 keep publishing; the others
        // are checked at the end for what was published until now.
        for (const [name, p] of pubs) if (!chosen.includes(name)) await p.run.stop();

        // The relay moved: us-4 relays each chosen channel from eu, its old relay not.
        for (const name of chosen) {
          const old = fed.node(before3[name][0]);
          await until(async () => {
            const [mine, theirs] = await Promise.all([joined.placement(name), old.placement(name)]);
            return mine.relaying && mine.home === 'eu' && !theirs.relaying;
          }, `${joined.id} (not ${old.id}) to relay ${name} from eu`, SLOW_MS);
        }
        const relayedAt = Date.now();
        note(t, `${joined.id} relays ${chosen.join(', ')} ${relayedAt - joinedAt} ms after it joined`);
        for (const name of chosen) {
          await pubs.get(name).run.waitUntil(() => pubs.get(name).run.acks.filter((a) => a.ackAt > relayedAt).length >= 20,
            '20 ACKs after the relay moved', SLOW_MS);
        }
        // Every original subscriber keeps up through the move.
        for (const s of subs.filter((x) => chosen.includes(x.name))) {
          const run = pubs.get(s.name).run;
          const n = run.acks[run.acks.length - 1].n;
          await until(() => s.got.messages.some((m) => m.name === 'eu' && m.data?.n >= n),
            `${s.who} to receive eu #${n} (ACKed after the relay moved)`, SLOW_MS);
        }

        // A client connected directly to us-4 gets what eu publishes from then on.
        const newClient = await connectedClient(joined, JSON_FMT);
        clients.push(newClient);
        const newSubs = [];
        for (const name of chosen) {
          newSubs.push({ ...await subscribeWith(newClient, name, `subscriber on ${joined.id} (json) to ${name}`), node: joined });
        }
        for (const s of newSubs) {
          const run = pubs.get(s.name).run;
          await run.waitUntil(() => run.acks.filter((a) => a.sentAt > s.since).length >= 15,
            `15 ACKs after ${s.who} attached`, SLOW_MS);
          const n = run.acks[run.acks.length - 1].n;
          await until(() => s.got.messages.some((m) => m.name === 'eu' && m.data?.n >= n),
            `${s.who} to receive eu #${n}`, SLOW_MS);
        }
        subs.push(...newSubs);

        for (const p of pubs.values()) await p.run.stop();
        const ends = new Map();
        for (const name of JOIN_CANDIDATES) {
          const end = await within(euPubClient.channels.get(name).publish('end', { end: true }),
            `ACK for the end marker of ${name}`, SLOW_MS);
          ends.set(name, end.serials[0]);
        }
        for (const s of subs) await waitForName(s, 'end');

        for (const s of subs) {
          const run = pubs.get(s.name).run;
          assertNoDuplicateIds(s);
          checkSerialOrder(assert, s.got.messages, s.who);
          const last = s.got.messages[s.got.messages.length - 1];
          assert.equal(last.name, 'end', `${s.who}: nothing after the end marker`);
          assert.equal(last.serial, ends.get(s.name), `${s.who}: the end marker has its ACK's serial`);
          // What a subscriber attached on us-4 must have: everything published after it attached.
          const due = s.node === joined ? { label: 'eu', acks: run.acks.filter((a) => a.sentAt > s.since) } : run;
          const { received, unackedDelivered } = checkDelivery(assert, s.got.messages, due, s.who);
          if (chosen.includes(s.name)) {
            note(t, `${s.who}: ${received} eu messages (${due.acks.length} due of ${run.acks.length} ACKed, ` +
              `${run.failures.length} refused; delivered and not due ${compact(unackedDelivered)}; attach attempts ${s.attempts})`);
          }
        }
        for (const name of JOIN_CANDIDATES) {
          const [first, ...rest] = subs.filter((s) => s.name === name && s.node !== joined);
          for (const s of rest) assert.deepEqual(ids(s), ids(first), `${s.who} sees ${first.who}'s messages in its order`);
          for (const s of subs.filter((x) => x.name === name && x.node === joined)) {
            const mine = ids(s);
            assert.deepEqual(mine, ids(first).slice(-mine.length),
              `${s.who} sees the tail of ${first.who}'s sequence from where it attached`);
          }
        }
        for (const p of pubs.values()) {
          assert.deepEqual(p.run.failures, [], `${p.name}: no eu publish refused while us-4 joined`);
        }
        for (const name of chosen) {
          const gaps = ackGaps(pubs.get(name).run.acks, joinAt);
          note(t, `${name}: ${pubs.get(name).run.acks.length} acked; ACK gap at the join ${gaps.gapAround} ms, largest ${gaps.maxGap} ms`);
        }

        // History through us-4 (its relay asks the home) is what the subscribers saw.
        const name = chosen[0];
        const [first] = subs.filter((s) => s.name === name && s.node !== joined);
        const items = await historyThrough(joined, MSGPACK, name, `node ${joined.id}`);
        assert.deepEqual(items.map((m) => m.id), [items[0]?.id, ...ids(first)],
          `history of ${name} through ${joined.id} is complete and in the subscribers' order`);
        assert.equal(items[0]?.name, 'home', `history of ${name} through ${joined.id} starts with the first publish`);
      }, async () => [...await Promise.all(JOIN_CANDIDATES.map((n) => report(fed, n, subs.filter((s) => s.name === n),
        pubs.has(n) ? [pubs.get(n)] : [], { logs: false }))), fed.logs(30)].join('\n'));
    } finally {
      for (const p of pubs.values()) p.run.state.stopped = true;
      closeAll(clients);
    }
  }));
});

// ---------------------------------------------------------------------------------------

/**
 * The `bridge link accepted` lines naming the dialing node `peer` in the logs of
 * `nodes` (the accepting side logs one per stream it accepts): `[{node, line}]`.
 */
function acceptedLinks(nodes, peer) {
  const pattern = new RegExp(`bridge link accepted.*\\bpeer\\.node=${peer}(\\s|$)`);
  return nodes.flatMap((n) => n.log().split('\n').filter((l) => pattern.test(l)).map((line) => ({ node: n, line })));
}

/** The node whose log shows the latest accepted link from `peer`, or null. */
function latestAcceptor(nodes, peer) {
  const links = acceptedLinks(nodes, peer);
  links.sort((a, b) => (a.line < b.line ? -1 : a.line > b.line ? 1 : 0)); // lines start with an ISO time
  return links.length ? links[links.length - 1].node : null;
}

describe('federation: SIGKILL the eu node that masters a channel and accepted the us bridge', () => {
  let fed;
  before(async () => {
    fed = await startFederation({
      regions: ['eu', 'us'], nodes: 3, globalMasters: 3, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'home-kill',
    });
  });
  after(async () => { await fed?.stop(); });

  it('the home node that accepted the bridge dies and the link moves to another node', TEST_TIMEOUT, async (t) => fed.guard(async () => {
    const eu = fed.region('eu');
    const us = fed.region('us');
    const clients = [];
    const subs = [];
    const pubs = [];
    let name = freshChannel('fed-home-kill-warmup');
    try {
      await explained(async () => {
        // A warm-up channel homed in eu with a us subscriber: its us relay dials eu,
        // and some eu node accepts the stream.
        const warmClient = await connectedClient(eu.nodes[0], MSGPACK);
        clients.push(warmClient);
        await within(warmClient.channels.get(name).publish('home', { first: true }), 'ACK for the warm-up publish, in eu', SLOW_MS);
        const relay = fed.node((await settledPlacement(us.nodes, name))[0]);
        subs.push(await subscriber(relay, JSON_FMT, name, `warm-up subscriber on ${relay.id}`, clients));
        let acceptor = null;
        await until(() => (acceptor = latestAcceptor(eu.nodes, relay.id)),
          `an eu node to log the bridge link accepted from ${relay.id}`, LINK_UP_MS);
        subs.length = 0;

        // The channel under test: mastered in eu by the node that accepted the link,
        // relayed in us by the node that holds it, so the SIGKILL ends both the
        // home's master and the bridge stream.
        name = null;
        for (let i = 0; i < 400 && !name; i++) {
          const candidate = `fed-home-kill-${i}`;
          const [inEu, inUs] = await Promise.all([acceptor.placement(candidate), relay.placement(candidate)]);
          if (inEu.owners[0] === acceptor.id && inUs.owners[0] === relay.id) name = candidate;
        }
        assert.ok(name, `a channel name mastered by ${acceptor.id} in eu and relayed by ${relay.id} in us`);
        const euOwners = await settledPlacement(eu.nodes, name);
        const survivors = eu.nodes.filter((n) => n !== acceptor);
        const pubNode = survivors.find((n) => !euOwners.includes(n)) ?? survivors[0];
        const copyNode = survivors.find((n) => n !== pubNode);

        // Homed in eu by its first publish, from a node that survives.
        const euPubClient = await connectedClient(pubNode, MSGPACK);
        clients.push(euPubClient);
        const euPub = euPubClient.channels.get(name);
        await within(euPub.publish('home', { first: true }), 'ACK for the first publish, in eu', SLOW_MS);
        const master = await acceptor.placement(name);
        assert.equal(master.home, 'eu', `${acceptor.id} knows ${name} is homed in eu`);
        assert.notEqual(master.epoch, null, `${acceptor.id} masters ${name} in eu`);

        // us subscribers on the relay and on another us node, one in eu; a us publisher
        // whose publishes the relay forwards over the link.
        const usOther = us.nodes.find((n) => n !== relay);
        subs.push(await subscriber(relay, MSGPACK, name, `subscriber on the relay ${relay.id} (msgpack)`, clients));
        subs.push(await subscriber(usOther, JSON_FMT, name, `subscriber on ${usOther.id} (json)`, clients));
        subs.push(await subscriber(copyNode, JSON_FMT, name, `subscriber in eu on ${copyNode.id} (json)`, clients));
        await within(euPub.attach(), 'eu publisher attach', SLOW_MS);
        pubs.push({ label: 'eu', run: steadyPublisher(euPub, 'eu', { intervalMs: 100 }) });
        const usPubClient = await connectedClient(usOther, MSGPACK);
        clients.push(usPubClient);
        const usPub = usPubClient.channels.get(name);
        await attachWhenLinked(usPub, `publisher on ${usOther.id}`);
        pubs.push({ label: 'us', run: steadyPublisher(usPub, 'us', { intervalMs: 100 }) });

        await until(async () => (await relay.placement(name)).relaying, `${relay.id} to relay ${name}`, SLOW_MS);
        for (const p of pubs) await p.run.waitAcks(20, '20 ACKs before the kill', SLOW_MS);
        for (const s of subs) {
          await until(() => pubs.every((p) => s.got.messages.filter((m) => m.name === p.label).length >= 10),
            `${s.who} to receive messages of both publishers before the kill`, SLOW_MS);
        }
        assert.equal(latestAcceptor(eu.nodes, relay.id), acceptor,
          `the link from ${relay.id} is still the one ${acceptor.id} accepted`);
        const acceptedBefore = acceptedLinks(survivors, relay.id).length;
        note(t, `channel ${name}: eu owners ${euOwners.join(', ')} (epoch ${master.epoch}); the link from the us relay ` +
          `${relay.id} was accepted by ${acceptor.id}; eu publisher on ${pubNode.id}, eu subscriber on ${copyNode.id}; ` +
          `us publisher and subscriber on ${usOther.id}`);

        const killAt = Date.now();
        assert.ok(acceptor.signal('SIGKILL'), `SIGKILL ${acceptor.id}`);
        await acceptor.waitExit(`${acceptor.id} to die`);

        for (const p of pubs) {
          await p.run.waitUntil(() => p.run.acks.filter((a) => a.ackAt > killAt).length >= 30,
            '30 ACKs after the kill', SLOW_MS);
        }
        const newOwners = await until(async () => {
          const views = await Promise.all(survivors.map((n) => n.placement(name)));
          const owners = new Set(views.map((v) => JSON.stringify(v.owners)));
          return views.every((v) => !v.owners.includes(acceptor.id)) && owners.size === 1 ? views[0].owners : null;
        }, `the surviving eu nodes' placement of ${name} to drop ${acceptor.id}`, SLOW_MS);
        const newMaster = await fed.node(newOwners[0]).placement(name);
        assert.ok(newMaster.epoch > master.epoch,
          `${newOwners[0]} masters ${name} under a higher epoch (${newMaster.epoch} after ${master.epoch})`);
        await until(() => acceptedLinks(survivors, relay.id).length > acceptedBefore,
          `a surviving eu node to accept the link from ${relay.id} again`, SLOW_MS);
        const newAcceptor = latestAcceptor(survivors, relay.id);
        note(t, `eu placement after the kill: ${newOwners.join(', ')} (epoch ${newMaster.epoch}); ` +
          `the link from ${relay.id} moved to ${newAcceptor.id}`);

        await verifyAfterKill(t, { subs, pubs, euPub, killAt, why: 'eu keeps a majority; the link comes back' });

        // History through the us relay and through a surviving eu node: the same, in
        // the subscribers' order.
        const viaUs = await historyThrough(usOther, MSGPACK, name, `node ${usOther.id}`);
        const viaEu = await historyThrough(pubNode, JSON_FMT, name, `node ${pubNode.id}`);
        assert.deepEqual(viaUs.map((m) => m.id), viaEu.map((m) => m.id), 'history through us and through eu agree');
        assert.deepEqual(viaEu.slice(1).map((m) => m.id), ids(subs[0]),
          'history (after the first message) is what the subscribers saw, in order');
      }, () => report(fed, name ?? '-', subs, pubs));
    } finally {
      for (const p of pubs) p.run.state.stopped = true;
      closeAll(clients);
    }
  }));
});
