// Loadstar's dashboard: reads the admin API (the same JSON `loadstar get`
// reads) every two seconds and draws the view the location's hash names.
// Everything from the API goes into the page as text, never as markup.
'use strict';

const POLL_MS = 2000;
const HISTORY_S = 600;
const PHASES = ['scheduling', 'staging', 'launching', 'loading', 'routing'];
const EVENTS = ['queued', 'placed', 'staged', 'started', 'ready', 'routed'];

// --- the page's state --------------------------------------------------------
const state = {
  token: sessionStorage.getItem('loadstar-token') || '',
  history: {},      // service -> [{t, rps, ready, desired}]
  queueHistory: {}, // queue -> [{t, allocated, fair}]
  timer: null,
};

// --- building elements (text only) -------------------------------------------
function h(tag, attrs, ...children) {
  const svg = ['svg', 'path', 'line', 'text', 'rect', 'polyline', 'g'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'width%') el.style.width = `${v}%`;
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const fmt = {
  num: (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? '–' : Number(v).toFixed(d)),
  s: (v) => (v === null || v === undefined ? '–' : v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`),
  age: (s) => (s < 90 ? `${Math.round(s)}s` : s < 5400 ? `${Math.round(s / 60)}m` : `${(s / 3600).toFixed(1)}h`),
  gpus: (milli) => `${(milli / 1000).toFixed(milli % 1000 ? 2 : 0)}`,
};
function table(headers, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, headers.map((c) => h('th', { class: c.startsWith('#') ? 'num' : '' }, c.replace(/^#/, ''))))),
    h('tbody', {}, rows));
}
function td(v, cls) { return h('td', { class: cls }, v); }
function num(v, d) { return td(fmt.num(v, d), 'num'); }

// --- the admin API -------------------------------------------------------------
class Unauthorized extends Error {}
async function api(path) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized();
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
async function items(path) { return (await api(path)).items; }

// --- charts --------------------------------------------------------------------
// A line chart of `series` ([{name, cls, points: [[t, v]]}]) over the last
// HISTORY_S seconds.
function chart(title, series, { width = 560, height = 130 } = {}) {
  const now = Date.now() / 1000;
  const max = Math.max(1e-9, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const x = (t) => 30 + ((t - (now - HISTORY_S)) / HISTORY_S) * (width - 40);
  const y = (v) => height - 18 - (v / max) * (height - 34);
  const colors = ['#2f6fde', '#1f9d55', '#c77700', '#8e5bd0', '#c62828'];
  return h('svg', { class: 'chart', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title },
    h('text', { x: 30, y: 12 }, title),
    h('text', { x: 2, y: y(max) + 4 }, fmt.num(max, max < 10 ? 1 : 0)),
    h('text', { x: 2, y: y(0) + 4 }, '0'),
    h('line', { x1: 30, x2: width - 10, y1: y(0), y2: y(0), stroke: '#d9dde3' }),
    series.map((s, i) => h('polyline', {
      fill: 'none', stroke: colors[i % colors.length], 'stroke-width': 1.6,
      points: s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
    })),
    series.map((s, i) => h('text', { x: 40 + i * 120, y: height - 4, fill: colors[i % colors.length] }, s.name)));
}
function remember(store, key, sample) {
  const list = (store[key] ||= []);
  list.push({ t: Date.now() / 1000, ...sample });
  while (list.length && list[0].t < Date.now() / 1000 - HISTORY_S) list.shift();
  return list;
}

// --- views -----------------------------------------------------------------------
async function overview() {
  const [services, replicas, nodes] = await Promise.all([
    items('/api/v1/services'), items('/api/v1/replicas'), items('/api/v1/nodes')]);
  const devices = nodes.flatMap((n) => n.devices);
  const booked = devices.reduce((a, d) => a + d.milli_used, 0);
  const rps = services.reduce((a, s) => a + s.traffic.requests_per_second, 0);
  const inFlight = (name) => replicas.filter((r) => r.service === name).reduce((a, r) => a + r.in_flight, 0);
  for (const s of services)
    remember(state.history, s.name, { rps: s.traffic.requests_per_second, ready: s.ready, desired: s.replicas });
  return [
    h('h1', {}, 'Overview'),
    h('div', { class: 'cards' },
      card(services.length, 'services'),
      card(`${replicas.filter((r) => r.state === 'Ready').length} / ${replicas.length}`, 'replicas ready', 'replicas-ready'),
      card(`${fmt.gpus(booked)} / ${devices.length}`, 'GPUs booked'),
      card(fmt.num(rps, 1), 'requests/s')),
    h('h2', {}, 'Services'),
    table(['service', 'model', '#ready / desired', '#requests/s', '#failed/s', '#TTFT p50', '#TTFT p90', '#ITL p50', '#in flight', 'rollout'],
      services.map((s) => h('tr', { 'data-service': s.name },
        td(h('a', { href: `#/service/${encodeURIComponent(s.name)}` }, s.name)),
        td(s.model),
        td(`${s.ready} / ${s.replicas}`, 'num'),
        num(s.traffic.requests_per_second, 2),
        num(s.traffic.failures_per_second, 2),
        td(fmt.s(s.traffic.ttft_p50_seconds), 'num'),
        td(fmt.s(s.traffic.ttft_p90_seconds), 'num'),
        td(fmt.s(s.traffic.itl_p50_seconds), 'num'),
        num(inFlight(s.name), 0),
        td(s.rollout.message || (s.rollout.revision ? `revision ${s.rollout.revision}` : ''), 'message')))),
    h('p', { class: 'muted' }, 'Rates and latencies over the last minute, as the gateways measured them.'),
  ];
}
function card(value, label, id) {
  return h('div', { class: 'card', id }, h('div', { class: 'value' }, value), h('div', { class: 'label' }, label));
}

