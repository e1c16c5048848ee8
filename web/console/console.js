// The operator console (/console/): overview, jobs (filters, keyset pages, bulk actions),
// job detail, queues, workers, cron, dead outbox events, audit log and flows, for platform
// and campus admins (the server scopes every answer to the admin's campus).
//
// Pages are hash routes (#/jobs?state=dead, #/jobs/<id>) so reload and back work without a
// server route per page. Everything is built with ../shared/dom.js (textContent only: job
// payloads and errors are data, never markup); charts are SVG elements with attributes only
// (the CSP allows no inline style or script). The sign-in flow and page frame come from
// ../shared/session.js; the API calls go through ../shared/api.js (session cookie + CSRF).

import { start } from '../shared/session.js';
import { api, ApiError } from '../shared/api.js';
import { h, replace } from '../shared/dom.js';

const REFRESH_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';
const STATES = ['queued', 'running', 'completed', 'cancelled', 'dead'];

const PAGES = [
  { path: 'overview', title: 'Overview', render: overviewPage },
  { path: 'jobs', title: 'Jobs', render: jobsPage },
  { path: 'queues', title: 'Queues', render: queuesPage },
  { path: 'workers', title: 'Workers', render: workersPage },
  { path: 'cron', title: 'Cron', render: cronPage, platformOnly: true },
  { path: 'flows', title: 'Flows', render: flowsPage },
  { path: 'outbox', title: 'Dead events', render: outboxPage },
  { path: 'audit', title: 'Audit log', render: auditPage },
];

// ---- small helpers --------------------------------------------------------------------

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = new Intl.NumberFormat();
function num(n) {
  return fmt.format(n);
}

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toLocaleString([], { dateStyle: 'short', timeStyle: 'medium' });
}

function age(secs) {
  if (!secs) return '0 s';
  if (secs < 60) return `${secs.toFixed(1)} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${Math.round(secs % 60)} s`;
  return `${Math.floor(secs / 3600)} h ${Math.round((secs % 3600) / 60)} min`;
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.status}: ${e.message}`;
  return e.message || String(e);
}

function table(caption, headers, rows, attrs = {}) {
  return h('div', { class: 'table-wrap' },
    h('table', attrs,
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, headers.map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
}

function stat(label, value, id) {
  return h('div', { class: 'stat', id },
    h('span', { class: 'stat-label' }, label),
    h('span', { class: 'stat-value' }, value));
}

function badge(state) {
  return h('span', { class: `badge state-${state}` }, state);
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '') || 'overview';
  const [pathPart, query = ''] = raw.split('?');
  const parts = pathPart.split('/').filter(Boolean);
  return { parts, params: new URLSearchParams(query) };
}

/** Repeats `fn` every REFRESH_MS until the page is left; returns the stop function. */
function every(fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    await fn();
    if (!stopped) timer = setTimeout(tick, REFRESH_MS);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---- app ------------------------------------------------------------------------------

start({
  title: 'ITSUR Console',
  roles: ['platform_admin', 'campus_admin'],
  render(main, user) {
    const pages = PAGES.filter((p) => !p.platformOnly || user.role === 'platform_admin');
    const nav = document.getElementById('app-nav');
    const links = pages.map((p) => h('a', { href: `#/${p.path}`, dataset: { page: p.path } }, p.title));
    if (nav) replace(nav, links);
    let stop = null;
    const route = () => {
      if (stop) stop();
      stop = null;
      const { parts, params } = parseHash();
      const page = pages.find((p) => p.path === parts[0]) || pages[0];
      for (const a of links) {
        if (a.dataset.page === page.path) a.setAttribute('aria-current', 'page');
        else a.removeAttribute('aria-current');
      }
      const section = h('section', { class: 'console-page', 'aria-labelledby': 'page-title' });
      replace(main, section);
      document.title = `${page.title} · ITSUR Console`;
      stop = page.render(section, { user, parts, params }) || null;
    };
    window.addEventListener('hashchange', route);
    route();
    return () => {
      window.removeEventListener('hashchange', route);
      if (stop) stop();
    };
  },
});

// ---- overview -------------------------------------------------------------------------

function overviewPage(section, { user }) {
  const scope = user.role === 'campus_admin' ? 'your campus' : 'every campus';
  const body = h('div', { class: 'overview', 'aria-live': 'polite', 'aria-busy': 'true' });
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section,
    h('h2', { id: 'page-title' }, 'Overview'),
    h('p', { class: 'muted' }, `Jobs and events of ${scope}; refreshed every 5 seconds.`),
    error, body);
  return every(async () => {
    try {
      const { data } = await api('GET', '/admin/console/overview');
      error.textContent = '';
      renderOverview(body, data);
      body.setAttribute('aria-busy', 'false');
    } catch (e) {
      error.textContent = `Could not load the overview: ${errorText(e)}`;
    }
  });
}

