// Cluster harness for the ably-js suite: starts a whole region with
// `region-node dev --nodes N`, reads its describe file, talks to each node's
// `/health` and `/health/placement/{channel}`, signals nodes (SIGKILL, SIGSTOP,
// SIGCONT, SIGTERM), starts extra nodes by hand (from the cluster CA or another
// one), and drives steady publishers whose ACKs and deliveries the tests compare.
// `startFederation()` starts several bridged regions (`region-node dev --regions
// eu,us`, with a group of `global-master` processes) the same way, and can add a node
// to one of them by hand (`Federation.addNode`).
//
// Not a test file itself (it defines no tests).
//
// Environment: everything in harness.mjs, plus
// - `STARLING_CLUSTER_KEEP=1` (or `STARLING_KEEP_TMP=1`): keep the region's folder
//   (`launcher.log`, `data/local-*/node.log`, configs) even when every test passed.
//   It is always kept, and its path printed, when a test using it failed.
// - `RUST_LOG`: inherited by the launcher and every node (e.g.
//   `RUST_LOG=starling_node=debug`).

import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync, mkdtempSync, readFileSync, rmSync, openSync, closeSync, writeFileSync, mkdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binaryPath, until, within } from './harness.mjs';

/** How long `region-node dev` may take to start every node and report healthy. */
const REGION_START_MS = 90_000;
/** How long a hand-started node may take to write its describe file. */
const NODE_START_MS = 30_000;
/** Deadline of one HTTP request to a node. */
const HTTP_MS = 3_000;

// Every process this module started or learned of, killed when the test process exits
// however it exits (the after hooks do it first; this is the safety net).
const spawned = new Set(); // ChildProcess
const knownPids = new Set(); // pids from describe files
process.on('exit', () => {
  for (const child of spawned) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
  for (const pid of knownPids) killPid(pid, 'SIGKILL');
});

/**
 * Whether `pid` is a live region-node (or global-master) process: guards against a
 * recycled pid.
 */
function isRegionNode(pid) {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return (cmd.includes('region-node') || cmd.includes('global-master')) && state !== 'Z';
  } catch {
    return false;
  }
}

function killPid(pid, signal) {
  if (!pid || !isRegionNode(pid)) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

async function getJson(url, ms = HTTP_MS) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(ms) });
    const text = await res.text();
    let body;
    try { body = JSON.parse(text); } catch { body = text; }
    return { status: res.status, body };
  } catch (e) {
    return { status: 0, error: String(e?.cause?.code ?? e?.name ?? e) };
  }
}

/** The environment for region-node processes: ours, without the test-only variables. */
function childEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (k.startsWith('STARLING_CLUSTER_') || k === 'STARLING_KEEP_TMP' || k === 'STARLING_BIN') delete env[k];
  }
  return env;
}

function portOf(addr) {
  return Number(addr.slice(addr.lastIndexOf(':') + 1));
}

/** One node of the region (started by the launcher or by hand). */
export class ClusterNode {
  constructor(region, described, { dir, child = null } = {}) {
    this.region = region;
    this.id = described.id;
    this.pid = described.pid;
    this.client = described.client;
    this.port = portOf(described.client);
    this.mesh = described.mesh;
    this.bridge = described.bridge ?? null;
    this.argv = described.argv;
    this.dir = dir;
    this.logPath = join(dir, 'node.log');
    this.child = child;
    knownPids.add(this.pid);
  }

  get baseUrl() {
    return `http://${this.client}`;
  }

  /** ably-js options for a client connected directly to this node. */
  options(format, extra = {}) {
    const useBinaryProtocol = typeof format === 'boolean' ? format : format.useBinaryProtocol;
    return {
      key: this.region.key,
      endpoint: '127.0.0.1',
      port: this.port,
      tls: false,
      disableConnectivityCheck: true,
      useBinaryProtocol,
      ...extra,
    };
  }

