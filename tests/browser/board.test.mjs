// The vendor board (/board/) in Chromium: sign-in as vendor staff, an order placed through
// the API shows up live (highlight + chime), five orders placed while the board is cut off
// all appear exactly once after it reconnects, a transition from the board is what the
// student sees through the API, a stale tap refreshes the card instead of overwriting,
// open/closed toggles the vendor, sign-out revokes the session. axe-core on each screen;
// screenshots for the README.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  Api, BASE, DEMO, SCREENSHOTS, assertAccessible, launch, newPage, signIn, startProxy, until,
} from './lib.mjs';

let context;
let page;
let proxy;
let student;
let staff;
let vendorId;
let itemId;

before(async () => {
  student = await Api.login(DEMO.student);
  staff = await Api.login(DEMO.staff);
  vendorId = staff.user.vendorId;
  assert.ok(vendorId, 'the demo staff account belongs to a vendor');
  await staff.ok('PUT', `/vendors/${vendorId}/open`, { isOpen: true });
  const menu = await student.ok('GET', `/vendors/${vendorId}/menu`);
  const item = menu.data.items.find((i) => i.available && i.stock > 50);
  assert.ok(item, 'the demo menu has an item in stock');
  itemId = item.id;
  proxy = await startProxy(BASE);
  context = await launch();
  page = await newPage(context);
});

after(async () => {
  if (context) await context.close();
  if (proxy) await proxy.close();
});

let placed = 0;
async function placeOrder(note) {
  placed += 1;
  const body = await student.ok('POST', '/orders', {
    vendorId, items: [{ menuItemId: itemId, quantity: 1 + (placed % 3) }], note,
  }, { 'Idempotency-Key': `browser-${process.pid}-${placed}` });
  return body.data;
}

const card = (id) => page.locator(`#order-${id}`);
const column = (status) => page.locator(`.column[data-status="${status}"]`);

test('vendor staff sign in; the page passes axe and leaks no token to script', async () => {
  await page.goto(`${proxy.url}/board/`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await assertAccessible(page, 'board sign-in');
  await page.screenshot({ path: path.join(SCREENSHOTS, 'board-sign-in.png') });
  await signIn(page, DEMO.staff);
  await page.locator('#connection[data-state="live"]').waitFor();
  // The session cookie is HttpOnly: page script sees no token.
  const visible = await page.evaluate(() => document.cookie);
  assert.doesNotMatch(visible, /itsur_access|itsur_refresh|eyJ/);
  const cookies = await context.cookies();
  const access = cookies.find((c) => c.name === 'itsur_access');
  assert.ok(access && access.httpOnly && access.sameSite === 'Strict', JSON.stringify(cookies));
  await assertAccessible(page, 'board');
});

test('an order placed through the API appears within a second, highlighted, with a chime', async () => {
  const chimesBefore = Number(await page.evaluate(() => document.body.dataset.chimes || 0));
  const order = await placeOrder('No onions, please');
  const placedAt = Date.now();
  // The budget: on the board within 1 s of the API's answer.
  await card(order.id).waitFor({ timeout: 1000 });
  const latency = Date.now() - placedAt;
  console.log(`board latency: ${latency} ms`);
  await assert.doesNotReject(column('placed').locator(`#order-${order.id}`).waitFor({ timeout: 100 }));
  assert.match(await card(order.id).getAttribute('class'), /\bnew\b/);
  assert.match(await card(order.id).innerText(), /No onions, please/);
  await until(async () =>
    Number(await page.evaluate(() => document.body.dataset.chimes || 0)) > chimesBefore,
  { what: 'the chime' });
});

test('cut off, five orders placed, restored: all five appear exactly once', async () => {
  proxy.cut();
  await page.locator('#connection[data-state="offline"]').waitFor();
  const missed = [];
  for (let i = 0; i < 5; i += 1) missed.push(await placeOrder(`missed ${i + 1}`));
  // Still cut: none of them can be on the board yet.
  for (const o of missed) assert.equal(await card(o.id).count(), 0);
  proxy.restore();
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15000 });
  for (const o of missed) {
    await card(o.id).waitFor({ timeout: 5000 });
  }
  // Exactly once each, and no other card doubled.
  const ids = await page.locator('.card').evaluateAll((els) => els.map((e) => e.dataset.id));
  for (const o of missed) assert.equal(ids.filter((id) => id === o.id).length, 1, o.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate cards: ${ids}`);
});

test('a tap moves the order on; the student sees the change through the API', async () => {
  const order = await placeOrder('tap me');
  await card(order.id).waitFor();
  await card(order.id).getByRole('button', { name: /Accept/ }).click();
  await column('accepted').locator(`#order-${order.id}`).waitFor();
  const seen = await until(async () => {
    const r = await student.ok('GET', `/orders/${order.id}`);
    return r.data.status === 'accepted' && r.data;
  }, { what: 'the student to see accepted' });
  assert.equal(seen.version, 2);
  await card(order.id).getByRole('button', { name: /Start preparing/ }).click();
  await column('preparing').locator(`#order-${order.id}`).waitFor();
  await card(order.id).getByRole('button', { name: /Mark ready/ }).click();
  await column('ready').locator(`#order-${order.id}`).waitFor();
  const ready = await student.ok('GET', `/orders/${order.id}`);
  assert.equal(ready.data.status, 'ready');
});