function renderOverview(body, o) {
  const depth = o.queues.reduce((s, q) => s + q.ready, 0);
  const running = o.queues.reduce((s, q) => s + q.running, 0);
  const oldest = o.queues.reduce((m, q) => Math.max(m, q.oldestReadySecs), 0);
  const openBreakers = o.breakers.filter((b) => b.state !== 'closed');
  replace(body,
    h('div', { class: 'stats' },
      stat('Completed / s (1 h)', o.completedPerSec.toFixed(2), 'stat-completed'),
      stat('Failed / s (1 h)', o.failedPerSec.toFixed(2), 'stat-failed'),
      stat('Queued (due)', num(depth), 'stat-depth'),
      stat('Running', num(running), 'stat-running'),
      stat('Oldest queued', age(oldest), 'stat-oldest'),
      stat('Outbox pending', num(o.outbox.pending), 'stat-outbox'),
      stat('Outbox lag', age(o.outbox.lagSecs), 'stat-lag'),
      stat('Dead events', num(o.outbox.dead), 'stat-dead-events'),
      stat('Workers alive', `${o.workers.alive} (${o.workers.running}/${o.workers.slots} slots)`, 'stat-workers'),
      stat(o.socketsScope === 'fleet' ? 'Sockets open (all instances)' : 'Sockets open (this instance)', num(o.socketsOpen), 'stat-sockets'),
      stat('Breakers open', openBreakers.length ? openBreakers.map((b) => b.name).join(', ') : 'none', 'stat-breakers')),
    h('h3', {}, 'Jobs per minute, last hour'),
    throughputChart(o),
    throughputTable(o),
    h('h3', {}, 'Queues'),
    queueTable(o.queues, null),
    h('h3', {}, 'Circuit breakers'),
    table('Circuit breakers', ['Name', 'State'],
      o.breakers.map((b) => h('tr', {}, h('td', {}, b.name), h('td', {}, badge(b.state))))));
}

