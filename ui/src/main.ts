/**
 * The Wuwei dashboard: overview (memory, throughput), models, settings and an event tail.
 * State comes from the admin API; the admin event stream says when it changed, and a slow
 * status refresh keeps the memory numbers current between events.
 */

import './style.css';
import { AdminApi, ApiError, type AdminEvent, type ModelInfo, type Settings, type Status } from './api';
import { applyCacheEvent, formatHitRate, isCacheEvent, ramDetail, ssdDetail } from './cache';
import { escapeHtml as h, formatBytes, formatClock, formatUptime, percent } from './format';
import { parsePrometheus, rates, type LiveRates, type MetricsSample } from './metrics';

type Page = 'overview' | 'models' | 'settings' | 'events';
const PAGES: Page[] = ['overview', 'models', 'settings', 'events'];
const STATUS_REFRESH_MS = 5000;
const METRICS_REFRESH_MS = 5000;
const EVENT_TAIL = 300;

interface State {
  status: Status | null;
  models: ModelInfo[];
  settings: Settings | null;
  events: AdminEvent[];
  rates: LiveRates | null;
  lastMetrics: MetricsSample | null;
  streamConnected: boolean;
  streamError: string | null;
  keyRequired: boolean;
  needKey: boolean;
  error: string | null;
  busy: Set<string>;
  /** The settings form has edits not yet saved: live refreshes leave it alone. */
  settingsDirty: boolean;
  /** `seq` of the last `cache_stats` event applied (0: none yet). */
  cacheStatsSeq: number;
}

const api = new AdminApi();
const state: State = {
  status: null,
  models: [],
  settings: null,
  events: [],
  rates: null,
  lastMetrics: null,
  streamConnected: false,
  streamError: null,
  keyRequired: false,
  needKey: false,
  error: null,
  busy: new Set(),
  settingsDirty: false,
  cacheStatsSeq: 0,
};
let streamAbort: AbortController | null = null;

function currentPage(): Page {
  const name = location.hash.replace(/^#\/?/, '') as Page;
  return PAGES.includes(name) ? name : 'overview';
}

// ---------------------------------------------------------------- data

async function guarded<T>(what: () => Promise<T>): Promise<T | undefined> {
  try {
    const value = await what();
    return value;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      state.needKey = true;
      render();
      return undefined;
    }
    state.error = e instanceof Error ? e.message : String(e);
    render();
    return undefined;
  }
}

async function refreshStatus() {
  const status = await guarded(() => api.status());
  if (status) {
    state.status = status;
    state.error = null;
    render();
  }
}

async function refreshModels() {
  const models = await guarded(() => api.models());
  if (models) {
    state.models = models;
    render();
  }
}

async function refreshSettings() {
  const settings = await guarded(() => api.settings());
  if (settings && !state.settingsDirty) {
    state.settings = settings;
    render();
  }
}

async function refreshMetrics() {
  try {
    const text = await api.metricsText();
    const sample: MetricsSample = { atMs: Date.now(), values: parsePrometheus(text) };
    state.rates = rates(state.lastMetrics, sample);
    state.lastMetrics = sample;
    render();
  } catch {
    // Metrics are a nicety; the rest of the page works without them.
  }
}

async function refreshAll() {
  await Promise.all([refreshStatus(), refreshModels(), refreshSettings()]);
}

let refreshTimer: number | undefined;
/** Many events arrive together (an eviction then a load): refresh once after them. */
function scheduleRefresh() {
  if (refreshTimer !== undefined) return;
  refreshTimer = window.setTimeout(() => {
    refreshTimer = undefined;
    void refreshAll();
  }, 150);
}

function onEvent(event: AdminEvent) {
  if (isCacheEvent(event)) state.status = applyCacheEvent(state.status, event);
  if (event.type === 'cache_stats') {
    // Numbers only, up to once a second: gauges move, the event tail and the rest stay.
    state.cacheStatsSeq = event.seq;
    render();
    return;
  }
  state.events.push(event);
  if (state.events.length > EVENT_TAIL) state.events.splice(0, state.events.length - EVENT_TAIL);
  if (event.type === 'model_evicted' || event.type === 'load_failed') toast(event);
  scheduleRefresh();
  render();
}