  /** `GET /health`: `{status, body}`, or `{status: 0, error}` when it does not answer. */
  health(ms = HTTP_MS) {
    return getJson(`${this.baseUrl}/health`, ms);
  }

  /** `GET /health/placement/{channel}` body (`{channel, owners, epoch}`), or throws. */
  async placement(channel, ms = HTTP_MS) {
    const res = await getJson(`${this.baseUrl}/health/placement/${encodeURIComponent(channel)}`, ms);
    if (res.status !== 200) {
      throw new Error(`placement of ${channel} on ${this.id}: ${res.status} ${res.error ?? JSON.stringify(res.body)}`);
    }
    return res.body;
  }

  signal(sig) {
    if (this.child) {
      if (this.child.exitCode !== null || this.child.signalCode !== null) return false;
      try { return this.child.kill(sig); } catch { return false; }
    }
    return killPid(this.pid, sig);
  }

  alive() {
    if (this.child) return this.child.exitCode === null && this.child.signalCode === null;
    return isRegionNode(this.pid);
  }

  /** Waits until the process is gone (reaped if it is our child). */
  async waitExit(what, ms = 15_000) {
    if (this.child) {
      if (this.alive()) await within(this.exited, what, ms);
      return;
    }
    await until(() => !this.alive(), what, ms, 20);
  }