function throughputChart(o) {
  const since = new Date(o.since).getTime();
  const minutes = 60;
  const done = new Array(minutes).fill(0);
  const failed = new Array(minutes).fill(0);
  for (const p of o.throughput) {
    const i = Math.floor((new Date(p.minute).getTime() - since) / 60000);
    if (i >= 0 && i < minutes) {
      done[i] += p.completed;
      failed[i] += (p.failed || 0) + p.dead;
    }
  }
  const max = Math.max(1, ...done.map((d, i) => d + failed[i]));
  const W = 600;
  const H = 160;
  const bw = W / minutes;
  const bars = [];
  for (let i = 0; i < minutes; i++) {
    const hd = (done[i] / max) * (H - 20);
    const hf = (failed[i] / max) * (H - 20);
    const label = `${new Date(since + i * 60000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}: ${done[i]} completed, ${failed[i]} failed`;
    bars.push(svg('g', {},
      svg('title', {}, label),
      svg('rect', { x: i * bw + 1, y: H - hd, width: bw - 2, height: hd, class: 'bar-done' }),
      svg('rect', { x: i * bw + 1, y: H - hd - hf, width: bw - 2, height: hf, class: 'bar-failed' })));
  }
  const total = done.reduce((a, b) => a + b, 0);
  const totalFailed = failed.reduce((a, b) => a + b, 0);
  return h('figure', { class: 'chart' },
    svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Jobs per minute over the last hour: ${total} completed, ${totalFailed} failed; peak ${max} in a minute` },
      svg('line', { x1: 0, y1: H, x2: W, y2: H, class: 'axis' }),
      ...bars),
    h('figcaption', {},
      h('span', { class: 'key key-done' }, 'completed'), ' ',
      h('span', { class: 'key key-failed' }, 'failed'),
      ` · peak ${num(max)} jobs in a minute`));
}

function throughputTable(o) {
  const by = new Map();
  for (const p of o.throughput) {
    const k = `${p.kind}\u0000${p.queue}`;
    const e = by.get(k) || { kind: p.kind, queue: p.queue, completed: 0, failed: null, dead: 0 };
    e.completed += p.completed;
    if (p.failed !== null && p.failed !== undefined) e.failed = (e.failed || 0) + p.failed;
    e.dead += p.dead;
    by.set(k, e);
  }
  const rows = [...by.values()].sort((a, b) => b.completed + b.dead - a.completed - a.dead);
  if (!rows.length) return h('p', { class: 'muted' }, 'No job finished in the last hour.');
  return table('Jobs finished in the last hour per kind and queue',
    ['Kind', 'Queue', 'Completed', 'Completed / s', 'Failed attempts (retried)', 'Dead', 'Failed / s'],
    rows.map((r) => h('tr', {},
      h('td', {}, r.kind), h('td', {}, r.queue),
      h('td', { class: 'n' }, num(r.completed)), h('td', { class: 'n' }, (r.completed / 3600).toFixed(3)),
      h('td', { class: 'n' }, r.failed === null ? '—' : num(r.failed)),
      h('td', { class: 'n' }, num(r.dead)),
      h('td', { class: 'n' }, (((r.failed || 0) + r.dead) / 3600).toFixed(3)))));
}

// ---- jobs -----------------------------------------------------------------------------

function jobsPage(section, ctx) {
  if (ctx.parts[1]) return jobDetailPage(section, ctx.parts[1]);
  const params = ctx.params;
  const filter = {
    state: params.get('state') || '',
    kind: params.get('kind') || '',
    queue: params.get('queue') || '',
    q: params.get('q') || '',
  };
  const stateSel = h('select', { id: 'f-state', name: 'state' },
    h('option', { value: '' }, 'any'),
    STATES.map((s) => h('option', { value: s, selected: s === filter.state }, s)));
  const kind = h('input', { id: 'f-kind', name: 'kind', value: filter.kind, placeholder: 'e.g. sales_report' });
  const queue = h('input', { id: 'f-queue', name: 'queue', value: filter.queue, placeholder: 'e.g. default' });
  const q = h('input', { id: 'f-q', name: 'q', type: 'search', value: filter.q, placeholder: 'text in the payload' });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
    h('label', { for: 'f-state' }, 'State'), stateSel,
    h('label', { for: 'f-kind' }, 'Kind'), kind,
    h('label', { for: 'f-queue' }, 'Queue'), queue,
    h('label', { for: 'f-q' }, 'Search'), q,
    h('button', { type: 'submit', class: 'primary' }, 'Apply'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (stateSel.value) p.set('state', stateSel.value);
    for (const [k, el] of [['kind', kind], ['queue', queue], ['q', q]]) {
      if (el.value.trim()) p.set(k, el.value.trim());
    }
    location.hash = `#/jobs${p.toString() ? `?${p}` : ''}`;
  });

  const status = h('p', { class: 'muted', 'aria-live': 'polite', id: 'jobs-status' });
  const error = h('p', { class: 'error', role: 'alert' });
  const tbody = h('tbody', {});
  const selectAll = h('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select every job shown' });
  const more = h('button', { type: 'button', id: 'load-more', hidden: true }, 'Load more');
  const selected = new Set();
  let next = null;
  let shown = 0;

  const selCount = h('span', { id: 'selected-count' }, '0 selected');
  const bulkButtons = ['retry', 'cancel', 'delete'].map((action) =>
    h('button', { type: 'button', id: `bulk-${action}-selected`, disabled: true, onclick: () => confirmBulk(action, { ids: [...selected] }) },
      `${action[0].toUpperCase()}${action.slice(1)} selected`));
  const matchButtons = ['retry', 'cancel', 'delete'].map((action) =>
    h('button', { type: 'button', id: `bulk-${action}-matching`, class: 'secondary', onclick: () => confirmBulk(action, { filter: apiFilter() }) },
      `${action[0].toUpperCase()}${action.slice(1)} all matching…`));
  const refreshSelection = () => {
    selCount.textContent = `${selected.size} selected`;
    for (const b of bulkButtons) b.disabled = selected.size === 0;
  };

  selectAll.addEventListener('change', () => {
    for (const box of tbody.querySelectorAll('input[type=checkbox]')) {
      box.checked = selectAll.checked;
      if (selectAll.checked) selected.add(box.value);
      else selected.delete(box.value);
    }
    refreshSelection();
  });

  function apiFilter() {
    const f = {};
    for (const [k, v] of Object.entries(filter)) if (v) f[k] = v;
    return f;
  }

  async function load() {
    more.disabled = true;
    const p = new URLSearchParams(apiFilter());
    p.set('limit', '50');
    if (next) p.set('before', next);
    try {
      const body = await api('GET', `/admin/console/jobs?${p}`);
      error.textContent = '';
      for (const j of body.data) tbody.appendChild(jobRow(j));
      shown += body.data.length;
      next = body.page.next;
      more.hidden = !next;
      more.textContent = body.page.windowExhausted ? 'Search older jobs' : 'Load more';
      status.textContent = body.page.windowExhausted
        ? `${num(shown)} jobs shown; older jobs not searched yet.`
        : `${num(shown)} jobs shown${next ? '' : ' (end of list)'}.`;
    } catch (e) {
      error.textContent = `Could not load jobs: ${errorText(e)}`;
    }
    more.disabled = false;
  }
  more.addEventListener('click', load);

  function jobRow(j) {
    const box = h('input', { type: 'checkbox', value: j.id, 'aria-label': `Select job ${j.id}` });
    box.addEventListener('change', () => {
      if (box.checked) selected.add(j.id);
      else selected.delete(j.id);
      refreshSelection();
    });
    return h('tr', { dataset: { id: j.id, state: j.state } },
      h('td', {}, box),
      h('td', {}, h('a', { href: `#/jobs/${j.id}`, class: 'mono' }, j.id.slice(0, 8) + '…')),
      h('td', {}, j.kind), h('td', {}, j.queue), h('td', {}, badge(j.state)),
      h('td', { class: 'n' }, `${j.attempt}/${j.maxAttempts}`),
      h('td', {}, when(j.createdAt)), h('td', {}, when(j.finishedAt)),
      h('td', { class: 'err' }, j.lastError || ''));
  }

  const dialog = bulkDialog(() => {
    selected.clear();
    refreshSelection();
    replace(tbody);
    next = null;
    shown = 0;
    selectAll.checked = false;
    load();
  });

  async function confirmBulk(action, target) {
    let count;
    if (target.ids) {
      count = { count: target.ids.length, exact: true };
    } else {
      try {
        const p = new URLSearchParams(target.filter);
        count = (await api('GET', `/admin/console/jobs/count?${p}`)).data;
      } catch (e) {
        error.textContent = `Could not count the matching jobs: ${errorText(e)}`;
        return;
      }
    }
    dialog.ask(action, target, count);
  }

  replace(section,
    h('h2', { id: 'page-title' }, 'Jobs'),
    form,
    h('div', { class: 'bulk-bar', role: 'group', 'aria-label': 'Bulk actions' }, selCount, bulkButtons, matchButtons),
    error, status,
    h('div', { class: 'table-wrap' },
      h('table', { id: 'jobs-table' },
        h('caption', { class: 'visually-hidden' }, 'Jobs, newest first'),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, selectAll),
          ['Id', 'Kind', 'Queue', 'State', 'Attempts', 'Created', 'Finished', 'Last error'].map((c) => h('th', { scope: 'col' }, c)))),
        tbody)),
    more, dialog.el);
  load();
  return null;
}