function waterfall(r) {
  const t = r.timeline;
  const total = Math.max(1e-3, ...EVENTS.map((e) => t[e] ?? 0));
  const parts = [];
  for (let i = 1; i < EVENTS.length; i++) {
    const from = t[EVENTS[i - 1]], to = t[EVENTS[i]];
    if (from === null || from === undefined || to === null || to === undefined) continue;
    parts.push(h('div', {
      class: `phase phase-${PHASES[i - 1]}`, 'width%': ((to - from) / total) * 100,
      title: `${PHASES[i - 1]}: ${fmt.s(to - from)}`,
    }));
  }
  return h('div', { class: 'waterfall', title: `queued to ${t.routed !== null ? 'routed' : 'now'}: ${fmt.s(total)}` }, parts);
}

async function service(name) {
  const [services, replicas, events] = await Promise.all([
    items('/api/v1/services'), items('/api/v1/replicas'), items('/api/v1/events')]);
  const s = services.find((x) => x.name === name);
  if (!s) return [h('h1', {}, name), h('p', { class: 'error' }, `No service ${name}.`)];
  const mine = replicas.filter((r) => r.service === name);
  const hist = remember(state.history, name, { rps: s.traffic.requests_per_second, ready: s.ready, desired: s.replicas });
  const scaling = events.filter((e) => e.name === name && /^Scaled/.test(e.reason));
  const t = s.traffic;
  return [
    h('h1', {}, `Service ${s.name}`),
    h('div', { class: 'cards' },
      card(`${s.ready} / ${s.replicas}`, 'ready / desired', 'service-ready'),
      card(fmt.num(t.requests_per_second, 2), 'requests/s'),
      card(fmt.num(t.failures_per_second, 2), 'failed attempts/s'),
      card(fmt.s(t.ttft_p90_seconds), 'TTFT p90'),
      card(fmt.s(t.itl_p90_seconds), 'ITL p90')),
    h('p', { class: 'muted' }, `model ${s.model}; autoscaler: ${s.scale_reason || 'no decision yet'}`),
    h('div', { class: 'cards' },
      chart('requests/s', [{ name: 'requests/s', points: hist.map((p) => [p.t, p.rps]) }]),
      chart('replicas', [{ name: 'ready', points: hist.map((p) => [p.t, p.ready]) },
                         { name: 'desired', points: hist.map((p) => [p.t, p.desired]) }])),
    h('h2', {}, 'Replicas'),
    h('div', { class: 'legend' }, PHASES.map((p) => h('span', {}, h('i', { class: `phase-${p}` }), p))),
    table(['replica', 'state', 'node', 'devices', 'revision', '#restarts', '#in flight', '#cold start', 'queued → routed', 'message'],
      mine.map((r) => h('tr', { 'data-replica': r.name },
        td(r.name), td(r.state, `state-${r.state}`), td(r.node), td(r.devices), num(r.revision, 0),
        num(r.restarts, 0), num(r.in_flight, 0), td(fmt.s(r.start_seconds), 'num'), td(waterfall(r)),
        td(r.message, 'message')))),
    h('h2', {}, 'Revisions'),
    h('p', {}, s.rollout.message || ''),
    table(['#revision', 'hash', 'engine', '#replicas', '#ready', 'current', '#requests/s', '#failed/s', '#TTFT p90', '#ITL p90'],
      s.rollout.revisions.map((v) => h('tr', { 'data-revision': v.revision },
        num(v.revision, 0), td(v.hash), td(v.engine), num(v.replicas, 0), num(v.ready, 0), td(v.current ? 'yes' : ''),
        num(v.traffic.requests_per_second, 2), num(v.traffic.failures_per_second, 2),
        td(fmt.s(v.traffic.ttft_p90_seconds), 'num'), td(fmt.s(v.traffic.itl_p90_seconds), 'num')))),
    h('h2', {}, 'Scaling decisions'),
    scaling.length ? table(['time', 'decision', '#count', 'reason'],
      scaling.slice().reverse().map((e) => h('tr', {},
        td(new Date(e.time).toLocaleTimeString()), td(e.reason), num(e.count, 0), td(e.message, 'message'))))
      : h('p', { class: 'muted' }, 'None yet.'),
    h('h2', {}, 'Events'),
    eventTable(events.filter((e) => e.name === name)),
  ];
}

