// Test harness for the ably-js compatibility suite: starts a real `region-node`
// on loopback, reads its describe file, and builds ably-js client options for it.
//
// Not a test file itself (it defines no tests), but `node --test test/` loads it
// harmlessly.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as Ably from 'ably';

export { Ably };

const here = dirname(fileURLToPath(import.meta.url));
/** tests/js/test -> tests/js -> repo root is two levels above tests/js. */
export const repoRoot = resolve(here, '..', '..', '..');

/** Default deadline for anything a test waits on. */
export const DEADLINE_MS = 10_000;
/** How long a node may take to write its describe file. */
const STARTUP_DEADLINE_MS = 20_000;

/** Both wire formats every test runs in. */
export const FORMATS = [
  { name: 'msgpack', useBinaryProtocol: true },
  { name: 'json', useBinaryProtocol: false },
];

export function binaryPath() {
  const bin = process.env.STARLING_BIN || join(repoRoot, 'target', 'debug', 'region-node');
  if (!existsSync(bin)) {
    throw new Error(`region-node binary not found at ${bin}: build first: cargo build --workspace`);
  }
  return bin;
}

/**
 * Resolves with `promise`'s value, or rejects after `ms` naming `what`.
 * Every wait in this suite goes through this (or a helper built on it).
 */
export function within(promise, what, ms = DEADLINE_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(timer));
}

/** Polls `fn` (sync or async) until it returns a truthy value or the deadline passes. */
export async function until(fn, what, ms = DEADLINE_MS, intervalMs = 50) {
  const deadline = Date.now() + ms;
  let lastError;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      const why = lastError ? ` (last error: ${lastError.message ?? lastError})` : '';
      throw new Error(`timed out after ${ms} ms: ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * A running region-node. Use `startNode()`; always call `stop()` in an after hook.
 */
export class NodeProcess {
  /** `env`: extra environment for the node, such as `STARLING_*` configuration. */
  constructor(env = {}) {
    this.env = env;
    this.dir = mkdtempSync(join(tmpdir(), 'starling-js-'));
    this.dataDir = join(this.dir, 'data');
    this.describePath = join(this.dir, 'describe.json');
    this.logPath = join(this.dir, 'server.log');
    this.child = null;
    this.describe = null;
    this.exited = null;
    this.restarts = 0;
  }

  async start() {
    const bin = binaryPath();
    rmSync(this.describePath, { force: true });
    const args = [
      '--listen', '127.0.0.1:0',
      '--data-dir', this.dataDir,
      '--describe', this.describePath,
    ];
    const log = openSync(this.logPath, 'a');
    const child = spawn(bin, args, {
      stdio: ['ignore', log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', ...this.env },
    });
    closeSync(log);
    this.child = child;
    this.exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
    let exitInfo = null;
    this.exited.then((info) => { exitInfo = info; });
    liveChildren.add(child);
    child.once('exit', () => liveChildren.delete(child));

    this.describe = await until(
      () => {
        if (exitInfo) {
          throw new FatalStartError(`region-node exited early (${JSON.stringify(exitInfo)})`);
        }
        if (!existsSync(this.describePath)) return null;
        try {
          const d = JSON.parse(readFileSync(this.describePath, 'utf8'));
          return d?.regions?.[0]?.nodes?.[0]?.client && d?.apps?.[0]?.keys?.[0]?.key ? d : null;
        } catch {
          return null; // written atomically, but be lenient
        }
      },
      `region-node to write ${this.describePath}`,
      STARTUP_DEADLINE_MS,
    ).catch((e) => {
      throw new Error(`${e.message}\n--- server log tail ---\n${this.logTail()}`);
    });
    return this;
  }

  /** SIGKILLs the node and waits for it to exit. Safe to call twice. */
  async kill() {
    const child = this.child;
    if (!child) return;
    this.child = null;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
    }
    await this.exited;
  }

  /** Kills the node and starts it again on the same data directory (new port). */
  async restart() {
    await this.kill();
    this.restarts += 1;
    await this.start();
    return this;
  }

  /** Kills the node and removes its temporary folder (kept if STARLING_KEEP_TMP is set). */
  async stop() {
    await this.kill();
    if (process.env.STARLING_KEEP_TMP) {
      process.stderr.write(`[harness] kept ${this.dir}\n`);
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  logTail(lines = 40) {
    try {
      return readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  get key() {
    return this.describe.apps[0].keys[0].key;
  }

  get adminToken() {
    return this.describe.admin_token;
  }

  get client() {
    return this.describe.regions[0].nodes[0].client;
  }

  get host() {
    return this.client.slice(0, this.client.lastIndexOf(':'));
  }

  get port() {
    return Number(this.client.slice(this.client.lastIndexOf(':') + 1));
  }

  /** The client TLS listener's port, for a node started with `[client_tls]`. */
  get tlsPort() {
    const tls = this.describe.regions[0].nodes[0].client_tls;
    if (!tls) throw new Error('this node has no client TLS listener');
    return Number(tls.slice(tls.lastIndexOf(':') + 1));
  }

  get baseUrl() {
    return `http://${this.client}`;
  }

  /** ably-js options for this node. `format` is one of FORMATS (or a boolean). */
  options(format, extra = {}) {
    const useBinaryProtocol = typeof format === 'boolean' ? format : format.useBinaryProtocol;
    return {
      key: this.key,
      endpoint: '127.0.0.1',
      port: this.port,
      tls: false,
      disableConnectivityCheck: true,
      useBinaryProtocol,
      ...extra,
    };
  }
}