/** The confirmation dialog of a bulk action: shows the count, then runs batch after batch. */
function bulkDialog(onDone) {
  const title = h('h3', { id: 'bulk-title' });
  const text = h('p', { id: 'bulk-text' });
  const progress = h('p', { id: 'bulk-progress', 'aria-live': 'polite' });
  const confirm = h('button', { type: 'button', class: 'primary', id: 'bulk-confirm' }, 'Confirm');
  const cancel = h('button', { type: 'button', id: 'bulk-cancel' }, 'Close');
  const el = h('dialog', { id: 'bulk-dialog', 'aria-labelledby': 'bulk-title' },
    title, text, progress, h('div', { class: 'dialog-buttons' }, confirm, cancel));
  let pending = null;
  let changed = false;
  cancel.addEventListener('click', () => {
    el.close();
    if (changed) onDone();
  });
  confirm.addEventListener('click', async () => {
    if (!pending) return;
    const { action, target } = pending;
    pending = null;
    confirm.disabled = true;
    let affected = 0;
    let examined = 0;
    let before = null;
    try {
      for (;;) {
        const body = target.ids
          ? { action, ids: target.ids }
          : { action, filter: target.filter, ...(before ? { before } : {}) };
        const { data } = await api('POST', '/admin/console/jobs/bulk', body);
        affected += data.affected;
        examined += data.examined;
        changed = true;
        progress.textContent = `${num(affected)} of ${num(examined)} examined jobs changed…`;
        if (data.done) break;
        before = data.next;
      }
      progress.textContent = `Done: ${num(affected)} jobs changed (${num(examined - affected)} were not in a state to ${action}).`;
    } catch (e) {
      progress.textContent = `Stopped: ${errorText(e)} (${num(affected)} changed before).`;
    }
    cancel.textContent = 'Close';
    cancel.focus();
  });
  return {
    el,
    ask(action, target, count) {
      pending = { action, target };
      changed = false;
      confirm.disabled = false;
      cancel.textContent = 'Cancel';
      progress.textContent = '';
      const n = count.exact ? num(count.count) : `more than ${num(count.count)}`;
      const what = target.ids ? 'selected' : 'matching';
      title.textContent = `${action[0].toUpperCase()}${action.slice(1)} ${n} ${what} jobs?`;
      text.textContent = {
        retry: 'Dead jobs go back to their queue with fresh attempts; other jobs are left alone.',
        cancel: 'Queued jobs are cancelled; running ones are asked to stop; finished ones are left alone.',
        delete: 'Finished jobs (completed, cancelled, dead) are deleted for good; queued and running ones are left alone.',
      }[action];
      confirm.textContent = `${action[0].toUpperCase()}${action.slice(1)} ${n} jobs`;
      el.showModal();
      confirm.focus();
    },
  };
}

