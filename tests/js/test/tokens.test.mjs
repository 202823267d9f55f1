// Token auth with ably-js 2.28.0: an authCallback handing over a TokenRequest, or
// TokenDetails, or an Ably JWT; publish and subscribe with the token; renewal when
// the token expires (DISCONNECTED 40142, then a new token) and in-band with
// auth.authorize() (AUTH, same connectionId).

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  Ably, FORMATS, startNode, waitForState, collect, closeAll, within, until, freshChannel,
} from './harness.mjs';

/** Client options for token auth only: the key stays with the "app server". */
function tokenOptions(node, format, authCallback, extra = {}) {
  const options = node.options(format, { authCallback, ...extra });
  delete options.key;
  return options;
}

/** A REST client holding the key: the app server that signs token requests. */
function appServer(node, format) {
  return new Ably.Rest(node.options(format));
}

/** An authCallback that records each call and answers with `make(params)`. */
function recordingCallback(make) {
  const calls = [];
  const callback = (params, done) => {
    calls.push(params);
    Promise.resolve(make(params, calls.length)).then(
      (answer) => done(null, answer),
      (error) => done(error, null),
    );
  };
  return { calls, callback };
}

/** Subscribes, publishes once from `client`, and checks the message comes back. */
async function roundTrip(client, label, clientId) {
  const channel = client.channels.get(freshChannel(label));
  const got = await collect(channel);
  await within(channel.publish('ping', { label }), `publish on ${channel.name}`);
  await got.waitFor(1);
  assert.equal(got.messages[0].name, 'ping');
  assert.deepEqual(got.messages[0].data, { label });
  assert.equal(got.messages[0].clientId, clientId, 'the token\'s clientId is stamped');
}