function eventTable(events) {
  if (!events.length) return h('p', { class: 'muted' }, 'None.');
  return table(['time', 'object', 'type', 'reason', '#count', 'message'],
    events.slice().reverse().map((e) => h('tr', {},
      td(new Date(e.time).toLocaleString()), td(`${e.kind}/${e.name}`), td(e.type, e.type),
      td(e.reason), num(e.count, 0), td(e.message, 'message'))));
}

async function gpus() {
  const nodes = await items('/api/v1/nodes');
  const devices = nodes.flatMap((n) => n.devices);
  const free = devices.reduce((a, d) => a + (1000 - d.milli_used), 0);
  // Free capacity on cards that are partly booked: no whole-card request can use it.
  const stranded = devices.filter((d) => d.milli_used > 0 && d.milli_used < 1000)
    .reduce((a, d) => a + (1000 - d.milli_used), 0);
  return [
    h('h1', {}, 'GPUs'),
    h('div', { class: 'cards' },
      card(`${fmt.gpus(devices.length * 1000 - free)} / ${devices.length}`, 'GPUs booked'),
      card(fmt.gpus(free), 'GPUs free'),
      card(free ? `${Math.round((stranded / free) * 100)}%` : '–', 'of free capacity on partly booked cards', 'fragmentation')),
    nodes.map((n) => h('div', { class: 'node', 'data-node': n.name },
      h('strong', {}, n.name), n.schedulable ? '' : h('span', { class: 'error' }, ' (unschedulable)'),
      h('span', { class: 'muted' }, ' ', Object.entries(n.topology).map(([k, v]) => `${k}=${v}`).join(' ')),
      h('div', {}, h('span', { class: 'muted' }, 'weights held: '),
        n.models.length ? n.models.map((m) => h('span', { class: 'pill' }, m)) : h('span', { class: 'muted' }, 'none')),
      h('div', { class: 'devices' }, n.devices.map((d) => h('div', { class: 'gpu', 'data-device': `gpu${d.index}` },
        h('div', {}, h('strong', {}, `gpu${d.index}`), ' ', d.model || '', d.memory_mib ? ` ${Math.round(d.memory_mib / 1024)} GiB` : '',
          d.mig_slices ? ` MIG ${d.mig_used}/${d.mig_slices}` : ''),
        h('div', { class: 'bar' }, d.holders.map((x) => h('div', {
          class: `share${/-worker-/.test(x.name) ? ' job' : ''}${/stopping/.test(x.name) ? ' stopping' : ''}`,
          'width%': x.mig_slices && d.mig_slices ? (x.mig_slices / d.mig_slices) * 100 : x.milli / 10,
          'data-holder': x.name, title: `${x.name}: ${x.mig_slices ? `${x.mig_slices}g` : fmt.gpus(x.milli)}`,
        }, x.name))),
        h('div', { class: 'muted' }, `${fmt.gpus(d.milli_used)} booked`)))))),
  ];
}