function jobDetailPage(section, id) {
  const body = h('div', { 'aria-live': 'polite' });
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section,
    h('p', {}, h('a', { href: '#/jobs' }, '← Jobs')),
    h('h2', { id: 'page-title' }, 'Job ', h('span', { class: 'mono' }, id)),
    error, body);
  const act = async (action) => {
    try {
      const { data } = await api('POST', '/admin/console/jobs/bulk', { action, ids: [id] });
      error.textContent = data.affected ? '' : `Nothing to ${action}: the job is not in a state for it.`;
      if (action === 'delete' && data.affected) location.hash = '#/jobs';
    } catch (e) {
      error.textContent = `Could not ${action}: ${errorText(e)}`;
    }
  };
  return every(async () => {
    let j;
    try {
      j = (await api('GET', `/admin/console/jobs/${encodeURIComponent(id)}`)).data;
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 404 ? 'No such job.' : `Could not load the job: ${errorText(e)}`;
      return;
    }
    const dl = (pairs) => h('dl', { class: 'fields' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    replace(body,
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => act('retry'), disabled: j.state !== 'dead' }, 'Retry'),
        h('button', { type: 'button', onclick: () => act('cancel'), disabled: !['queued', 'running'].includes(j.state) }, 'Cancel'),
        h('button', { type: 'button', onclick: () => act('delete'), disabled: !['completed', 'cancelled', 'dead'].includes(j.state) }, 'Delete'),
        j.hasResultFile || (j.state === 'completed' && j.result)
          ? h('a', { class: 'button', href: `/jobs/${encodeURIComponent(j.id)}/result`, download: '' }, 'Download result')
          : null),
      dl([
        ['State', badge(j.state)],
        ['Kind', j.kind],
        ['Queue', j.queue],
        ['Priority', j.priority],
        ['Attempts', `${j.attempt} of ${j.maxAttempts}`],
        ['Progress', h('span', {}, h('progress', { max: 100, value: j.progress, 'aria-label': 'Progress' }), ` ${j.progress}% ${j.progressMessage || ''}`)],
        ['Created', when(j.createdAt)],
        ['Run at', when(j.runAt)],
        ['Started', when(j.startedAt)],
        ['Finished', when(j.finishedAt)],
        ['Worker', j.workerId || '—'],
        ['Lease until', when(j.leaseExpiresAt)],
        ['Unique key', j.uniqueKey || '—'],
        ['Campus', j.campusId || 'system'],
      ]),
      h('h3', {}, 'Last error'),
      h('pre', { class: 'code' }, j.lastError || 'none'),
      h('h3', {}, j.payloadTruncated ? 'Payload (first 16 KiB)' : 'Payload'),
      h('pre', { class: 'code', id: 'job-payload' }, typeof j.payload === 'string' ? j.payload : JSON.stringify(j.payload, null, 2)),
      h('h3', {}, 'Result'),
      h('pre', { class: 'code' }, j.result ? JSON.stringify(j.result, null, 2) : 'none'));
  });
}

// ---- queues, workers, cron ------------------------------------------------------------

