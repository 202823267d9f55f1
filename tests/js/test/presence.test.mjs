// Presence on one node with the real client: enter, update and leave events, the
// member set through SYNC (one page and many), enterClient for a wildcard token,
// re-attaching, leaving on close, leaving 15 s after an abrupt loss (a member process
// SIGKILLed) but not after a resume, and REST (members, history, batch).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import {
  Ably, FORMATS, startNode, connectedClient, closeAll, within, until, freshChannel,
} from './harness.mjs';

const GRACE_MS = 15_000;
const SLOW = { timeout: 60_000 };

/** Events of `action` on a channel's presence, collected from now on. */
function events(channel, action) {
  const got = [];
  channel.presence.subscribe(action, (m) => got.push(m));
  return got;
}

/** clientIds of `presence.get()`, sorted. */
async function memberIds(channel, opts) {
  const members = await within(channel.presence.get(opts), 'presence.get()');
  return members.map((m) => m.clientId).sort();
}

/** A client for any clientId (wildcard token). */
async function wildcardClient(node, format) {
  const rest = new Ably.Rest(node.options(format));
  const token = await rest.auth.requestToken({ clientId: '*' });
  return connectedClient(node, format, { key: undefined, token: token.token });
}

for (const format of FORMATS) {
  describe(`presence (${format.name})`, () => {
    let node;
    before(async () => { node = await startNode(); });
    after(async () => { await node?.stop(); });

    it('enter, update and leave reach every presence subscriber and get() agrees', async () => {
      const name = freshChannel('presence-basic');
      let alice, bob, watcher;
      try {
        watcher = await connectedClient(node, format, { clientId: 'watcher' });
        const seen = watcher.channels.get(name);
        await seen.attach();
        const entered = events(seen, 'enter');
        const updated = events(seen, 'update');
        const left = events(seen, 'leave');

        alice = await connectedClient(node, format, { clientId: 'alice' });
        bob = await connectedClient(node, format, { clientId: 'bob' });
        await alice.channels.get(name).presence.enter({ mood: 'happy' });
        await bob.channels.get(name).presence.enter('hi');
        await until(() => entered.length === 2, 'two ENTER events');
        assert.deepEqual(entered.map((m) => m.clientId).sort(), ['alice', 'bob']);
        const aliceEnter = entered.find((m) => m.clientId === 'alice');
        assert.deepEqual(aliceEnter.data, { mood: 'happy' });
        assert.equal(aliceEnter.connectionId, alice.connection.id);
        assert.match(aliceEnter.id, new RegExp(`^${alice.connection.id}:\\d+:0$`));

        await alice.channels.get(name).presence.update({ mood: 'busy' });
        await until(() => updated.length === 1, 'an UPDATE event');
        assert.deepEqual(updated[0].data, { mood: 'busy' });

        assert.deepEqual(await memberIds(seen), ['alice', 'bob']);
        const fresh = await connectedClient(node, format);
        try {
          const members = await within(fresh.channels.get(name).presence.get(), 'get() on a new client');
          assert.deepEqual(members.map((m) => m.clientId).sort(), ['alice', 'bob']);
          assert.deepEqual(members.find((m) => m.clientId === 'alice').data, { mood: 'busy' });
          assert.ok(members.every((m) => m.action === 'present'));
        } finally {
          closeAll(fresh);
        }

        await bob.channels.get(name).presence.leave();
        await until(() => left.length === 1, 'a LEAVE event');
        assert.equal(left[0].clientId, 'bob');
        assert.deepEqual(await memberIds(seen), ['alice']);

        // Detaching leaves at once.
        const carol = await connectedClient(node, format, { clientId: 'carol' });
        try {
          const carolChannel = carol.channels.get(name);
          await carolChannel.presence.enter();
          await until(() => entered.some((m) => m.clientId === 'carol'), 'carol to enter');
          await within(carolChannel.detach(), 'carol detaches');
          await until(() => left.some((m) => m.clientId === 'carol'), 'a LEAVE on detach', 5_000);
        } finally {
          closeAll(carol);
        }
        left.splice(0, left.length, ...left.filter((m) => m.clientId !== 'carol'));

        // Closing leaves at once, well inside the grace of an abrupt loss.
        const closedAt = Date.now();
        alice.close();
        await until(() => left.length === 2, 'a LEAVE on close', 5_000);
        assert.equal(left[1].clientId, 'alice');
        assert.ok(Date.now() - closedAt < 5_000);
        assert.deepEqual(await memberIds(seen), []);
      } finally {
        closeAll(alice, bob, watcher);
      }
    });

    it('250 members arrive through a multi-page SYNC, and again after re-attaching', SLOW, async () => {
      const name = freshChannel('presence-sync');
      let many, reader;
      try {
        many = await wildcardClient(node, format);
        const channel = many.channels.get(name);
        const ids = Array.from({ length: 250 }, (_, i) => `member-${String(i).padStart(3, '0')}`);
        await Promise.all(ids.map((id) => channel.presence.enterClient(id, { n: id })));

        reader = await connectedClient(node, format);
        const seen = reader.channels.get(name);
        assert.deepEqual(await memberIds(seen), ids);

        await within(seen.detach(), 'detach');
        await within(seen.attach(), 're-attach');
        assert.deepEqual(await memberIds(seen), ids, 're-attaching lists every member again');

        const rest = new Ably.Rest(node.options(format));
        const page = await rest.channels.get(name).presence.get({ limit: 100 });
        assert.equal(page.items.length, 100);
        assert.ok(page.hasNext());
        // A member of the first page leaves before the next is read: the pages go on
        // where the first ended, so no one is skipped.
        const leaver = page.items[0].clientId;
        await channel.presence.leaveClient(leaver);
        await until(async () => (await rest.channels.get(name).presence.get({ clientId: leaver })).items.length === 0,
          'the leaver to be gone');
        const all = [...page.items];
        let next = await page.next();
        while (next) {
          all.push(...next.items);
          next = next.hasNext() ? await next.next() : null;
        }
        assert.deepEqual(all.map((m) => m.clientId).sort(), ids, 'every member once, none skipped');
        await channel.presence.enterClient(leaver, { n: leaver });
        await until(async () => (await memberIds(seen)).length === ids.length, 'the leaver back');
        const one = await rest.channels.get(name).presence.get({ clientId: 'member-007' });
        assert.deepEqual(one.items.map((m) => m.data), [{ n: 'member-007' }]);

        const batch = await rest.batchPresence([name, freshChannel('presence-empty')]);
        assert.equal(batch.successCount, 2);
        assert.equal(batch.results[0].presence.length, 250);
        assert.deepEqual(batch.results[1].presence, []);

        const history = await rest.channels.get(name).presence.history({ limit: 5 });
        assert.equal(history.items.length, 5);
        // Newest first: the leaver's return, its leave, then the entries before.
        assert.deepEqual(history.items.slice(0, 3).map((m) => [m.action, m.clientId]),
          [['enter', leaver], ['leave', leaver], ['enter', ids[ids.length - 1]]]);
      } finally {
        closeAll(many, reader);
      }
    });

    it('presence without a clientId is refused, the connection carries on', async () => {
      const name = freshChannel('presence-anon');
      let anonymous;
      try {
        anonymous = await connectedClient(node, format);
        const channel = anonymous.channels.get(name);
        await assert.rejects(channel.presence.enter('x'), (e) => [40012, 91000].includes(e.code));
        await within(channel.publish('still', 'fine'), 'a publish after the refusal');
      } finally {
        closeAll(anonymous);
      }
    });

    it('a client that vanishes without closing leaves after the 15 s grace; one that resumes stays', SLOW, async () => {
      const name = freshChannel('presence-vanish');
      let watcher, resumer, child;
      try {
        watcher = await connectedClient(node, format, { clientId: 'watcher' });
        const seen = watcher.channels.get(name);
        await seen.attach();
        const entered = events(seen, 'enter');
        const updated = events(seen, 'update');
        const left = events(seen, 'leave');

        resumer = await connectedClient(node, format, { clientId: 'resumer' });
        await resumer.channels.get(name).presence.enter();
        child = spawnMember(node.options(format), name, 'ghost');
        await until(() => ['ghost', 'resumer'].every((c) => entered.some((m) => m.clientId === c)),
          'the ghost and the resumer to enter', 20_000);

        const killedAt = Date.now();
        child.kill('SIGKILL');
        const resumerId = resumer.connection.id;
        resumer.connection.connectionManager.disconnectAllTransports();
        await until(() => resumer.connection.state === 'connected', 'the resumer to reconnect', 10_000);
        assert.equal(resumer.connection.id, resumerId, 'the resumer resumed on the same node');

        await until(() => left.some((m) => m.clientId === 'ghost'), 'the ghost to leave', GRACE_MS + 10_000);
        const after = Date.now() - killedAt;
        assert.ok(after >= GRACE_MS - 1_000, `left after ${after} ms, before its grace`);
        // The resumer's own grace, which started with the ghost's, is over too.
        await until(() => Date.now() - killedAt > GRACE_MS + 2_000, 'the resumer\'s grace to pass', 10_000, 200);
        assert.deepEqual(left.map((m) => m.clientId), ['ghost'], 'no LEAVE for the resumed connection');
        // ably-js re-enters its member after the re-attach, with the id it had: nothing
        // changed, so the others see nothing.
        assert.deepEqual(updated.map((m) => m.clientId), [], 'no UPDATE for the resumed connection');
        assert.deepEqual(await memberIds(seen), ['resumer']);
      } finally {
        child?.kill('SIGKILL');
        closeAll(watcher, resumer);
      }
    });
  });
}

const memberScript = fileURLToPath(new URL('./presence-member.mjs', import.meta.url));

/** A separate process that enters `clientId` on `channel` and stays until killed. */
export function spawnMember(options, channel, clientId) {
  const child = spawn(process.execPath, [memberScript], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, MEMBER: JSON.stringify({ options, channel, clientId }) },
  });
  return child;
}