function startStream() {
  streamAbort?.abort();
  streamAbort = new AbortController();
  void api.streamEvents(
    onEvent,
    (connected, error) => {
      state.streamConnected = connected;
      state.streamError = connected ? null : (error ?? null);
      if (!connected && error?.startsWith('events: 401')) state.needKey = true;
      render();
    },
    streamAbort.signal,
  );
}

async function act(label: string, what: () => Promise<unknown>) {
  state.busy.add(label);
  render();
  try {
    await what();
    state.error = null;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) state.needKey = true;
    else state.error = e instanceof Error ? e.message : String(e);
  } finally {
    state.busy.delete(label);
    await refreshAll();
  }
}

// ---------------------------------------------------------------- views

function describeEvent(e: AdminEvent): string {
  const model = typeof e.model === 'string' ? e.model : '';
  switch (e.type) {
    case 'model_loaded':
      return `${model} loaded (${formatBytes(e.memory_bytes as number)}, ${e.weights_mode})`;
    case 'model_unloaded':
      return `${model} unloaded (${e.reason}), freed ${formatBytes(e.freed_bytes as number)}`;
    case 'model_evicted':
      return `${model} evicted (${String(e.reason).replace('_', ' ')}), freed ${formatBytes(e.freed_bytes as number)}`;
    case 'load_failed':
      return `${model} failed to load: ${e.error}`;
    case 'model_discovered':
      return e.incomplete ? `${model} found, incomplete: ${e.incomplete}` : `${model} found`;
    case 'model_removed':
      return `${model} removed`;
    case 'model_pinned':
      return `${model} pinned`;
    case 'model_unpinned':
      return `${model} unpinned`;
    case 'default_changed':
      return `default model is now ${model}`;
    case 'serving_changed':
      return e.serving ? 'serving started' : 'serving stopped';
    case 'settings_changed':
      return 'settings changed';
    case 'cache_toggled':
      return `SSD cache turned ${e.enabled ? 'on' : 'off'}`;
    case 'lagged':
      return `missed ${e.missed} events`;
    default:
      return JSON.stringify(e);
  }
}

function eventRows(events: AdminEvent[]): string {
  if (events.length === 0) return '<p class="muted">No events yet.</p>';
  return `<ul class="events" data-testid="event-list">${events
    .slice()
    .reverse()
    .map(
      (e) => `<li class="event event-${h(e.type)}" data-type="${h(e.type)}" data-model="${h(e.model ?? '')}"${
        e.reason ? ` data-reason="${h(e.reason)}"` : ''
      }>
        <time>${h(formatClock(e.time || Date.now()))}</time>
        <span class="tag">${h(e.type)}</span>
        <span>${h(describeEvent(e))}</span></li>`,
    )
    .join('')}</ul>`;
}

/** A bar: `used` of `total`, with an optional marker (the budget) and segments. */
function gauge(opts: {
  id: string;
  title: string;
  used: number;
  total: number;
  detail: string;
  marker?: { at: number; label: string };
  segments?: { bytes: number; cls: string; label: string }[];
  /** Header text instead of "used / total" bytes. */
  value?: string;
  /** Extra `data-*` attributes. */
  data?: Record<string, string | number>;
}): string {
  const segments = opts.segments ?? [{ bytes: opts.used, cls: 'fill', label: '' }];
  const bars = segments
    .map((s) => `<div class="seg ${s.cls}" style="width:${percent(s.bytes, opts.total)}%" title="${h(s.label)}"></div>`)
    .join('');
  const marker = opts.marker
    ? `<div class="marker" style="left:${percent(opts.marker.at, opts.total)}%" title="${h(opts.marker.label)}"></div>`
    : '';
  const data = Object.entries(opts.data ?? {})
    .map(([k, v]) => ` data-${h(k)}="${h(v)}"`)
    .join('');
  const value = opts.value ?? `${formatBytes(opts.used)} / ${formatBytes(opts.total)}`;
  return `<section class="gauge" data-testid="${h(opts.id)}" data-used="${opts.used}" data-total="${opts.total}"${data}>
    <header><h3>${h(opts.title)}</h3><span class="value">${h(value)}</span></header>
    <div class="bar">${bars}${marker}</div>
    <p class="detail">${opts.detail}</p>
  </section>`;
}