function queueTable(queues, onToggle) {
  return table('Queues', ['Queue', 'State', 'Due', 'Scheduled', 'Running', 'Worker slots', 'Oldest due', ...(onToggle ? ['Action'] : [])],
    queues.map((q) => h('tr', { dataset: { queue: q.name } },
      h('td', {}, h('a', { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
      h('td', {}, badge(q.paused ? 'paused' : 'active')),
      h('td', { class: 'n' }, num(q.ready)),
      h('td', { class: 'n' }, num(q.scheduled)),
      h('td', { class: 'n' }, num(q.running)),
      h('td', { class: 'n' }, num(q.workerSlots)),
      h('td', {}, age(q.oldestReadySecs)),
      onToggle
        ? h('td', {}, h('button', { type: 'button', onclick: () => onToggle(q) }, q.paused ? `Resume ${q.name}` : `Pause ${q.name}`))
        : null)));
}

function queuesPage(section, { user }) {
  const body = h('div', {});
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section, h('h2', { id: 'page-title' }, 'Queues'), error, body);
  const canToggle = user.role === 'platform_admin';
  let refresh;
  const toggle = async (q) => {
    try {
      await api('POST', `/admin/console/queues/${encodeURIComponent(q.name)}/${q.paused ? 'resume' : 'pause'}`);
      await refresh();
    } catch (e) {
      error.textContent = `Could not change ${q.name}: ${errorText(e)}`;
    }
  };
  refresh = async () => {
    try {
      const { data } = await api('GET', '/admin/console/queues');
      error.textContent = '';
      replace(body, data.length ? queueTable(data, canToggle ? toggle : null) : h('p', { class: 'muted' }, 'No queued or running jobs.'));
    } catch (e) {
      error.textContent = `Could not load queues: ${errorText(e)}`;
    }
  };
  return every(refresh);
}

function workersPage(section) {
  const body = h('div', {});
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section, h('h2', { id: 'page-title' }, 'Workers'), error, body);
  return every(async () => {
    try {
      const { data } = await api('GET', '/admin/workers');
      error.textContent = '';
      replace(body, data.length
        ? table('Live workers', ['Host', 'PID', 'Queues', 'Running', 'Slots', 'Started', 'Last heartbeat'],
          data.map((w) => h('tr', {},
            h('td', {}, w.host), h('td', { class: 'n' }, w.pid), h('td', {}, w.queues.join(', ')),
            h('td', { class: 'n' }, w.running), h('td', { class: 'n' }, w.concurrency),
            h('td', {}, when(w.startedAt)), h('td', {}, when(w.heartbeatAt)))))
        : h('p', { class: 'muted' }, 'No worker has sent a heartbeat in the last minute.'));
    } catch (e) {
      error.textContent = `Could not load workers: ${errorText(e)}`;
    }
  });
}

function cronPage(section) {
  const body = h('div', {});
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section, h('h2', { id: 'page-title' }, 'Cron schedules'), error, body);
  return every(async () => {
    try {
      const { data } = await api('GET', '/admin/console/cron');
      replace(body, table('Cron schedules', ['Name', 'Expression', 'Time zone', 'Kind', 'Next run', 'Last tick', 'Last job'],
        data.map((c) => h('tr', {},
          h('td', {}, c.name), h('td', { class: 'mono' }, c.expression), h('td', {}, c.timeZone),
          h('td', {}, c.kind), h('td', {}, when(c.nextRunAt)), h('td', {}, when(c.lastTickAt)),
          h('td', {}, c.lastJobId ? h('a', { href: `#/jobs/${c.lastJobId}` }, badge(c.lastJobState)) : 'not enqueued')))));
    } catch (e) {
      error.textContent = `Could not load schedules: ${errorText(e)}`;
    }
  });
}

// ---- outbox and audit (keyset pages) --------------------------------------------------

function keysetPage(section, { title, path, headers, row, empty, filters }) {
  const tbody = h('tbody', {});
  const error = h('p', { class: 'error', role: 'alert' });
  const more = h('button', { type: 'button', hidden: true }, 'Load more');
  let next = null;
  const load = async (reset) => {
    if (reset) {
      replace(tbody);
      next = null;
    }
    const p = new URLSearchParams(filters ? filters() : {});
    if (next) p.set('before', next);
    try {
      const body = await api('GET', `${path}?${p}`);
      error.textContent = '';
      for (const r of body.data) tbody.appendChild(row(r, () => load(true), error));
      if (reset && !body.data.length) tbody.appendChild(h('tr', {}, h('td', { colspan: headers.length }, empty)));
      next = body.page.next;
      more.hidden = !next;
    } catch (e) {
      error.textContent = `Could not load: ${errorText(e)}`;
    }
  };
  more.addEventListener('click', () => load(false));
  return {
    el: [error,
      h('div', { class: 'table-wrap' },
        h('table', {},
          h('caption', { class: 'visually-hidden' }, title),
          h('thead', {}, h('tr', {}, headers.map((c) => h('th', { scope: 'col' }, c)))),
          tbody)),
      more],
    load,
  };
}

function outboxPage(section) {
  const list = keysetPage(section, {
    title: 'Dead outbox events',
    path: '/admin/console/outbox',
    headers: ['Id', 'Event', 'Aggregate', 'Attempts', 'Last error', 'Dead since', ''],
    empty: 'No dead events.',
    row: (e, reload, error) => h('tr', { dataset: { id: e.id } },
      h('td', { class: 'n' }, e.id), h('td', {}, e.eventType),
      h('td', { class: 'mono' }, `${e.aggregateType} ${e.aggregateId.slice(0, 8)}… v${e.aggregateVersion}`),
      h('td', { class: 'n' }, e.attempts), h('td', { class: 'err' }, e.lastError || ''),
      h('td', {}, when(e.deadAt)),
      h('td', {}, h('button', {
        type: 'button',
        onclick: async () => {
          try {
            await api('POST', `/admin/outbox/${e.id}/retry`);
            reload();
          } catch (err) {
            error.textContent = `Could not retry event ${e.id}: ${errorText(err)}`;
          }
        },
      }, `Retry event ${e.id}`))),
  });
  replace(section, h('h2', { id: 'page-title' }, 'Dead outbox events'),
    h('p', { class: 'muted' }, 'Events every delivery attempt failed for. A retry resets the attempts; sinks that already took the event are not run again.'),
    list.el);
  list.load(true);
  return null;
}

