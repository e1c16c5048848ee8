// Shared helpers of the browser suite: the server started by run.sh (ITSUR_BASE_URL), a
// bearer API client for test setup and checks, Debian's Chromium through playwright-core,
// an axe-core check, a TCP proxy that can cut a page's connection, and polling helpers.

import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

export const BASE = process.env.ITSUR_BASE_URL;
if (!BASE) throw new Error('ITSUR_BASE_URL is unset: run tests/browser/run.sh (make test)');
export const SCREENSHOTS = path.resolve(here, '../../docs/screenshots');

/** Accounts of `itsur seed --demo`. */
export const DEMO = {
  student: { email: 'student@itsur.edu', password: 'student-demo-pass' },
  staff: { email: 'staff@itsur.edu', password: 'staff-demo-pass' },
  admin: { email: 'admin@itsur.edu', password: 'admin-demo-pass' },
};

/** A tablet in landscape: the board's target screen. */
export const TABLET = { width: 1280, height: 800 };

// ---- API ------------------------------------------------------------------------------

/** A bearer-token client of the API (never the browser's cookie). */
export class Api {
  constructor(token, base = BASE) {
    this.token = token;
    this.base = base;
  }

  static async login({ email, password }) {
    const res = await fetch(`${BASE}/auth/login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email, password }),
    });
    const body = await res.json();
    assert.equal(res.status, 200, JSON.stringify(body));
    const api = new Api(body.data.accessToken);
    api.user = body.data.user;
    return api;
  }

  async call(method, p, body, headers = {}) {
    const res = await fetch(`${this.base}${p}`, {
      method,
      headers: {
        Authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch (_) {
      json = null;
    }
    return { status: res.status, body: json, text, headers: res.headers };
  }

  async ok(method, p, body, headers) {
    const r = await this.call(method, p, body, headers);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${p} → ${r.status}: ${r.text}`);
    return r.body;
  }
}

// ---- browser --------------------------------------------------------------------------

/** Chromium from Debian, headless, isolated from the network and from other runs. */
export async function launch() {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'itsur-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: TABLET,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return browser;
}

/**
 * A page that fails the test on a CSP violation, an uncaught error or a failed script:
 * call `page.problems()` at the end (a list; expect it empty).
 */
export async function newPage(context) {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    if (process.env.BROWSER_DEBUG) console.log(`[browser ${m.type()}] ${t}`);
    if (/Content Security Policy|Refused to (load|execute|apply|connect)/i.test(t)) {
      problems.push(`CSP: ${t}`);
    }
  });
  if (process.env.BROWSER_DEBUG) {
    page.on('requestfailed', (r) => console.log(`[browser requestfailed] ${r.url()} ${r.failure()?.errorText}`));
    page.on('response', (r) => console.log(`[browser ${r.status()}] ${r.request().method()} ${r.url()}`));
    page.on('websocket', (ws) => {
      console.log(`[browser ws] open ${ws.url()}`);
      ws.on('framereceived', (f) => console.log(`[browser ws <] ${String(f.payload).slice(0, 200)}`));
      ws.on('close', () => console.log('[browser ws] closed'));
    });
  }
  page.problems = () => problems;
  return page;
}

const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/**
 * Runs axe-core on the page (WCAG 2 A/AA and best practices) and fails on a serious or
 * critical violation. axe is evaluated through the DevTools protocol, so the page's CSP
 * stays in force.
 */
export async function assertAccessible(page, label) {
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    axe.run(document, { runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`),
    [],
    `axe on ${label}`,
  );
}

/** Signs in through the app's form. */
export async function signIn(page, { email, password }) {
  await page.getByLabel('E-mail').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

// ---- waiting --------------------------------------------------------------------------

/** Polls `fn` until it returns a truthy value or the deadline passes. */
export async function until(fn, { timeout = 10000, every = 50, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
}

// ---- a proxy that can cut the page off ------------------------------------------------

/**
 * A TCP proxy in front of the server. `cut()` drops every connection and refuses new ones
 * (the network is gone); `cutSockets()` does that to WebSocket upgrades only (HTTP still
 * works, the live channel does not); `restore()` lets everything through again.
 */
export async function startProxy(target = BASE) {
  const { hostname, port } = new URL(target);
  const conns = new Set();
  let mode = 'open';
  const server = net.createServer((client) => {
    if (mode === 'cut') {
      client.destroy();
      return;
    }
    client.once('data', (first) => {
      const isWs = /^GET \/ws[ ?]/.test(first.toString('latin1', 0, 64));
      if (mode === 'cut' || (mode === 'no-ws' && isWs)) {
        client.destroy();
        return;
      }
      const upstream = net.connect(Number(port), hostname, () => upstream.write(first));
      const conn = { client, upstream, isWs };
      conns.add(conn);
      const drop = () => {
        conns.delete(conn);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    client.on('error', () => client.destroy());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const drop = (pred) => {
    for (const c of [...conns]) {
      if (pred(c)) {
        conns.delete(c);
        c.client.destroy();
        c.upstream.destroy();
      }
    }
  };
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      mode = 'cut';
      drop(() => true);
    },
    cutSockets() {
      mode = 'no-ws';
      drop((c) => c.isWs);
    },
    restore() {
      mode = 'open';
    },
    async close() {
      drop(() => true);
      await new Promise((r) => server.close(r));
    },
  };
}