function overview(): string {
  const s = state.status;
  if (!s) return '<p class="muted">Waiting for the daemon…</p>';
  const m = s.memory;
  const kvLive = s.loaded.reduce((a, x) => a + x.kv_bytes, 0);
  const kvReserved = s.loaded.reduce((a, x) => a + x.kv_reserved_bytes, 0);
  const modelsBytes = s.loaded.reduce((a, x) => a + x.memory_bytes, 0);
  const ssd = s.ssd_cache;
  const r = state.rates;
  const running = s.loaded.reduce((a, x) => a + x.running, 0);
  const waiting = s.loaded.reduce((a, x) => a + x.waiting, 0);
  const ttft = r?.meanTtftSecs ?? r?.overallTtftSecs ?? null;
  const perModel = s.loaded.length
    ? s.loaded
        .map((x) =>
          gauge({
            id: `gauge-model-${x.id}`,
            title: `${x.id}${x.pinned ? ' · pinned' : ''}`,
            used: x.memory_bytes,
            total: m.budget_bytes,
            detail: `weights <b data-testid="model-weights" data-bytes="${x.weights_bytes}">${h(formatBytes(x.weights_bytes))}</b> (${h(x.weights_mode)}) · KV${x.kv_quantization ? ` <b data-testid="model-kv-format">${h(x.kv_quantization)}</b>` : ""} ${h(formatBytes(x.kv_bytes))} live, ${h(formatBytes(x.kv_reserved_bytes))} reserved · ${x.running} running, ${x.waiting} waiting`,
            segments: [
              { bytes: x.weights_bytes, cls: 'weights', label: 'weights' },
              { bytes: Math.max(0, x.memory_bytes - x.weights_bytes), cls: 'kv', label: 'KV cache' },
            ],
          }),
        )
        .join('')
    : '<p class="muted">No model loaded.</p>';
  return `
  <div class="cards">
    <section class="card" data-testid="throughput">
      <h3>Throughput</h3>
      <p class="big"><span data-testid="tokens-per-sec">${r ? r.generationTokensPerSec.toFixed(1) : '—'}</span> tok/s</p>
      <p class="detail">prompt ${r ? r.promptTokensPerSec.toFixed(1) : '—'} tok/s · ${running} running, ${waiting} waiting</p>
    </section>
    <section class="card" data-testid="ttft">
      <h3>Time to first token</h3>
      <p class="big">${ttft === null ? '—' : `${(ttft * 1000).toFixed(0)} ms`}</p>
      <p class="detail">${r?.meanTtftSecs != null ? 'last few seconds' : 'mean since start'}</p>
    </section>
    <section class="card" data-testid="serving-card">
      <h3>Serving</h3>
      <p class="big" data-testid="serving-state">${s.serving ? 'on' : 'stopped'}</p>
      <p class="detail">:${s.port} · up ${h(formatUptime(s.uptime_secs))} · v${h(s.version)}</p>
      <button data-action="serving" data-on="${s.serving ? '0' : '1'}">${s.serving ? 'Stop serving' : 'Start serving'}</button>
    </section>
  </div>
  <h2>Memory</h2>
  ${gauge({
    id: 'gauge-system',
    title: 'System memory',
    used: m.system.used_bytes,
    total: m.system.total_bytes,
    detail: `<span data-testid="system-available" data-bytes="${m.system.available_bytes}">${h(formatBytes(m.system.available_bytes))} available</span> · budget line at <span data-testid="budget" data-bytes="${m.budget_bytes}">${h(formatBytes(m.budget_bytes))}</span> · unload below ${h(formatBytes(m.pressure_threshold_bytes))} available`,
    marker: { at: m.budget_bytes, label: 'model budget' },
  })}
  ${gauge({
    id: 'gauge-budget',
    title: 'Models vs budget',
    used: m.counted_bytes,
    total: m.budget_bytes,
    detail: `${s.loaded.length} loaded, counted ${h(formatBytes(m.counted_bytes))} (weights + reserved KV) · in use ${h(formatBytes(modelsBytes))}`,
  })}
  ${gauge({
    id: 'gauge-kv',
    title: 'KV cache',
    used: kvLive,
    total: Math.max(kvReserved, kvLive),
    detail: `${h(formatBytes(kvLive))} live of ${h(formatBytes(kvReserved))} reserved · <span data-testid="ram-cache">${h(ramDetail(s))}</span> · MLX active ${h(formatBytes(m.mlx.active_bytes))}, cache ${h(formatBytes(m.mlx.cache_bytes))}, peak ${h(formatBytes(m.mlx.peak_bytes))}`,
  })}
  ${ssd.available ? ssdGauges(ssd) : `<section class="gauge unavailable" data-testid="gauge-ssd"><header><h3>SSD cache</h3><span class="value">not available</span></header><p class="detail">${h(ssdDetail(ssd))}</p></section>`}
  <h2>Loaded models</h2>
  ${perModel}
  <h2>Recent events</h2>
  ${eventRows(state.events.slice(-8))}`;
}

