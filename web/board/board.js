// The vendor board (/board/): the vendor's active orders in four columns, live over the
// WebSocket gateway (/ws, protocol itsur.v1), moved to their next state with one tap.
//
// Realtime: the socket authenticates with the HttpOnly session cookie (same origin; no
// token in the URL or page script). The first `hello` gives the event id the board starts
// from; the orders are then loaded over HTTP. Every event advances `lastEventId`; after a
// drop the board reconnects with `?after=<lastEventId>` and the server replays what was
// missed before any live event. Cards are keyed by order id and only a higher version
// changes one, so a replayed or duplicated event never shows an order twice. A replay the
// server reports incomplete (cursor too old) reloads the orders over HTTP.

import { api, ApiError, refreshSession } from '../shared/api.js';
import { start } from '../shared/session.js';
import { clock, h, money, replace } from '../shared/dom.js';

const COLUMNS = [
  { status: 'placed', title: 'Placed', next: 'accepted', action: 'Accept' },
  { status: 'accepted', title: 'Accepted', next: 'preparing', action: 'Start preparing' },
  { status: 'preparing', title: 'Preparing', next: 'ready', action: 'Mark ready' },
  { status: 'ready', title: 'Ready', next: 'picked_up', action: 'Handed over' },
];
const ACTIVE = new Set(COLUMNS.map((c) => c.status));
const HIGHLIGHT_MS = 8000;

start({ title: 'Order board', roles: ['vendor_staff'], render: renderBoard });

function renderBoard(main, user) {
  const board = new Board(main, user.vendorId);
  board.start();
  return () => board.stop();
}

class Board {
  constructor(main, vendorId) {
    this.main = main;
    this.vendorId = vendorId;
    this.orders = new Map(); // id → order view (status, version, items, note, …)
    this.cards = new Map(); // id → card element
    this.lastEventId = null;
    this.socket = null;
    this.stopped = false;
    this.retry = 0;
    this.audio = null;
    this.pingTimer = null;
    this.pongDeadline = null;
  }