function auditPage(section) {
  const action = h('input', { id: 'f-action', name: 'action', placeholder: 'e.g. jobs.bulk_retry' });
  const list = keysetPage(section, {
    title: 'Audit log',
    path: '/admin/console/audit',
    headers: ['When', 'Action', 'Target', 'Actor', 'Detail'],
    empty: 'No entries.',
    filters: () => (action.value.trim() ? { action: action.value.trim() } : {}),
    row: (a) => h('tr', {},
      h('td', {}, when(a.createdAt)), h('td', {}, a.action),
      h('td', {}, `${a.targetType} ${a.targetId}`), h('td', { class: 'mono' }, a.actorId ? a.actorId.slice(0, 8) + '…' : 'system'),
      h('td', { class: 'mono detail' }, JSON.stringify(a.detail))),
  });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log' },
    h('label', { for: 'f-action' }, 'Action'), action,
    h('button', { type: 'submit', class: 'primary' }, 'Apply'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    list.load(true);
  });
  replace(section, h('h2', { id: 'page-title' }, 'Audit log'), form, list.el);
  list.load(true);
  return null;
}

// ---- flows ---------------------------------------------------------------------------

function flowsPage(section, ctx) {
  if (ctx.parts[1] === 'runs' && ctx.parts[2]) return flowRunPage(section, ctx.parts[2]);
  const flowsBody = h('div', {});
  const runsBody = h('div', {});
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section, h('h2', { id: 'page-title' }, 'Flows'), error,
    h('h3', {}, 'Definitions'), flowsBody, h('h3', {}, 'Latest runs'), runsBody);
  return every(async () => {
    let flows;
    let runs;
    try {
      flows = await api('GET', '/flows?limit=100');
      const flow = ctx.params.get('flow');
      runs = await api('GET', `/flow-runs?limit=50${flow ? `&flow=${encodeURIComponent(flow)}` : ''}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        replace(flowsBody, h('p', { class: 'muted' }, 'Flows are not available on this server.'));
        return;
      }
      error.textContent = `Could not load flows: ${errorText(e)}`;
      return;
    }
    error.textContent = '';
    replace(flowsBody, flows.data.length
      ? table('Flow definitions', ['Name', 'Version', 'Steps', 'Schedules', 'Updated'],
        flows.data.map((f) => h('tr', {},
          h('td', {}, h('a', { href: `#/flows?flow=${f.id}` }, f.name)), h('td', { class: 'n' }, f.version),
          h('td', {}, ((f.definition && f.definition.steps) || []).map((st) => st.id).join(' → ')),
          h('td', {}, ((f.definition && f.definition.schedules) || []).map((sc) => sc.cron).join(', ') || '—'),
          h('td', {}, when(f.updatedAt)))))
      : h('p', { class: 'muted' }, 'No flow defined.'));
    replace(runsBody, runs.data.length
      ? table('Latest flow runs', ['Run', 'Flow', 'Status', 'Trigger', 'Steps left', 'Failed steps', 'Started', 'Finished'],
        runs.data.map((r) => h('tr', { dataset: { id: r.id } },
          h('td', {}, h('a', { href: `#/flows/runs/${r.id}`, class: 'mono' }, `${r.id.slice(0, 8)}…`)),
          h('td', {}, `${r.flowName} v${r.version}`), h('td', {}, badge(r.status)), h('td', {}, r.trigger),
          h('td', { class: 'n' }, r.stepsRemaining), h('td', { class: 'n' }, r.stepsFailed),
          h('td', {}, when(r.createdAt)), h('td', {}, when(r.finishedAt)))))
      : h('p', { class: 'muted' }, 'No run yet.'));
  });
}

/** Columns of a DAG: each step one column right of its deepest dependency. */
function layers(steps) {
  const byId = new Map(steps.map((st) => [st.id, st]));
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const st = byId.get(id);
    const d = st && st.dependsOn.length ? 1 + Math.max(...st.dependsOn.map((p) => visit(p, seen))) : 0;
    depth.set(id, d);
    return d;
  };
  steps.forEach((st) => visit(st.id));
  const cols = [];
  for (const st of steps) {
    const d = depth.get(st.id);
    (cols[d] = cols[d] || []).push(st);
  }
  return cols;
}