async function queues() {
  const list = await items('/api/v1/queues');
  for (const q of list) remember(state.queueHistory, q.name, { allocated: q.allocated.gpu, fair: q.fair_share.gpu });
  const scale = Math.max(1, ...list.flatMap((q) => [q.allocated.gpu, q.deserved.gpu, q.fair_share.gpu]));
  const bar = (cls, v) => h('div', { class: 'hbar', title: `${cls}: ${fmt.num(v, 2)}` }, h('div', { class: cls, 'width%': (v / scale) * 100 }));
  return [
    h('h1', {}, 'Queues'),
    h('div', { class: 'legend' }, h('span', {}, h('i', { class: 'allocated hbar' }), 'allocated'),
      h('span', {}, 'deserved (grey), fair share (green), in GPUs')),
    table(['queue', 'parent', 'use (allocated, deserved, fair share)', '#allocated', '#deserved', '#fair share', '#limit', '#running', '#pending', '#GPU-hours'],
      list.map((q) => h('tr', { 'data-queue': q.name },
        td(q.name), td(q.parent),
        td(h('div', { class: 'bars' }, bar('allocated', q.allocated.gpu), bar('deserved', q.deserved.gpu), bar('fair', q.fair_share.gpu))),
        num(q.allocated.gpu, 2), num(q.deserved.gpu, 2), num(q.fair_share.gpu, 2),
        td(q.limit ? fmt.num(q.limit.gpu, 2) : '–', 'num'), num(q.running, 0), num(q.pending, 0),
        num(q.gpu_seconds / 3600, 3)))),
    h('h2', {}, 'Allocated GPUs over time'),
    chart('allocated GPUs', list.map((q) => ({ name: q.name, points: (state.queueHistory[q.name] || []).map((p) => [p.t, p.allocated]) }))),
  ];
}

async function tenants() {
  const list = await items('/api/v1/tenants');
  return [
    h('h1', {}, 'Tenants'),
    table(['tenant', '#requests', '#prompt tokens', '#completion tokens', '#cost', '#requests/min limit', '#tokens/min limit', '#concurrency limit', '#priority', '#GPU-hours'],
      list.map((t) => h('tr', { 'data-tenant': t.name },
        td(t.name), num(t.requests, 0), num(t.prompt_tokens, 0), num(t.completion_tokens, 0), num(t.cost, 0),
        td(t.requests_per_minute ?? '–', 'num'), td(t.tokens_per_minute ?? '–', 'num'),
        td(t.max_concurrent_requests ?? '–', 'num'), num(t.priority, 0), num(t.gpu_seconds / 3600, 3)))),
    h('p', { class: 'muted' }, 'Usage over the ledger\'s hours (the last 35 days), as the gateways counted it; `loadstar usage` exports it per hour (CSV or JSON).'),
  ];
}

async function events() {
  return [h('h1', {}, 'Events'), eventTable(await items('/api/v1/events'))];
}

// --- routing and the poll loop --------------------------------------------------
function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const views = { '': overview, gpus, queues, tenants, events };
  if (parts[0] === 'service' && parts[1]) return ['overview', () => service(decodeURIComponent(parts[1]))];
  return [parts[0] || 'overview', views[parts[0]] || overview];
}

async function refresh() {
  clearTimeout(state.timer);
  const [name, view] = route();
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === name);
  const status = document.getElementById('status');
  try {
    const content = await view();
    document.getElementById('view').replaceChildren(...content.flat());
    document.getElementById('login').hidden = true;
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.classList.remove('bad');
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    if (e instanceof Unauthorized) {
      document.getElementById('login').hidden = false;
      document.getElementById('view').replaceChildren();
      status.textContent = 'sign in';
    } else {
      status.textContent = `cannot reach the admin API: ${e.message}`;
      status.classList.add('bad');
    }
  }
  state.timer = setTimeout(refresh, POLL_MS);
}

document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  state.token = document.getElementById('token').value.trim();
  try {
    await api('/api/v1/services');
    sessionStorage.setItem('loadstar-token', state.token);
    document.getElementById('login-error').textContent = '';
    refresh();
  } catch (e) {
    document.getElementById('login-error').textContent =
      e instanceof Unauthorized ? 'That token is not accepted.' : e.message;
  }
});
window.addEventListener('hashchange', refresh);
refresh();