test('a stale tap refreshes the card and never overwrites the newer state', async () => {
  const order = await placeOrder('stale');
  await card(order.id).waitFor();
  // Keep HTTP working but stop the live channel, so the board cannot hear about the change.
  proxy.cutSockets();
  await page.locator('#connection[data-state="offline"]').waitFor();
  await staff.ok('POST', `/orders/${order.id}/transitions`, { to: 'accepted' }, { 'If-Match': '"1"' });
  await staff.ok('POST', `/orders/${order.id}/transitions`, { to: 'preparing' }, { 'If-Match': '"2"' });
  // The board still shows it as placed (version 1) and the tap sends that version.
  assert.equal(await card(order.id).getAttribute('data-version'), '1');
  await card(order.id).getByRole('button', { name: /Accept/ }).click();
  await column('preparing').locator(`#order-${order.id}`).waitFor();
  assert.match(await page.locator('#flash').innerText(), /changed elsewhere/);
  const now = await student.ok('GET', `/orders/${order.id}`);
  assert.equal(now.data.status, 'preparing');
  assert.equal(now.data.version, 3);
  proxy.restore();
  await page.locator('#connection[data-state="live"]').waitFor({ timeout: 15000 });
});

test('the vendor is closed and reopened from the board', async () => {
  const toggle = page.locator('#open-toggle');
  await until(async () => (await toggle.innerText()) === 'Open for orders', { what: 'open' });
  await toggle.click();
  await until(async () => (await toggle.innerText()) === 'Closed', { what: 'closed' });
  const menu = await student.ok('GET', `/vendors/${vendorId}/menu`);
  assert.equal(menu.data.vendor.isOpen, false);
  const refused = await student.call('POST', '/orders', { vendorId, items: [{ menuItemId: itemId, quantity: 1 }] });
  assert.ok(refused.status >= 400 && refused.status < 500, `${refused.status} ${refused.text}`);
  await toggle.click();
  await until(async () => (await toggle.innerText()) === 'Open for orders', { what: 'open again' });
  assert.equal((await student.ok('GET', `/vendors/${vendorId}/menu`)).data.vendor.isOpen, true);
});

test('screenshot of the board, then sign-out revokes the session', async () => {
  // A board with a card in every column for the README.
  const extra = await placeOrder('Extra salsa on the side');
  await card(extra.id).waitFor();
  const taken = await placeOrder('Two spoons');
  await card(taken.id).getByRole('button', { name: /Accept/ }).click();
  await column('accepted').locator(`#order-${taken.id}`).waitFor();
  await page.evaluate(() => {
    document.getElementById('flash').textContent = '';
  });
  await page.screenshot({ path: path.join(SCREENSHOTS, 'board.png') });
  await page.setViewportSize({ width: 768, height: 1024 });
  await page.screenshot({ path: path.join(SCREENSHOTS, 'board-tablet-portrait.png') });
  await assertAccessible(page, 'board (portrait)');
  await page.setViewportSize({ width: 1280, height: 800 });

  const cookie = (await context.cookies()).find((c) => c.name === 'itsur_access').value;
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  // The old cookie value is dead on the server, not just forgotten by the browser.
  const res = await fetch(`${BASE}/auth/web/session`, { headers: { Cookie: `itsur_access=${cookie}` } });
  assert.equal(res.status, 401);
  assert.deepEqual(page.problems(), []);
});
