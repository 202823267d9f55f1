// Authentication and the admin API: a wrong key fails the connection with 40101; an
// app created with POST /apps works at once and survives a restart of the node.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  Ably, FORMATS, startNode, connectedClient, waitForState, collect, closeAll, within,
  freshChannel,
} from './harness.mjs';

/** Connects with `key` and expects FAILED with `code`; returns the error. */
async function expectFailed(node, format, key) {
  const client = new Ably.Realtime(node.options(format, { key }));
  try {
    const change = await waitForState(client.connection, 'failed');
    const err = client.connection.errorReason;
    assert.ok(err, 'connection.errorReason is set');
    assert.equal(change?.reason?.code, err.code, 'the state change carries the same error');
    return err;
  } finally {
    closeAll(client);
  }
}

/** Publishes on a fresh channel and receives it back on the same client. */
async function roundTrip(client, label) {
  const channel = client.channels.get(freshChannel(label));
  const got = await collect(channel);
  await within(channel.publish('ping', { label }), `publish on ${channel.name}`);
  await got.waitFor(1);
  assert.equal(got.messages[0].name, 'ping');
  assert.deepEqual(got.messages[0].data, { label });
  assert.equal(got.messages[0].connectionId, client.connection.id);
}

async function createApp(node, body = { keys: [{}] }) {
  const res = await within(fetch(`${node.baseUrl}/apps`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${node.adminToken}`,
    },
    body: JSON.stringify(body),
  }), 'POST /apps');
  const text = await res.text();
  assert.equal(res.status, 201, `POST /apps status (body: ${text})`);
  let json;
  assert.doesNotThrow(() => { json = JSON.parse(text); }, `POST /apps body is JSON: ${text}`);
  return json;
}

describe('auth', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    describe(format.name, () => {
      it('a wrong secret ends in failed with 40101', async () => {
        const [keyName] = node.key.split(':');
        const err = await expectFailed(node, format, `${keyName}:wrong`);
        assert.equal(err.code, 40101, `code (${err.code} ${err.statusCode} ${err.message})`);
        assert.equal(err.statusCode, 401);
      });

      it('an unknown key name ends in failed with 40101', async () => {
        const [appId] = node.key.split('.');
        const err = await expectFailed(node, format, `${appId}.nosuchkey:secret`);
        assert.equal(err.code, 40101, `code (${err.code} ${err.statusCode} ${err.message})`);
        assert.equal(err.statusCode, 401);
      });

      it('REST with a wrong secret is refused with 40101', async () => {
        const [keyName] = node.key.split(':');
        const rest = new Ably.Rest(node.options(format, { key: `${keyName}:wrong` }));
        const err = await within(rest.channels.get(freshChannel('rest-wrong-key')).history().then(
          () => { throw new Error('history with a wrong key succeeded'); },
          (e) => e,
        ), 'REST history with a wrong key');
        assert.equal(err.statusCode, 401, `status (${err.code} ${err.statusCode} ${err.message})`);
        assert.equal(err.code, 40101);
      });
    });
  }

  it('the default key keeps working after a restart on the same data directory', async () => {
    const keyBefore = node.key;
    const portBefore = node.port;
    await node.restart();
    assert.ok(node.port > 0, `restarted on port ${node.port} (was ${portBefore})`);
    assert.ok(node.describe.apps.some((a) => a.keys.some((k) => k.key === keyBefore)),
      'the restarted node still describes the default key');
    for (const format of FORMATS) {
      let client;
      try {
        client = await connectedClient(node, format, { key: keyBefore });
        await roundTrip(client, `default-after-restart-${format.name}`);
      } finally {
        closeAll(client);
      }
    }
  });

  it('POST /apps creates a key that works at once and after a restart (both formats)', async () => {
    const created = await createApp(node);
    assert.ok(Array.isArray(created.keys) && created.keys.length === 1, `one key: ${JSON.stringify(created)}`);
    const { keyStr, keyName, keySecret } = created.keys[0];
    assert.equal(typeof keyStr, 'string');
    assert.match(keyStr, /^[^.:]+\.[^.:]+:.+$/, 'keyStr is appId.keyId:secret');
    assert.equal(keyStr, `${keyName}:${keySecret}`);
    assert.equal(keyStr.split('.')[0], created.appId, 'the key belongs to the new app');
    assert.notEqual(created.appId, node.key.split('.')[0], 'a new app, not the default one');

    const useKey = async (when) => {
      for (const format of FORMATS) {
        let client;
        try {
          client = await connectedClient(node, format, { key: keyStr });
          await roundTrip(client, `admin-${when}-${format.name}`);
        } finally {
          closeAll(client);
        }
      }
    };
    await useKey('before-restart');

    const portBefore = node.port;
    await node.restart();
    assert.ok(node.port > 0, `restarted on port ${node.port} (was ${portBefore})`);

    assert.ok(node.describe.apps.some((a) => a.id === created.appId),
      'the restarted node describes the created app');
    await useKey('after-restart');
  });
});