/** The SSD tier: space used of the cap, and the share of looked-up blocks served from disk. */
function ssdGauges(ssd: Status['ssd_cache']): string {
  const hits = ssd.hits ?? 0;
  const looked = hits + (ssd.misses ?? 0);
  const live = { enabled: ssd.enabled ? 1 : 0, 'stats-seq': state.cacheStatsSeq };
  return `${gauge({
    id: 'gauge-ssd',
    title: `SSD cache${ssd.enabled ? '' : ' · off'}`,
    used: ssd.bytes_used,
    total: ssd.cap_bytes,
    detail: `${h(ssdDetail(ssd))}${ssd.last_error ? ` · <span class="problem" data-testid="ssd-error">${h(ssd.last_error)}</span>` : ''}`,
    data: live,
  })}${gauge({
    id: 'gauge-ssd-hits',
    title: 'SSD hit rate',
    used: hits,
    total: looked,
    value: formatHitRate(ssd.hit_rate),
    detail: `${hits} of ${looked} blocks missing from RAM were read back from disk`,
    data: { 'hit-rate': ssd.hit_rate ?? '' },
  })}`;
}

function modelsPage(): string {
  const rows = state.models
    .map((m) => {
      const loaded = m.state === 'loaded';
      const busy = (a: string) => state.busy.has(`${a}:${m.id}`);
      const progress = m.state === 'loading' && m.progress !== undefined ? ` ${(m.progress * 100).toFixed(0)}%` : '';
      const broken = m.state === 'incomplete' || m.state === 'failed';
      return `<tr data-testid="model-row" data-model="${h(m.id)}" data-state="${h(m.state)}" data-pinned="${m.pinned}" data-default="${m.default}">
        <td><b>${h(m.id)}</b><div class="muted small">${h(m.path)}</div>${
          m.reason ? `<div class="problem" data-testid="model-problem">${h(m.reason)}</div>` : ''
        }</td>
        <td>${h(m.format)}${m.kind === 'embedding' ? '<div class="muted small" data-testid="model-kind">embedding</div>' : ''}</td>
        <td><span class="state state-${h(m.state)}">${h(m.state)}${progress}</span></td>
        <td>${h(formatBytes(m.size_bytes))}</td>
        <td>${h(formatBytes(m.estimated_memory_bytes))}</td>
        <td>${m.context_length ?? '—'}</td>
        <td class="actions">
          ${
            loaded
              ? `<button data-action="unload" data-model="${h(m.id)}" ${m.pinned || busy('unload') ? 'disabled' : ''} title="${m.pinned ? 'unpin first' : ''}">Unload</button>`
              : `<button data-action="load" data-model="${h(m.id)}" ${broken || busy('load') || m.state === 'loading' ? 'disabled' : ''}>Load</button>`
          }
          <button data-action="${m.pinned ? 'unpin' : 'pin'}" data-model="${h(m.id)}" ${broken || busy('pin') || busy('unpin') ? 'disabled' : ''}>${m.pinned ? 'Unpin' : 'Pin'}</button>
          <button data-action="default" data-model="${h(m.id)}" ${m.default || broken ? 'disabled' : ''}>${m.default ? 'Default' : 'Make default'}</button>
        </td></tr>`;
    })
    .join('');
  return `<div class="toolbar"><button data-action="rescan">Rescan folders</button></div>
  <table class="models"><thead><tr><th>Model</th><th>Format</th><th>State</th><th>On disk</th><th>Memory</th><th>Context</th><th></th></tr></thead>
  <tbody>${rows || '<tr><td colspan="7" class="muted">No models found in the models folders.</td></tr>'}</tbody></table>`;
}