  logTail(lines = 60) {
    try {
      return readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  log() {
    try { return readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }
}

/**
 * A region started with `region-node dev`. Use `startRegion()`; always call `stop()`
 * in an after hook.
 */
export class Region {
  constructor({ nodes = 3, failureTimeoutMs = 1000, label = 'region' } = {}) {
    this.size = nodes;
    this.failureTimeoutMs = failureTimeoutMs;
    this.dir = mkdtempSync(join(tmpdir(), `starling-cluster-${label}-`));
    this.dataDir = join(this.dir, 'data');
    this.caDir = join(this.dataDir, 'ca');
    this.describePath = join(this.dir, 'describe.json');
    this.launcherLog = join(this.dir, 'launcher.log');
    this.launcher = null;
    this.describe = null;
    this.nodes = [];
    this.extra = [];
    this.failed = false;
  }

  async start() {
    const bin = binaryPath();
    const args = [
      'dev',
      '--nodes', String(this.size),
      '--data-dir', this.dataDir,
      '--describe', this.describePath,
      '--failure-timeout-ms', String(this.failureTimeoutMs),
    ];
    const log = openSync(this.launcherLog, 'a');
    const child = spawn(bin, args, { stdio: ['ignore', log, log], env: childEnv() });
    closeSync(log);
    this.launcher = child;
    spawned.add(child);
    let exitInfo = null;
    this.launcherExited = new Promise((res) => child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      spawned.delete(child);
      res(exitInfo);
    }));

    this.describe = await untilFatal(() => {
      if (exitInfo) throw new FatalError(`region-node dev exited early (${JSON.stringify(exitInfo)})`);
      if (!existsSync(this.describePath)) return null;
      try {
        const d = JSON.parse(readFileSync(this.describePath, 'utf8'));
        return d?.regions?.[0]?.nodes?.length === this.size ? d : null;
      } catch {
        return null;
      }
    }, `region-node dev to write ${this.describePath}`, REGION_START_MS, 100).catch((e) => {
      this.failed = true;
      throw new Error(`${e.message}\n--- launcher log ---\n${this.tail(this.launcherLog)}`);
    });
    this.nodes = this.describe.regions[0].nodes.map(
      (n) => new ClusterNode(this, n, { dir: join(this.dataDir, n.id) }));
    // The launcher reports once each node is healthy, which a node is as soon as it
    // sees a majority; tests want the full mesh.
    await waitRegionHealthy(this.nodes, this.size,
      `every node to see all ${this.size} nodes live`, REGION_START_MS);
    return this;
  }

  get key() {
    return this.describe.apps[0].keys[0].key;
  }

  get entry() {
    return this.describe.regions[0].entry;
  }

  /** A node by id (`local-2`), among the launcher's and the hand-started ones. */
  node(id) {
    const n = [...this.nodes, ...this.extra].find((x) => x.id === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Runs `fn`, marking the region failed (so its folder is kept) if it throws. */
  async guard(fn) {
    try {
      return await fn();
    } catch (e) {
      this.failed = true;
      throw e;
    }
  }

  /**
   * Starts a node by hand, as an operator adds one: `from`'s config.toml with a new
   * node id, data dir, client port 0 and a certificate issued by `caDir` (the cluster
   * CA by default). `trustCaDir` replaces `[tls] ca_cert` when given. Seeds are kept.
   */
  async addNode({ id, from = 'local-2', caDir = this.caDir, trustCaDir = null }) {
    const dir = join(this.dir, 'extra', id);
    const started = await startHandNode({
      id, dir, sourceConfig: join(this.dataDir, from, 'config.toml'), caDir, trustCaDir,
    });
    const node = new ClusterNode(this, started.described, { dir, child: started.child });
    node.exited = started.exited;
    node.configPath = started.configPath;
    this.extra.push(node);
    return node;
  }

  /**
   * SIGKILLs the launcher, every node it described (by pid) and every hand-started
   * node, waits until they are gone, and removes the folder unless it is to be kept.
   * Never throws; safe to call twice.
   */
  async stop() {
    const nodes = [...this.nodes, ...this.extra];
    // Children also learned from each node's own describe file, in case the region's
    // describe file was never written.
    for (let i = 1; i <= this.size; i++) {
      try {
        const d = JSON.parse(readFileSync(join(this.dataDir, `local-${i}`, 'describe.json'), 'utf8'));
        const pid = d?.regions?.[0]?.nodes?.[0]?.pid;
        if (pid && !nodes.some((n) => n.pid === pid)) {
          knownPids.add(pid);
          nodes.push({ pid, fake: true });
        }
      } catch { /* not written */ }
    }
    if (this.launcher && this.launcher.exitCode === null && this.launcher.signalCode === null) {
      this.launcher.kill('SIGKILL');
    }
    for (const n of nodes) {
      if (n.fake) killPid(n.pid, 'SIGKILL');
      else n.signal('SIGKILL');
    }
    try {
      if (this.launcher) await within(this.launcherExited, 'launcher to exit', 10_000);
      await until(() => nodes.every((n) => (n.fake ? !isRegionNode(n.pid) : !n.alive())),
        'every node to exit', 10_000, 20);
    } catch (e) {
      process.stderr.write(`[cluster-harness] ${e.message}\n`);
    }
    const keep = this.failed || process.env.STARLING_CLUSTER_KEEP || process.env.STARLING_KEEP_TMP;
    if (keep) {
      process.stderr.write(`[cluster-harness] kept ${this.dir} (node logs in data/local-*/node.log` +
        `${this.extra.length ? ', extra/*/node.log' : ''})\n`);
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }

  tail(path, lines = 40) {
    try {
      return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }
}

/**
 * Starts a node by hand from `sourceConfig` (another node's config.toml): a new node
 * id, data dir under `dir`, client port 0 and a certificate issued by `caDir`;
 * `trustCaDir` replaces `[tls] ca_cert` when given. Everything else (region, seeds,
 * `[global] members`, `[bridge] listen`, apps, secrets) is kept. Resolves once the node
 * wrote its describe file: `{child, exited, described, configPath}`.
 */
async function startHandNode({ id, dir, sourceConfig, caDir, trustCaDir = null }) {
  const bin = binaryPath();
  mkdirSync(dir, { recursive: true });
  const issued = spawnSync(bin, ['ca', 'issue', '--dir', caDir, '--name', id, '--out', dir],
    { encoding: 'utf8' });
  if (issued.status !== 0) {
    throw new Error(`ca issue ${id}: ${issued.status} ${issued.stderr}`);
  }
  const source = readFileSync(sourceConfig, 'utf8');
  let config = setKey(source, 'node', 'id', `"${id}"`);
  config = setKey(config, 'node', 'data_dir', `"${join(dir, 'data')}"`);
  config = setKey(config, 'listen', 'client', '"127.0.0.1:0"');
  // The launcher pins each node's mesh address (so restarts rejoin); a new node needs
  // its own.
  config = setKey(config, 'mesh', 'listen', '"127.0.0.1:0"');
  config = setKey(config, 'tls', 'cert', `"${join(dir, `${id}.pem`)}"`);
  config = setKey(config, 'tls', 'key', `"${join(dir, `${id}.key`)}"`);
  if (trustCaDir) config = setKey(config, 'tls', 'ca_cert', `"${join(trustCaDir, 'ca.pem')}"`);
  const configPath = join(dir, 'config.toml');
  writeFileSync(configPath, config, { mode: 0o600 });

  const describePath = join(dir, 'describe.json');
  rmSync(describePath, { force: true });
  const argv = [bin, '--config', configPath, '--describe', describePath];
  const log = openSync(join(dir, 'node.log'), 'a');
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', log, log], env: childEnv() });
  closeSync(log);
  spawned.add(child);
  let exitInfo = null;
  const exited = new Promise((res) => child.once('exit', (code, signal) => {
    exitInfo = { code, signal };
    spawned.delete(child);
    res(exitInfo);
  }));
  const described = await untilFatal(() => {
    if (exitInfo) throw new FatalError(`${id} exited early (${JSON.stringify(exitInfo)})`);
    if (!existsSync(describePath)) return null;
    try {
      return JSON.parse(readFileSync(describePath, 'utf8'))?.regions?.[0]?.nodes?.[0] ?? null;
    } catch {
      return null;
    }
  }, `${id} to write ${describePath}`, NODE_START_MS).catch((e) => {
    child.kill('SIGKILL');
    throw new Error(`${e.message}\n--- ${id} log ---\n${tailOf(join(dir, 'node.log'))}`);
  });
  return { child, exited, described: { ...described, pid: child.pid, argv }, configPath };
}

class FatalError extends Error {}

/** `until`, except that a FatalError thrown by `fn` ends the wait at once. */
async function untilFatal(fn, what, ms, intervalMs = 50) {
  let fatal = null;
  const value = await until(() => {
    try {
      return fn();
    } catch (e) {
      if (e instanceof FatalError) {
        fatal = e;
        return true;
      }
      throw e;
    }
  }, what, ms, intervalMs);
  if (fatal) throw fatal;
  return value;
}

/** Replaces `key = ...` inside `[section]` of a simple TOML text. */
function setKey(toml, section, key, value) {
  const lines = toml.split('\n');
  let current = null;
  let done = false;
  for (let i = 0; i < lines.length; i++) {
    const header = lines[i].match(/^\s*\[\[?([^\]]+)\]\]?\s*$/);
    if (header) { current = header[1].trim(); continue; }
    if (current === section && new RegExp(`^\\s*${key}\\s*=`).test(lines[i])) {
      lines[i] = `${key} = ${value}`;
      done = true;
      break;
    }
  }
  if (!done) throw new Error(`no ${key} in [${section}]`);
  return lines.join('\n');
}

export async function startRegion(opts) {
  const region = new Region(opts);
  try {
    return await region.start();
  } catch (e) {
    region.failed = true;
    await region.stop();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------
// A federation: several regions bridged, sharing a global master group

/** One region of a federation: its name, entry balancer and nodes. */
export class FederatedRegion {
  constructor(federation, described) {
    this.federation = federation;
    this.name = described.name;
    this.entry = described.entry;
    this.entryPort = portOf(described.entry);
    this.nodes = described.nodes.map(
      (n) => new ClusterNode(this, n, { dir: join(federation.dataDir, n.id) }));
  }

  get key() {
    return this.federation.key;
  }

  /** ably-js options for a client connected through the region's entry. */
  options(format, extra = {}) {
    const useBinaryProtocol = typeof format === 'boolean' ? format : format.useBinaryProtocol;
    return {
      key: this.key,
      endpoint: '127.0.0.1',
      port: this.entryPort,
      tls: false,
      disableConnectivityCheck: true,
      useBinaryProtocol,
      ...extra,
    };
  }
}

/**
 * `region-node dev --regions a,b --nodes N --global-masters M`: a global master group
 * of `global-master` processes and bridged regions, each behind an entry. Use
 * `startFederation()`; always call `stop()` in an after hook.
 */
export class Federation {
  constructor({
    regions = ['eu', 'us'], nodes = 2, globalMasters = 3, failureTimeoutMs = 1000, label = 'federation',
  } = {}) {
    this.regionNames = regions;
    this.size = nodes;
    this.globalMasterCount = globalMasters;
    this.failureTimeoutMs = failureTimeoutMs;
    this.dir = mkdtempSync(join(tmpdir(), `starling-federation-${label}-`));
    this.dataDir = join(this.dir, 'data');
    this.describePath = join(this.dir, 'describe.json');
    this.launcherLog = join(this.dir, 'launcher.log');
    this.launcher = null;
    this.describe = null;
    this.regions = [];
    this.globalMasters = [];
    this.extra = [];
    this.failed = false;
  }

  async start() {
    const bin = binaryPath();
    const args = [
      'dev',
      '--regions', this.regionNames.join(','),
      '--nodes', String(this.size),
      '--global-masters', String(this.globalMasterCount),
      '--data-dir', this.dataDir,
      '--describe', this.describePath,
      '--failure-timeout-ms', String(this.failureTimeoutMs),
    ];
    const log = openSync(this.launcherLog, 'a');
    const child = spawn(bin, args, { stdio: ['ignore', log, log], env: childEnv() });
    closeSync(log);
    this.launcher = child;
    spawned.add(child);
    let exitInfo = null;
    this.launcherExited = new Promise((res) => child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      spawned.delete(child);
      res(exitInfo);
    }));

    this.describe = await untilFatal(() => {
      if (exitInfo) throw new FatalError(`region-node dev exited early (${JSON.stringify(exitInfo)})`);
      if (!existsSync(this.describePath)) return null;
      try {
        const d = JSON.parse(readFileSync(this.describePath, 'utf8'));
        const complete = d?.regions?.length === this.regionNames.length &&
          d.regions.every((r) => r.nodes?.length === this.size) &&
          d.global_masters?.length === this.globalMasterCount;
        return complete ? d : null;
      } catch {
        return null;
      }
    }, `region-node dev to write ${this.describePath}`, REGION_START_MS, 100).catch((e) => {
      this.failed = true;
      throw new Error(`${e.message}\n--- launcher log ---\n${tailOf(this.launcherLog)}`);
    });
    this.globalMasters = this.describe.global_masters.map((m) => {
      if (m.pid) knownPids.add(m.pid);
      return { ...m, logPath: join(this.dataDir, m.id, 'global-master.log') };
    });
    this.regions = this.describe.regions.map((r) => new FederatedRegion(this, r));
    for (const region of this.regions) {
      await waitRegionHealthy(region.nodes, this.size,
        `every node of ${region.name} to see all ${this.size} nodes live`, REGION_START_MS);
    }
    return this;
  }

  get key() {
    return this.describe.apps[0].keys[0].key;
  }

  get nodes() {
    return this.regions.flatMap((r) => r.nodes);
  }

  region(name) {
    const r = this.regions.find((x) => x.name === name);
    if (!r) throw new Error(`no region ${name}`);
    return r;
  }

  /** A node by id (`us-2`). */
  node(id) {
    const n = this.nodes.find((x) => x.id === id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  /** Runs `fn`, marking the federation failed (so its folder is kept) if it throws. */
  async guard(fn) {
    try {
      return await fn();
    } catch (e) {
      this.failed = true;
      throw e;
    }
  }

  /**
   * Starts a node in `region` by hand, as an operator adds one: `from`'s config.toml
   * (the same region name, mesh seeds, `[global] members`, `[bridge] listen` on port 0,
   * apps and cluster secret) with a new id, data dir, client port 0 and a certificate
   * from the federation's CA. `from` defaults to `<region>-2`, whose seed is the
   * region's first node (`<region>-1` has none). The node is added to the region's
   * `nodes` (so to `nodes`, `logs()` and `stop()`) once it wrote its describe file;
   * it is not behind the region's entry.
   */
  async addNode({ id, region, from = `${region}-2` }) {
    const target = this.region(region);
    const dir = join(this.dir, 'extra', id);
    const started = await startHandNode({
      id, dir, sourceConfig: join(this.dataDir, from, 'config.toml'), caDir: join(this.dataDir, 'ca'),
    });
    const node = new ClusterNode(target, started.described, { dir, child: started.child });
    node.exited = started.exited;
    node.configPath = started.configPath;
    target.nodes.push(node);
    this.extra.push(node);
    return node;
  }

  /** The last `lines` of every node's log (and the launcher's), for failure messages. */
  logs(lines = 30, filter = null) {
    const parts = [];
    for (const n of this.nodes) {
      if (filter && !filter(n)) continue;
      parts.push(`--- ${n.id} (${n.alive() ? 'running' : 'not running'}) ${n.logPath} ---\n${n.logTail(lines)}`);
    }
    return parts.join('\n');
  }

  /**
   * SIGKILLs the launcher, every node and global master it described (by pid, also
   * those only in their own describe files), waits until they are gone, and removes
   * the folder unless it is to be kept. Never throws; safe to call twice.
   */
  async stop() {
    const pids = new Set([...this.nodes.map((n) => n.pid), ...this.globalMasters.map((m) => m.pid)]);
    for (const name of this.regionNames) {
      for (let i = 1; i <= this.size; i++) {
        try {
          const d = JSON.parse(readFileSync(join(this.dataDir, `${name}-${i}`, 'describe.json'), 'utf8'));
          const pid = d?.regions?.[0]?.nodes?.[0]?.pid;
          if (pid) pids.add(pid);
        } catch { /* not written */ }
      }
    }
    for (const pid of pids) if (pid) knownPids.add(pid);
    if (this.launcher && this.launcher.exitCode === null && this.launcher.signalCode === null) {
      this.launcher.kill('SIGKILL');
    }
    for (const pid of pids) killPid(pid, 'SIGKILL');
    try {
      if (this.launcher) await within(this.launcherExited, 'launcher to exit', 10_000);
      await until(() => [...pids].every((pid) => !isRegionNode(pid)), 'every process to exit', 10_000, 20);
    } catch (e) {
      process.stderr.write(`[cluster-harness] ${e.message}\n`);
    }
    // Children of a launcher that died before describing them stop by themselves
    // (STARLING_EXIT_WITH_PARENT); nothing else to find here.
    const keep = this.failed || process.env.STARLING_CLUSTER_KEEP || process.env.STARLING_KEEP_TMP;
    if (keep) {
      process.stderr.write(`[cluster-harness] kept ${this.dir} (launcher.log; node logs in ` +
        `data/<region>-<n>/node.log${this.extra.length ? ', extra/*/node.log' : ''}, global masters in data/gm-*/)\n`);
    } else {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

function tailOf(path, lines = 40) {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Starts `region-node dev` with several bridged regions (default eu and us, 2 nodes
 * each, 3 global-master processes) and waits until every region's mesh is whole.
 */
export async function startFederation(opts) {
  const federation = new Federation(opts);
  try {
    return await federation.start();
  } catch (e) {
    federation.failed = true;
    await federation.stop();
    throw e;
  }
}

/** Creates a CA (another one than the cluster's) in `dir`. */
export function createCa(dir) {
  const res = spawnSync(binaryPath(), ['ca', 'create', '--dir', dir], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`ca create: ${res.status} ${res.stderr}`);
  return dir;
}

/** Waits until every given node answers `/health` 200 and sees `live` live members. */
export async function waitRegionHealthy(nodes, live, what, ms = 30_000) {
  await until(async () => {
    for (const n of nodes) {
      const h = await n.health();
      if (h.status !== 200 || h.body?.mesh?.live !== live) return false;
    }
    return true;
  }, what ?? `${nodes.map((n) => n.id).join(', ')} healthy with ${live} live nodes`, ms, 100);
}

/** Asks every node for `channel`'s placement and requires them to agree. */
export async function agreedPlacement(nodes, channel) {
  const views = await Promise.all(nodes.map((n) => n.placement(channel)));
  const owners = views.map((v) => JSON.stringify(v.owners));
  if (new Set(owners).size !== 1) {
    throw new Error(`nodes disagree on ${channel}: ${nodes.map((n, i) => `${n.id}=${owners[i]}`).join(' ')}`);
  }
  return views[0].owners;
}

/**
 * What every given node says about `channel` right now (placement with the epoch it
 * sequences under, if it is master, and its /health counters): for failure messages.
 */
export async function channelReport(nodes, channel) {
  const lines = await Promise.all(nodes.map(async (n) => {
    if (!n.alive()) return `${n.id}: not running`;
    const [p, h] = await Promise.all([n.placement(channel, 1000).catch((e) => ({ error: e.message })), n.health(1000)]);
    return `${n.id}: owners ${JSON.stringify(p.owners ?? p.error)} epoch ${p.epoch ?? null}; health ${h.status || h.error} ` +
      `masters ${h.body?.masters} channels ${h.body?.channels} mesh ${JSON.stringify(h.body?.mesh)}`;
  }));
  return lines.join('\n');
}

/** Runs `fn`; if it throws, appends `report()`'s text to the error message. */
export async function explained(fn, report) {
  try {
    return await fn();
  } catch (e) {
    let extra;
    try { extra = await report(); } catch (r) { extra = `(no report: ${r.message})`; }
    e.message = `${e.message}\n${extra}`;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------
// Steady publishing and what subscribers saw

/**
 * Publishes on `channel` (an ably-js RealtimeChannel) one message at a time, each
 * awaited, at most one every `intervalMs`: name `label`, data `{n, p: label}` with a
 * counter `n`. Records every ACK (`{n, serial, sentAt, ackAt}`) and every refusal
 * (`{n, error, sentAt, at}`). `stop()` ends the loop after the publish in flight.
 */
export function steadyPublisher(channel, label, { intervalMs = 20, publishTimeoutMs = 30_000 } = {}) {
  const state = {
    label,
    acks: [],
    failures: [],
    next: 0,
    stopped: false,
    inflight: null,
    done: null,
    waiters: [],
  };
  const notify = () => {
    for (const w of [...state.waiters]) {
      if (w.test()) {
        state.waiters.splice(state.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  state.done = (async () => {
    while (!state.stopped) {
      const n = state.next++;
      const sentAt = Date.now();
      state.inflight = { n, sentAt };
      try {
        const result = await within(channel.publish(label, { n, p: label }),
          `${label}: ACK for message ${n}`, publishTimeoutMs);
        state.acks.push({ n, serial: result?.serials?.[0] ?? null, sentAt, ackAt: Date.now() });
      } catch (e) {
        state.failures.push({ n, error: `${e.code ?? ''} ${e.message ?? e}`.trim(), sentAt, at: Date.now() });
      }
      state.inflight = null;
      notify();
      const wait = sentAt + intervalMs - Date.now();
      if (wait > 0 && !state.stopped) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    state,
    label,
    get acks() { return state.acks; },
    get failures() { return state.failures; },
    get published() { return state.next; },
    /** Resolves once `test()` holds after some publish completed. */
    waitUntil(test, what, ms = 30_000) {
      if (test()) return Promise.resolve();
      const p = new Promise((resolve) => state.waiters.push({ test, resolve }));
      return within(p, `${label}: ${what}`, ms).catch((e) => {
        const last = state.acks[state.acks.length - 1];
        e.message += ` (now ${state.acks.length} acked, last at ${last ? new Date(last.ackAt).toISOString() : '-'}; ` +
          `refused ${JSON.stringify(state.failures)}; in flight ${JSON.stringify(state.inflight)})`;
        throw e;
      });
    },
    waitAcks(count, what = `${count} ACKs`, ms = 30_000) {
      return this.waitUntil(() => state.acks.length >= count, what, ms);
    },
    async stop(ms = 40_000) {
      state.stopped = true;
      await within(state.done, `${label}: publisher to stop`, ms);
    },
  };
}

/**
 * Checks what one subscriber received from one publisher: the counters strictly
 * increase (publish order, no duplicate), every ACKed counter is there, each with the
 * serial its ACK carried; returns `{received, unackedDelivered}`.
 */
export function checkDelivery(assert, messages, publisher, who) {
  const mine = messages.filter((m) => m.name === publisher.label);
  const ns = mine.map((m) => m.data?.n);
  for (let i = 1; i < ns.length; i++) {
    assert.ok(ns[i] > ns[i - 1],
      `${who}: ${publisher.label}'s messages in publish order without duplicates; at index ${i} ` +
      `got ${ns[i]} after ${ns[i - 1]} (sequence ${compact(ns)})`);
  }
  const got = new Map(mine.map((m) => [m.data.n, m]));
  const missing = publisher.acks.filter((a) => !got.has(a.n)).map((a) => a.n);
  assert.deepEqual(missing, [], `${who}: every ACKed message of ${publisher.label} arrived ` +
    `(missing ${compact(missing)} of ${publisher.acks.length} acked; got ${compact(ns)})`);
  for (const a of publisher.acks) {
    const m = got.get(a.n);
    if (a.serial != null && m.serial != null) {
      assert.equal(m.serial, a.serial,
        `${who}: ${publisher.label} #${a.n} delivered with the serial its ACK gave`);
    }
  }
  const acked = new Set(publisher.acks.map((a) => a.n));
  const unackedDelivered = ns.filter((n) => !acked.has(n));
  return { received: ns.length, unackedDelivered };
}

/** Serials, where given, strictly increase in delivery order. */
export function checkSerialOrder(assert, messages, who) {
  const serials = messages.map((m) => m.serial).filter((s) => s != null);
  for (let i = 1; i < serials.length; i++) {
    assert.ok(serials[i] > serials[i - 1],
      `${who}: serials increase in delivery order (${serials[i - 1]} then ${serials[i]} at ${i})`);
  }
  return serials.length;
}

/** `[0..5, 7, 9..12]`-style summary of a list of integers. */
export function compact(ns) {
  const out = [];
  let i = 0;
  while (i < ns.length) {
    let j = i;
    while (j + 1 < ns.length && ns[j + 1] === ns[j] + 1) j++;
    out.push(j > i ? `${ns[i]}..${ns[j]}` : `${ns[i]}`);
    i = j + 1;
  }
  const s = `[${out.join(', ')}]`;
  return s.length > 600 ? `${s.slice(0, 600)}…]` : s;
}

/** The largest gap between consecutive ACK times, and around `at` (e.g. a kill). */
export function ackGaps(acks, at) {
  const times = acks.map((a) => a.ackAt).sort((a, b) => a - b);
  let maxGap = 0;
  for (let i = 1; i < times.length; i++) maxGap = Math.max(maxGap, times[i] - times[i - 1]);
  const before = times.filter((t) => t <= at).pop();
  const after = times.find((t) => t > at);
  return {
    maxGap,
    lastBefore: before,
    firstAfter: after,
    gapAround: before != null && after != null ? after - before : null,
    sinceEvent: after != null ? after - at : null,
  };
}