function dag(run) {
  const steps = run.steps || [];
  const cols = layers(steps);
  const W = 180;
  const H = 56;
  const GX = 60;
  const GY = 24;
  const pos = new Map();
  cols.forEach((col, x) => col.forEach((st, y) => pos.set(st.id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + cols.length * (W + GX) - GX;
  const height = 20 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY;
  const edges = [];
  for (const st of steps) {
    const to = pos.get(st.id);
    for (const dep of st.dependsOn) {
      const from = pos.get(dep);
      if (!from) continue;
      const x1 = from.x + W;
      const y1 = from.y + H / 2;
      const x2 = to.x;
      const y2 = to.y + H / 2;
      edges.push(svg('path', { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, class: 'edge', 'marker-end': 'url(#arrow)' }));
    }
  }
  const nodes = steps.map((st) => {
    const p = pos.get(st.id);
    const fan = st.itemsTotal !== null && st.itemsTotal !== undefined ? ` ${st.itemsTotal - (st.itemsRemaining || 0)}/${st.itemsTotal}` : '';
    return svg('g', { class: `node step-${st.status}`, transform: `translate(${p.x},${p.y})`, 'data-step': st.id },
      svg('title', {}, `${st.id} (${st.node}): ${st.status}${st.error ? ` — ${st.error}` : ''}`),
      svg('rect', { width: W, height: H, rx: 8 }),
      svg('text', { x: 10, y: 22, class: 'node-name' }, st.id),
      svg('text', { x: 10, y: 42, class: 'node-status' }, `${st.node} · ${st.status}${fan}`));
  });
  const summary = steps.map((st) => `${st.id}: ${st.status}`).join(', ');
  return h('figure', { class: 'chart dag' },
    svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `Steps of run ${run.id}: ${summary}`, id: 'run-dag' },
      svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: 'auto-start-reverse' },
        svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }))),
      ...edges, ...nodes),
    h('figcaption', {}, 'Steps left to right in dependency order; colours follow each step\'s state, live.'));
}

function flowRunPage(section, id) {
  const body = h('div', {});
  const live = h('p', { class: 'conn', id: 'run-live', 'data-state': 'connecting' }, 'connecting…');
  const error = h('p', { class: 'error', role: 'alert' });
  replace(section,
    h('p', {}, h('a', { href: '#/flows' }, '← Flows')),
    h('h2', { id: 'page-title' }, 'Flow run ', h('span', { class: 'mono' }, id)),
    live, error, body);
  let stopped = false;
  let ws = null;
  let loading = false;
  let again = false;
  const load = async () => {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    try {
      const { data: run } = await api('GET', `/flow-runs/${encodeURIComponent(id)}`);
      error.textContent = '';
      replace(body,
        h('dl', { class: 'fields' },
          h('dt', {}, 'Flow'), h('dd', {}, `${run.flowName} v${run.version}`),
          h('dt', {}, 'Status'), h('dd', { id: 'run-status' }, badge(run.status)),
          h('dt', {}, 'Trigger'), h('dd', {}, run.trigger),
          h('dt', {}, 'Started'), h('dd', {}, when(run.createdAt)),
          h('dt', {}, 'Finished'), h('dd', {}, when(run.finishedAt))),
        h('h3', {}, 'Steps'),
        dag(run),
        table('Steps of the run', ['Step', 'Node', 'Status', 'Attempts', 'Job', 'Error'],
          (run.steps || []).map((st) => h('tr', { dataset: { step: st.id, status: st.status } },
            h('td', {}, st.id), h('td', {}, st.node), h('td', {}, badge(st.status)),
            h('td', { class: 'n' }, st.attempts),
            h('td', {}, st.jobId ? h('a', { href: `#/jobs/${st.jobId}`, class: 'mono' }, `${st.jobId.slice(0, 8)}…`) : '—'),
            h('td', { class: 'err' }, st.error || '')))));
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 404 ? 'No such run.' : `Could not load the run: ${errorText(e)}`;
    }
    loading = false;
    if (again) {
      again = false;
      load();
    }
  };
  const connect = () => {
    if (stopped) return;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(`${scheme}//${location.host}/ws?topics=flow-run:${encodeURIComponent(id)}`, ['itsur.v1']);
    ws.onopen = () => {
      live.dataset.state = 'live';
      live.textContent = 'live';
      load();
    };
    ws.onmessage = (m) => {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      // Any event of this run (a step or the run changed): reload its state.
      if (msg.type === 'event') load();
    };
    ws.onclose = () => {
      live.dataset.state = 'offline';
      live.textContent = 'reconnecting…';
      if (!stopped) setTimeout(connect, 2000);
    };
  };
  load();
  connect();
  return () => {
    stopped = true;
    if (ws) ws.close();
  };
}