function settingsPage(): string {
  const s = state.settings;
  const st = state.status;
  if (!s || !st) return '<p class="muted">Loading settings…</p>';
  const ssd = st.ssd_cache;
  return `<form id="settings-form" class="settings">
    <fieldset><legend>SSD cache</legend>
      <label><input type="checkbox" id="ssd-toggle" data-testid="ssd-toggle" ${ssd.enabled ? 'checked' : ''} ${ssd.available && !state.busy.has('ssd') ? '' : 'disabled'}>
        Keep KV cache on disk</label>
      ${
        ssd.available
          ? `<p class="muted" data-testid="ssd-dir">In ${h(ssd.dir ?? '')} · ${h(formatBytes(ssd.bytes_used))} of ${h(formatBytes(ssd.cap_bytes))} · hit rate ${h(formatHitRate(ssd.hit_rate))}. Off stops reads and writes at once; the daemon's config decides again at its next start.</p>${
              ssd.last_error ? `<p class="problem" data-testid="ssd-error">${h(ssd.last_error)}</p>` : ''
            }`
          : '<p class="muted" data-testid="ssd-unavailable">Not available: no cache folder, or prefix caching is off.</p>'
      }
    </fieldset>
    <fieldset><legend>Memory</legend>
      <label>Budget <input name="memory_budget" data-testid="budget-input" value="${h(s.memory_budget ?? '')}" placeholder="default (total − reserve)"></label>
      <p class="muted">Now ${h(formatBytes(s.budget_bytes))}. Bytes, <code>24GiB</code> or <code>75%</code>; empty for the default.</p>
      <label>Reserve <input name="memory_reserve" value="${h(s.memory_reserve)}"></label>
      <label>Pressure threshold <input name="memory_pressure_threshold" value="${h(s.memory_pressure_threshold)}"></label>
      <label>KV reserve tokens <input name="kv_reserve_tokens" type="number" min="0" value="${s.kv_reserve_tokens}"></label>
      <label>Idle TTL (s, &lt;0 never) <input name="idle_ttl_secs" type="number" value="${s.idle_ttl_secs}"></label>
    </fieldset>
    <div class="toolbar"><button type="submit" data-testid="settings-save">Save</button>${
      state.settingsDirty ? ' <span class="muted">unsaved changes</span>' : ''
    }</div>
    <fieldset><legend>Daemon</legend>
      <dl>
        <dt>Address</dt><dd data-testid="port">${h(st.host)}:${st.port}</dd>
        <dt>API key</dt><dd data-testid="api-key-presence">${state.keyRequired ? 'set (required for the API)' : 'not set'}</dd>
        <dt>Version</dt><dd>${h(st.version)}</dd>
      </dl>
      ${state.keyRequired ? '<button type="button" data-action="forget-key">Forget the key in this browser</button>' : ''}
    </fieldset>
  </form>`;
}

function eventsPage(): string {
  return `<p class="muted">${state.events.length} events (newest first).</p>${eventRows(state.events)}`;
}

function keyDialog(): string {
  return `<div class="modal"><form id="key-form" class="dialog">
    <h2>API key</h2>
    <p>This daemon needs its API key. It is kept in this browser only.</p>
    <input type="password" name="key" data-testid="key-input" autocomplete="current-password" autofocus>
    <button type="submit" data-testid="key-submit">Connect</button>
  </form></div>`;
}

let toastTimer: number | undefined;
function toast(event: AdminEvent) {
  const el = document.getElementById('toast');
  if (!el) return;
  el.textContent = describeEvent(event);
  el.className = 'toast show';
  el.dataset.type = event.type;
  window.clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => (el.className = 'toast'), 8000);
}