class FatalStartError extends Error {}

const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

export async function startNode(env = {}) {
  const node = new NodeProcess(env);
  try {
    return await node.start();
  } catch (e) {
    await node.stop();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------
// Client helpers

/** Closes every client given (ignoring nulls); never throws. */
export function closeAll(...clients) {
  for (const c of clients.flat()) {
    if (!c) continue;
    try { c.close(); } catch { /* ignore */ }
  }
}

/**
 * Waits until `connection` is in `state`. Rejects at once if it reaches a terminal
 * state that is not the one wanted, with the connection's error.
 */
export function waitForState(connection, state, ms = DEADLINE_MS) {
  if (connection.state === state) return Promise.resolve(null);
  const terminal = ['failed', 'closed', 'suspended'];
  let listener;
  const p = new Promise((res, reject) => {
    listener = (change) => {
      if (change.current === state) {
        res(change);
      } else if (terminal.includes(change.current)) {
        const reason = change.reason ?? connection.errorReason;
        reject(new Error(
          `connection went ${change.current} while waiting for ${state}: ` +
            (reason ? `${reason.code} ${reason.statusCode} ${reason.message}` : 'no reason'),
        ));
      }
    };
    connection.on(listener);
  });
  return within(p, `connection to reach '${state}' (now '${connection.state}', ` +
    `last error ${JSON.stringify(connection.errorReason?.code ?? null)})`, ms)
    .finally(() => connection.off(listener));
}

/** A connected Realtime client; the caller closes it. */
export async function connectedClient(node, format, extra = {}) {
  const client = new Ably.Realtime(node.options(format, extra));
  try {
    await waitForState(client.connection, 'connected');
  } catch (e) {
    client.close();
    throw e;
  }
  return client;
}

/**
 * Collects messages delivered on `channel` (subscribing attaches it).
 * `waitFor(n)` resolves once at least n messages were collected.
 */
export async function collect(channel, event) {
  const messages = [];
  const waiters = [];
  const listener = (m) => {
    messages.push(m);
    for (const w of [...waiters]) {
      if (messages.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(messages);
      }
    }
  };
  if (event) await within(channel.subscribe(event, listener), `attach ${channel.name}`);
  else await within(channel.subscribe(listener), `attach ${channel.name}`);
  return {
    messages,
    waitFor(n, ms = DEADLINE_MS) {
      if (messages.length >= n) return Promise.resolve(messages);
      const p = new Promise((resolve) => waiters.push({ n, resolve }));
      return within(p, `${n} messages on ${channel.name} (got ${messages.length}: ` +
        `${JSON.stringify(messages.map((m) => m.name))})`, ms);
    },
  };
}

let uniq = 0;
/** A channel name no other test uses. */
export function freshChannel(prefix) {
  uniq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${uniq}`;
}

/** Data as a Buffer, for comparing binary payloads whatever view type the client gave. */
export function asBuffer(data) {
  if (Buffer.isBuffer(data)) return data;
  if (data instanceof ArrayBuffer) return Buffer.from(data);
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new Error(`not binary: ${typeof data} ${JSON.stringify(data)}`);
}

export function isBinary(data) {
  return Buffer.isBuffer(data) || data instanceof ArrayBuffer || ArrayBuffer.isView(data);
}

/** Fetches all pages of a PaginatedResult; returns [pages of items]. */
export async function allPages(first, maxPages = 50) {
  const pages = [first.items];
  let page = first;
  while (page.hasNext()) {
    if (pages.length >= maxPages) throw new Error(`more than ${maxPages} pages`);
    page = await within(page.next(), 'next page');
    if (!page) throw new Error('hasNext() was true but next() gave null');
    pages.push(page.items);
  }
  return pages;
}