  start() {
    this.status = h('p', { class: 'conn', id: 'connection', role: 'status' }, 'Connecting…');
    this.openToggle = h('button', { type: 'button', id: 'open-toggle', class: 'toggle', 'aria-pressed': 'false' }, '…');
    this.openToggle.addEventListener('click', () => this.toggleOpen());
    this.vendorName = h('h2', { class: 'vendor-name' }, 'Orders');
    this.flash = h('p', { class: 'flash', id: 'flash', role: 'alert' });
    this.columns = new Map();
    const cols = COLUMNS.map((c) => {
      const list = h('ol', { class: 'cards', 'aria-labelledby': `col-${c.status}` });
      const count = h('span', { class: 'count' }, '0');
      this.columns.set(c.status, { list, count });
      return h('section', { class: `column col-${c.status}`, dataset: { status: c.status } },
        h('h3', { id: `col-${c.status}` }, c.title, ' ', count),
        list);
    });
    replace(this.main,
      h('div', { class: 'board-bar' }, this.vendorName, this.openToggle, this.status),
      this.flash,
      h('div', { class: 'board', id: 'board' }, cols));
    // Browsers allow sound only after a gesture: the sign-in click usually counts; any tap
    // on the board unlocks it otherwise.
    this.main.addEventListener('pointerdown', () => this.unlockAudio(), { once: true });
    this.unlockAudio();
    this.loadVendor();
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.pingTimer);
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close(1000);
  }

  // ---- vendor open/closed -------------------------------------------------------------

  async loadVendor() {
    try {
      const body = await api('GET', `/vendors/${this.vendorId}/menu`);
      this.showVendor(body.data.vendor);
    } catch (e) {
      this.say(`Could not load the vendor: ${e.message}`);
    }
  }

  showVendor(v) {
    this.vendor = v;
    this.vendorName.textContent = v.name;
    this.openToggle.textContent = v.isOpen ? 'Open for orders' : 'Closed';
    this.openToggle.setAttribute('aria-pressed', v.isOpen ? 'true' : 'false');
    this.openToggle.classList.toggle('closed', !v.isOpen);
    this.openToggle.title = v.isOpen ? 'Tap to stop taking orders' : 'Tap to take orders';
  }

  async toggleOpen() {
    if (!this.vendor) return;
    this.openToggle.disabled = true;
    try {
      const body = await api('PUT', `/vendors/${this.vendorId}/open`, { isOpen: !this.vendor.isOpen });
      this.showVendor(body.data);
    } catch (e) {
      this.say(`Could not change opening: ${e.message}`);
    } finally {
      this.openToggle.disabled = false;
    }
  }

  // ---- orders over HTTP ---------------------------------------------------------------

  async loadOrders() {
    const lists = await Promise.all(COLUMNS.map((c) =>
      api('GET', `/orders?status=${c.status}&limit=100`).then((b) => b.data)));
    const seen = new Set();
    for (const list of lists) {
      for (const o of list) {
        seen.add(o.id);
        this.upsert(o, { fresh: false });
      }
    }
    // Orders that left the active states while we were not looking.
    for (const id of [...this.orders.keys()]) {
      if (!seen.has(id)) this.remove(id);
    }
  }

  async refreshOrder(id) {
    try {
      const body = await api('GET', `/orders/${id}`);
      this.upsert(body.data, { fresh: false, force: true });
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) this.remove(id);
      else this.say(`Could not refresh an order: ${e.message}`);
    }
  }

  // ---- the socket ---------------------------------------------------------------------

  connect() {
    if (this.stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const after = this.lastEventId === null ? '' : `?after=${this.lastEventId}`;
    const ws = new WebSocket(`${scheme}//${location.host}/ws${after}`, ['itsur.v1']);
    this.socket = ws;
    let opened = false;
    ws.addEventListener('open', () => {
      opened = true;
    });
    ws.addEventListener('message', (m) => {
      this.pongDeadline = null;
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      this.onMessage(msg, ws);
    });
    ws.addEventListener('close', async (ev) => {
      if (this.socket !== ws) return;
      clearInterval(this.pingTimer);
      this.socket = null;
      if (this.stopped) return;
      this.setConn('offline', 'Reconnecting…');
      if (ev.code === 4001 || (!opened && this.retry > 0 && this.retry % 3 === 0)) {
        // Session ended, or the upgrade keeps failing (an expired access cookie answers
        // 401 before any socket opens): rotate the cookies before trying again.
        const ok = await refreshSession();
        if (!ok && ev.code === 4001) {
          window.dispatchEvent(new CustomEvent('itsur:signed-out'));
          return;
        }
      }
      const delay = Math.min(5000, 250 * 2 ** Math.min(this.retry, 5)) * (0.5 + Math.random() / 2);
      this.retry += 1;
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    });
  }

  async onMessage(msg, ws) {
    switch (msg.type) {
      case 'hello': {
        this.retry = 0;
        this.startPings(ws, msg.pingSecs || 25);
        if (this.lastEventId === null) {
          // First connection: start from here, then load the state it applies to.
          this.lastEventId = msg.lastEventId;
          try {
            await this.loadOrders();
            this.setConn('live', 'Live');
          } catch (e) {
            this.setConn('offline', `Could not load orders: ${e.message}`);
          }
        } else {
          this.setConn('catching-up', 'Catching up…');
        }
        break;
      }
      case 'resumed':
        this.setConn('live', 'Live');
        if (!msg.complete) {
          this.lastEventId = Math.max(this.lastEventId, msg.lastEventId);
          await this.loadOrders();
        }
        break;
      case 'event':
        this.onEvent(msg);
        break;
      case 'pong':
        break;
      case 'error':
        this.say(`Server: ${msg.message}`);
        break;
      default:
        break;
    }
  }

  startPings(ws, pingSecs) {
    clearInterval(this.pingTimer);
    const every = Math.max(5, Math.min(pingSecs, 20)) * 1000;
    this.pingTimer = setInterval(() => {
      if (ws.readyState !== WebSocket.OPEN) return;
      if (this.pongDeadline && Date.now() > this.pongDeadline) {
        // Nothing came back since the last ping: the link is dead even if TCP says not.
        ws.close(4000);
        return;
      }
      this.pongDeadline = this.pongDeadline || Date.now() + every;
      ws.send(JSON.stringify({ type: 'ping' }));
    }, every);
  }

  onEvent(ev) {
    if (typeof ev.id === 'number' && (this.lastEventId === null || ev.id > this.lastEventId)) {
      this.lastEventId = ev.id;
    }
    if (!ev.aggregate || ev.aggregate.type !== 'order') return;
    if (ev.event === 'order.created') {
      const o = ev.data;
      if (o.vendorId && o.vendorId !== this.vendorId) return;
      this.upsert(o, { fresh: true });
    } else if (ev.event === 'order.status_changed') {
      const id = ev.aggregate.id;
      const known = this.orders.get(id);
      if (known) {
        if (ev.version > known.version) {
          this.upsert({ ...known, status: ev.data.to, version: ev.version }, { fresh: false });
        }
      } else if (ACTIVE.has(ev.data.to)) {
        // Created before this board started and not loaded (or loaded late): fetch it.
        this.refreshOrder(id);
      }
    }
  }

  // ---- cards --------------------------------------------------------------------------

  upsert(order, { fresh, force = false }) {
    const known = this.orders.get(order.id);
    if (known && !force && order.version <= known.version) return;
    if (!ACTIVE.has(order.status)) {
      this.remove(order.id);
      return;
    }
    this.orders.set(order.id, order);
    const old = this.cards.get(order.id);
    const card = this.card(order);
    this.cards.set(order.id, card);
    if (old) old.remove();
    this.place(card, order);
    if (fresh && !known) {
      card.classList.add('new');
      setTimeout(() => card.classList.remove('new'), HIGHLIGHT_MS);
      this.chime();
    }
    this.counts();
  }

  place(card, order) {
    const { list } = this.columns.get(order.status);
    // Oldest first: the kitchen works top-down.
    const before = [...list.children].find((c) => c.dataset.created > order.createdAt);
    list.insertBefore(card, before || null);
  }

  remove(id) {
    this.orders.delete(id);
    const card = this.cards.get(id);
    if (card) card.remove();
    this.cards.delete(id);
    this.counts();
  }

  counts() {
    for (const [status, { count }] of this.columns) {
      count.textContent = String([...this.orders.values()].filter((o) => o.status === status).length);
    }
  }

  card(order) {
    const col = COLUMNS.find((c) => c.status === order.status);
    const button = h('button', { type: 'button', class: 'primary advance' }, `${col.action} →`);
    button.addEventListener('click', () => this.advance(order.id, col.next, button));
    const short = order.id.slice(-6);
    return h('li', {
      class: 'card', id: `order-${order.id}`,
      dataset: { id: order.id, version: String(order.version), created: order.createdAt, status: order.status },
    },
      h('div', { class: 'card-head' },
        h('span', { class: 'ref' }, `#${short}`),
        h('time', { datetime: order.createdAt }, clock(order.createdAt)),
        h('span', { class: 'total' }, money(order.totalCents))),
      h('ul', { class: 'items' },
        (order.items || []).map((it) => h('li', {}, h('strong', {}, `${it.quantity}×`), ' ', it.name))),
      order.note ? h('p', { class: 'note' }, h('span', { class: 'visually-hidden' }, 'Note: '), order.note) : null,
      button);
  }

  async advance(id, to, button) {
    const order = this.orders.get(id);
    if (!order) return;
    button.disabled = true;
    try {
      const body = await api('POST', `/orders/${id}/transitions`, { to }, {
        headers: { 'If-Match': `"${order.version}"` },
      });
      this.upsert(body.data, { fresh: false });
    } catch (e) {
      if (e instanceof ApiError && (e.status === 412 || e.status === 409)) {
        // Someone else moved it first: show what it is now, never overwrite it.
        this.say('This order changed elsewhere; the card shows its current state.');
        await this.refreshOrder(id);
      } else {
        this.say(`Could not move the order: ${e.message}`);
      }
      button.disabled = false;
    }
  }

  // ---- feedback -----------------------------------------------------------------------

  setConn(state, text) {
    this.status.textContent = text;
    this.status.dataset.state = state;
  }

  say(text) {
    this.flash.textContent = text;
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => {
      this.flash.textContent = '';
    }, 6000);
  }

  unlockAudio() {
    try {
      if (!this.audio) this.audio = new AudioContext();
      if (this.audio.state === 'suspended') this.audio.resume();
    } catch (_) {
      this.audio = null;
    }
  }

  /** Two short tones, synthesised (no sound file to load). */
  chime() {
    const ctx = this.audio;
    if (!ctx || ctx.state !== 'running') return;
    const t = ctx.currentTime;
    for (const [i, f] of [880, 1320].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = f;
      gain.gain.setValueAtTime(0.0001, t + i * 0.18);
      gain.gain.exponentialRampToValueAtTime(0.3, t + i * 0.18 + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.18 + 0.16);
      osc.connect(gain).connect(ctx.destination);
      osc.start(t + i * 0.18);
      osc.stop(t + i * 0.18 + 0.17);
    }
    document.body.dataset.chimes = String(Number(document.body.dataset.chimes || 0) + 1);
  }
}
