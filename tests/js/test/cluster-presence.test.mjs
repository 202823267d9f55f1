// Presence across nodes and regions with real processes: `region-node dev --regions
// eu,us --nodes 3`, ably-js clients connected to chosen nodes.
//
// First, 250 members entered on a channel homed in us, and one from eu, are listed
// on nodes of both regions (a multi-page SYNC, relayed to eu as one member list).
//
// Then one channel homed in eu. Members enter from every eu node and from two us nodes;
// presence.get() on every node of both regions returns the same set. Then:
// 1. SIGKILL a us node holding a member (not the us relay): its member leaves in both
//    regions within its 15 s grace (plus failure detection); no one else leaves.
// 2. SIGKILL the eu node that masters the channel and holds one member: a new master
//    takes over with the set intact; that member leaves in both regions within its
//    grace, and no one else leaves or enters again.
// 3. SIGKILL every us node: the global master stops hearing the region, so it has
//    lost its lease and sent its clients away; its last member leaves in eu.
// 4. Before all that, a client whose transport drops resumes on another node (the
//    region's entry balances round robin): same connectionId, and no LEAVE for it
//    in all the time the test runs after (more than its grace).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Ably, FORMATS, connectedClient, closeAll, within, until, freshChannel } from './harness.mjs';
import { startFederation, agreedPlacement, waitRegionHealthy } from './cluster-harness.mjs';

const FAILURE_TIMEOUT_MS = 1000;
const GRACE_MS = 15_000;
const SLOW_MS = 30_000;
const TEST_TIMEOUT = { timeout: 240_000 };
const [MSGPACK] = FORMATS;

async function attachRetrying(channel, who) {
  let last = null;
  await until(async () => {
    try {
      await within(channel.attach(), `${who}: attach`, 5_000);
      return true;
    } catch (e) {
      last = e;
      return false;
    }
  }, `${who} to attach (last error: ${last?.code ?? ''} ${last?.message ?? ''})`, SLOW_MS, 200);
}

async function memberIds(channel) {
  const members = await within(channel.presence.get(), `presence.get() on ${channel.name}`, 15_000);
  return members.map((m) => m.clientId).sort();
}