/** An Ably JWT for `keyStr`, signed HS256 with its secret, as an app server makes one. */
function ablyJwt(keyStr, { clientId, ttlSeconds = 3600, capability = { '*': ['*'] } }) {
  const [keyName, secret] = keyStr.split(':');
  const now = Math.floor(Date.now() / 1000);
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const header = encode({ typ: 'JWT', alg: 'HS256', kid: keyName });
  const claims = encode({
    iat: now,
    exp: now + ttlSeconds,
    'x-ably-capability': JSON.stringify(capability),
    'x-ably-clientId': clientId,
  });
  const mac = createHmac('sha256', secret).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${mac}`;
}

describe('tokens', () => {
  let node;
  before(async () => { node = await startNode(); });
  after(async () => { await node?.stop(); });

  for (const format of FORMATS) {
    describe(format.name, () => {
      it('an authCallback returning a TokenRequest connects and round-trips', async () => {
        const server = appServer(node, format);
        const { calls, callback } = recordingCallback(
          () => server.auth.createTokenRequest({ clientId: 'alice' }),
        );
        const client = new Ably.Realtime(tokenOptions(node, format, callback));
        try {
          await waitForState(client.connection, 'connected');
          assert.equal(calls.length, 1, 'one token was needed');
          assert.equal(client.auth.clientId, 'alice');
          assert.equal(client.auth.tokenDetails.clientId, 'alice');
          await roundTrip(client, `token-request-${format.name}`, 'alice');
        } finally {
          closeAll(client);
        }
      });

      it('an authCallback returning TokenDetails from requestToken() connects and round-trips', async () => {
        const server = appServer(node, format);
        const { callback } = recordingCallback(
          () => server.auth.requestToken({ clientId: 'bob', ttl: 120_000 }),
        );
        const client = new Ably.Realtime(tokenOptions(node, format, callback));
        try {
          await waitForState(client.connection, 'connected');
          const details = client.auth.tokenDetails;
          assert.equal(details.expires - details.issued, 120_000, 'expires - issued == ttl');
          await roundTrip(client, `token-details-${format.name}`, 'bob');

          // REST with the same callback: a Bearer token ably-js encodes itself.
          const rest = new Ably.Rest(tokenOptions(node, format, callback));
          const channel = rest.channels.get(freshChannel(`bearer-${format.name}`));
          await within(channel.publish('rest', 'via bearer'), 'REST publish with a token');
          const page = await within(channel.history(), 'REST history with a token');
          assert.equal(page.items[0].clientId, 'bob');
        } finally {
          closeAll(client);
        }
      });

      it('an expired token is renewed and the connection keeps receiving', async () => {
        const server = appServer(node, format);
        // The first token lives 2 s; the renewed ones an hour, so exactly one expiry.
        const { calls, callback } = recordingCallback((_, n) => server.auth.createTokenRequest(
          { clientId: 'renewer', ttl: n === 1 ? 2_000 : 3_600_000 },
        ));
        const client = new Ably.Realtime(tokenOptions(node, format, callback));
        const publisher = appServer(node, format);
        try {
          await waitForState(client.connection, 'connected');
          const name = freshChannel(`renew-${format.name}`);
          const got = await collect(client.channels.get(name));

          const disconnected = await waitForState(client.connection, 'disconnected', 10_000);
          assert.equal(disconnected.reason?.code, 40142, 'the expiry is a token error');
          await waitForState(client.connection, 'connected');
          assert.ok(calls.length >= 2, `a new token was fetched (${calls.length} calls)`);

          // The channel re-attaches on the new transport at its own pace; publish
          // until the subscription delivers again.
          await until(async () => {
            await publisher.channels.get(name).publish('after', 'renewal');
            return got.messages.some((m) => m.name === 'after');
          }, `a message on ${name} after the renewal`, 10_000, 200);
        } finally {
          closeAll(client);
        }
      });

      it('auth.authorize() renews in band on the same connection', async () => {
        const server = appServer(node, format);
        const { calls, callback } = recordingCallback(
          () => server.auth.createTokenRequest({ clientId: 'carol' }),
        );
        const client = new Ably.Realtime(tokenOptions(node, format, callback));
        try {
          await waitForState(client.connection, 'connected');
          const idBefore = client.connection.id;
          const name = freshChannel(`authorize-${format.name}`);
          const got = await collect(client.channels.get(name));

          const details = await within(client.auth.authorize(), 'authorize()');
          assert.equal(details.clientId, 'carol');
          assert.equal(calls.length, 2, 'a second token was fetched');
          assert.equal(client.connection.state, 'connected');
          assert.equal(client.connection.id, idBefore, 'same connectionId after AUTH');

          await within(client.channels.get(name).publish('after', 'authorize'), 'publish');
          await got.waitFor(1);
        } finally {
          closeAll(client);
        }
      });

      it('a JWT from the authCallback is accepted as a token', async () => {
        const { callback } = recordingCallback(() => ablyJwt(node.key, { clientId: 'dave' }));
        const client = new Ably.Realtime(tokenOptions(node, format, callback));
        try {
          await waitForState(client.connection, 'connected');
          assert.equal(client.auth.clientId, 'dave');
          await roundTrip(client, `jwt-${format.name}`, 'dave');
        } finally {
          closeAll(client);
        }
      });
    });
  }

  it('a TokenRequest signed with a wrong secret fails the connection', async () => {
    const [keyName] = node.key.split(':');
    const server = new Ably.Rest(node.options(true, { key: `${keyName}:not-the-secret` }));
    const { callback } = recordingCallback(() => server.auth.createTokenRequest({}));
    const client = new Ably.Realtime(tokenOptions(node, true, callback));
    try {
      const err = await within(new Promise((resolve) => {
        client.connection.on((change) => {
          if (change.reason && ['disconnected', 'failed'].includes(change.current)) {
            resolve(change.reason);
          }
        });
      }), 'a connection error');
      assert.equal(err.statusCode, 401, `status (${err.code} ${err.statusCode} ${err.message})`);
    } finally {
      closeAll(client);
    }
  });
});