function render() {
  const page = currentPage();
  const root = document.getElementById('app')!;
  if (!root.dataset.ready) {
    root.dataset.ready = '1';
    root.innerHTML = `<nav><span class="brand">Wuwei</span>${PAGES.map(
      (p) => `<a href="#${p}" data-page="${p}">${p[0].toUpperCase()}${p.slice(1)}</a>`,
    ).join('')}<span id="conn" class="conn"></span></nav>
    <div id="banner"></div><main id="page"></main><div id="toast" class="toast" role="status"></div><div id="modal"></div>`;
  }
  for (const a of root.querySelectorAll<HTMLAnchorElement>('nav a')) a.classList.toggle('active', a.dataset.page === page);
  const conn = document.getElementById('conn')!;
  conn.textContent = state.streamConnected ? 'live' : 'offline';
  conn.className = `conn ${state.streamConnected ? 'on' : 'off'}`;
  conn.dataset.testid = 'stream-state';
  conn.title = state.streamError ?? '';
  document.getElementById('banner')!.innerHTML = state.error
    ? `<div class="error" data-testid="error">${h(state.error)}</div>`
    : '';
  document.getElementById('modal')!.innerHTML = state.needKey ? keyDialog() : '';
  const main = document.getElementById('page')!;
  main.dataset.page = page;
  // Do not rebuild a form the user is typing in.
  if (page === 'settings' && (state.settingsDirty || main.contains(document.activeElement))) return;
  const html = page === 'overview' ? overview() : page === 'models' ? modelsPage() : page === 'settings' ? settingsPage() : eventsPage();
  if (main.innerHTML !== html) main.innerHTML = html;
}

// ---------------------------------------------------------------- interaction

document.addEventListener('click', (e) => {
  const button = (e.target as Element).closest<HTMLButtonElement>('button[data-action]');
  if (!button) return;
  const action = button.dataset.action!;
  const model = button.dataset.model ?? '';
  if (action === 'serving') void act('serving', () => api.setServing(button.dataset.on === '1'));
  else if (action === 'rescan') void act('rescan', () => api.rescan());
  else if (action === 'forget-key') {
    api.setKey(null);
    state.needKey = true;
    render();
  } else if (['load', 'unload', 'pin', 'unpin', 'default'].includes(action))
    void act(`${action}:${model}`, () => api.modelAction(action as 'load', model));
});

document.addEventListener('change', (e) => {
  const target = e.target as HTMLInputElement;
  if (target.id === 'ssd-toggle') {
    target.blur();
    void act('ssd', () => api.setSsdCache(target.checked));
  }
});

document.addEventListener('input', (e) => {
  if ((e.target as Element).closest('#settings-form')) state.settingsDirty = true;
});

document.addEventListener('submit', (e) => {
  const form = e.target as HTMLFormElement;
  e.preventDefault();
  if (form.id === 'key-form') {
    api.setKey(new FormData(form).get('key') as string);
    state.needKey = false;
    state.keyRequired = true;
    render();
    startStream();
    void refreshAll();
  } else if (form.id === 'settings-form') {
    const data = new FormData(form);
    const budget = (data.get('memory_budget') as string).trim();
    const change: Partial<Settings> = {
      memory_budget: budget === '' ? 'default' : budget,
      memory_reserve: (data.get('memory_reserve') as string).trim(),
      memory_pressure_threshold: (data.get('memory_pressure_threshold') as string).trim(),
      kv_reserve_tokens: Number(data.get('kv_reserve_tokens')),
      idle_ttl_secs: Number(data.get('idle_ttl_secs')),
    };
    void act('settings', async () => {
      const saved = await api.updateSettings(change);
      state.settings = saved;
      state.settingsDirty = false;
      (document.activeElement as HTMLElement | null)?.blur();
    });
  }
});

window.addEventListener('hashchange', () => {
  state.settingsDirty = false;
  (document.activeElement as HTMLElement | null)?.blur();
  render();
});

async function start() {
  render();
  state.keyRequired = await api.keyRequired().catch(() => false);
  if (state.keyRequired && !api.key) state.needKey = true;
  render();
  if (state.needKey) return;
  startStream();
  await refreshAll();
  await refreshMetrics();
}

window.setInterval(() => {
  if (!state.needKey) void refreshStatus();
}, STATUS_REFRESH_MS);
window.setInterval(() => {
  if (!state.needKey) void refreshMetrics();
}, METRICS_REFRESH_MS);
// A model that is loading reports progress in /models: follow it at a modest pace.
window.setInterval(() => {
  if (!state.needKey && state.models.some((m) => m.state === 'loading' || m.state === 'unloading')) void refreshModels();
}, 1000);

void start();