describe('cluster presence: two regions of three nodes', () => {
  let fed;
  const clients = [];
  before(async () => {
    fed = await startFederation({
      regions: ['eu', 'us'], nodes: 3, globalMasters: 1, failureTimeoutMs: FAILURE_TIMEOUT_MS, label: 'presence',
    });
  });
  after(async () => {
    closeAll(clients);
    await fed?.stop();
  });

  it('250 members entered in the home region reach the other through a multi-page SYNC', TEST_TIMEOUT, async () => {
    const name = freshChannel('presence-bulk');
    const eu = fed.region('eu');
    const us = fed.region('us');
    // Homed in us: used there first, by a client that may act as any clientId.
    const rest = new Ably.Rest(us.nodes[0].options(MSGPACK));
    const token = await rest.auth.requestToken({ clientId: '*' });
    const bulk = await connectedClient(us.nodes[0], MSGPACK, { key: undefined, token: token.token });
    clients.push(bulk);
    const home = bulk.channels.get(name);
    await attachRetrying(home, 'bulk client');
    const ids = Array.from({ length: 250 }, (_, i) => `bulk-${String(i).padStart(3, '0')}`);
    await within(Promise.all(ids.map((id) => home.presence.enterClient(id))), '250 enters', SLOW_MS);

    const visitor = await connectedClient(eu.nodes[1], MSGPACK, { clientId: 'visitor' });
    clients.push(visitor);
    const away = visitor.channels.get(name);
    await attachRetrying(away, 'eu visitor');
    await within(away.presence.enter(), 'the visitor enters from eu', SLOW_MS);
    const everyone = [...ids, 'visitor'].sort();

    for (const node of [eu.nodes[0], eu.nodes[2], us.nodes[1]]) {
      const reader = await connectedClient(node, MSGPACK);
      clients.push(reader);
      const ch = reader.channels.get(name);
      await attachRetrying(ch, `reader on ${node.id}`);
      await until(async () => JSON.stringify(await memberIds(ch)) === JSON.stringify(everyone),
        `all 251 members on ${node.id}`, SLOW_MS, 250);
    }

    // REST through a node of the other region reads them at the home, page by page.
    const euRest = new Ably.Rest(eu.nodes[0].options(MSGPACK));
    let page = await euRest.channels.get(name).presence.get({ limit: 100 });
    const listed = [...page.items];
    while (page.hasNext()) {
      page = await page.next();
      listed.push(...page.items);
    }
    assert.deepEqual(listed.map((m) => m.clientId).sort(), everyone);
  });

  it('one member set everywhere; a dead node\'s members leave in both regions; a master failover keeps the set', TEST_TIMEOUT, async () => {
    const name = freshChannel('presence-fed');
    const eu = fed.region('eu');
    const us = fed.region('us');
    const client = async (node, clientId) => {
      const c = await connectedClient(node, MSGPACK, clientId ? { clientId } : {});
      clients.push(c);
      return c;
    };

    // The channel is homed in eu: used there first.
    const [euMaster, euCopy, euThird] = await agreedPlacement(eu.nodes, name)
      .then((owners) => [...owners, ...eu.nodes.map((n) => n.id).filter((id) => !owners.includes(id))]);
    const usOwners = await agreedPlacement(us.nodes, name);
    const usRelay = usOwners[0];
    const usOthers = us.nodes.map((n) => n.id).filter((id) => id !== usRelay);
    const byId = (region, id) => region.nodes.find((n) => n.id === id);

    const euWatcher = await client(byId(eu, euCopy), 'eu-watcher');
    const euSeen = euWatcher.channels.get(name);
    await attachRetrying(euSeen, 'eu watcher');
    const leaves = [];
    const onLeave = (region) => (m) => leaves.push({ region, clientId: m.clientId, at: Date.now() });
    euSeen.presence.subscribe('leave', onLeave('eu'));

    const usWatcher = await client(byId(us, usRelay), 'us-watcher');
    const usSeen = usWatcher.channels.get(name);
    await attachRetrying(usSeen, 'us watcher');
    usSeen.presence.subscribe('leave', onLeave('us'));

    // Members: one per eu node, and one on each us node but the relay.
    const members = [
      [eu, euMaster, 'alice'], [eu, euCopy, 'bob'], [eu, euThird, 'carol'],
      [us, usOthers[0], 'dave'], [us, usOthers[1], 'erin'],
    ];
    for (const [region, id, clientId] of members) {
      const c = await client(byId(region, id), clientId);
      const ch = c.channels.get(name);
      await attachRetrying(ch, clientId);
      await within(ch.presence.enter({ on: id }), `${clientId} enters`, 15_000);
    }
    const everyone = ['alice', 'bob', 'carol', 'dave', 'erin'];
    for (const node of [...eu.nodes, ...us.nodes]) {
      const reader = await client(node);
      const ch = reader.channels.get(name);
      await attachRetrying(ch, `reader on ${node.id}`);
      await until(async () => JSON.stringify(await memberIds(ch)) === JSON.stringify(everyone),
        `the full set on ${node.id}`, SLOW_MS, 250);
    }

    // A resuming client: its transport drops, it comes back through the entry.
    const hopper = new Ably.Realtime(eu.options(MSGPACK, { clientId: 'hopper' }));
    clients.push(hopper);
    await until(() => hopper.connection.state === 'connected', 'hopper to connect', SLOW_MS);
    const hopperChannel = hopper.channels.get(name);
    await attachRetrying(hopperChannel, 'hopper');
    await within(hopperChannel.presence.enter(), 'hopper enters', 15_000);
    await until(async () => (await memberIds(euSeen)).includes('hopper'), 'hopper in the set', SLOW_MS, 250);
    const hopperId = hopper.connection.id;
    const servedBy = () => hopper.connection.connectionManager.connectionDetails?.serverId;
    const firstNode = servedBy();
    hopper.connection.connectionManager.disconnectAllTransports();
    await until(() => hopper.connection.state === 'connected' && servedBy() !== firstNode,
      'hopper to reconnect through the entry to another node', SLOW_MS, 50);
    assert.equal(hopper.connection.id, hopperId, 'hopper resumed its connection on another node');

    const enters = [];
    euSeen.presence.subscribe('enter', (m) => enters.push({ region: 'eu', clientId: m.clientId }));
    usSeen.presence.subscribe('enter', (m) => enters.push({ region: 'us', clientId: m.clientId }));

    // 1. A us node holding dave dies.
    const victim = byId(us, usOthers[0]);
    const killedAt = Date.now();
    victim.signal('SIGKILL');
    await victim.waitExit('the us victim to exit');
    await until(() => ['eu', 'us'].every((r) => leaves.some((l) => l.region === r && l.clientId === 'dave')),
      'dave to leave in both regions', GRACE_MS + 10_000, 100)
      .catch((e) => { e.message += ` (leaves seen: ${JSON.stringify(leaves)}; eu set ${JSON.stringify(leaves.length)})`; throw e; });
    for (const l of leaves) {
      assert.equal(l.clientId, 'dave', `only dave leaves, saw ${JSON.stringify(leaves)}`);
      assert.ok(l.at - killedAt <= GRACE_MS + 5_000, `dave left ${l.at - killedAt} ms after the kill`);
    }

    // 2. The eu master, holding alice, dies; the set stays but for her.
    const master = byId(eu, euMaster);
    const masterKilledAt = Date.now();
    master.signal('SIGKILL');
    await master.waitExit('the eu master to exit');
    await waitRegionHealthy(eu.nodes.filter((n) => n.id !== euMaster), 2, 'eu to settle on two nodes', SLOW_MS);
    await until(() => ['eu', 'us'].every((r) => leaves.some((l) => l.region === r && l.clientId === 'alice')),
      'alice to leave in both regions', GRACE_MS + 15_000, 100)
      .catch((e) => { e.message += ` (leaves seen: ${JSON.stringify(leaves)})`; throw e; });
    for (const l of leaves.filter((x) => x.clientId === 'alice')) {
      assert.ok(l.at - masterKilledAt <= GRACE_MS + 8_000, `alice left ${l.at - masterKilledAt} ms after the kill`);
    }
    const rest = ['bob', 'carol', 'erin', 'hopper'];
    await until(async () => JSON.stringify(await memberIds(euSeen).catch(() => [])) === JSON.stringify(rest),
      'the eu set after the failover', SLOW_MS, 250);
    // Past every grace that could have started: still nobody else left.
    const waitUntil = Date.now() + GRACE_MS + 3_000;
    await until(() => Date.now() >= waitUntil, 'the grace to pass', GRACE_MS + 10_000, 500);
    assert.deepEqual(leaves.filter((l) => !['dave', 'alice'].includes(l.clientId)), [], 'no spurious LEAVE');
    assert.deepEqual(enters, [], 'no member entered again');
    assert.deepEqual(await memberIds(euSeen), rest);
    assert.deepEqual(await memberIds(usSeen), rest);

    // 3. The whole us region dies: the global master stops hearing it, so its lease
    // is gone and its clients were sent away; erin leaves in eu.
    const usKilledAt = Date.now();
    for (const node of us.nodes.filter((n) => n.alive())) node.signal('SIGKILL');
    for (const node of us.nodes) await node.waitExit(`${node.id} to exit`);
    await until(() => leaves.some((l) => l.region === 'eu' && l.clientId === 'erin'),
      'erin to leave in eu', 45_000, 200)
      .catch((e) => { e.message += ` (leaves seen: ${JSON.stringify(leaves)})`; throw e; });
    const erinLeft = leaves.find((l) => l.region === 'eu' && l.clientId === 'erin').at - usKilledAt;
    assert.ok(erinLeft <= 40_000, `erin left ${erinLeft} ms after her region died`);
    assert.deepEqual(await memberIds(euSeen), ['bob', 'carol', 'hopper']);
  });
});
