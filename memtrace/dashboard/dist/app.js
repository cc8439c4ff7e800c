// memtrace live dashboard. Plain browser JavaScript, no build step, no inline code (strict CSP:
// default-src 'self'; connect-src 'self'). Data: REST under /api/memory/, live updates from the
// WebSocket /api/memory/ws. Charting: Chart.js (vendor/chart.umd.min.js, from the npm lockfile).
(function () {
  'use strict';

  const API = '/api/memory';
  const HISTORY_COUNT = 120;
  const HISTORY_KEEP = 720;
  const TABLE_LIMIT = 200;
  const TOKEN_KEY = 'memtraceToken';
  const RESOLVED_SHOWN = 30;

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- state
  const state = {
    history: [],            // HostSnapshot[], oldest first
    patterns: new Map(),    // pid -> Pattern (from /processes and /analyze)
    status: null,
    selectedPid: null,
    userSelected: false,
    sort: { key: 'rssBytes', dir: -1 },
    filter: '',
    alertsActive: new Map(),   // id -> Alert
    alertsResolved: new Map(), // id -> Alert
    consumersPid: null,
    consumersAt: 0,
    ws: null,
    wsState: 'connecting',
    wsAttempt: 0,
    wsTimer: null,
  };

  // ---------------------------------------------------------------- formatting
  function fmtBytes(n) {
    if (n === null || n === undefined || !Number.isFinite(Number(n))) return '–';
    n = Number(n);
    const sign = n < 0 ? '-' : '';
    let v = Math.abs(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    const digits = i === 0 ? 0 : v >= 100 ? 0 : v >= 10 ? 1 : 2;
    return sign + v.toFixed(digits) + ' ' + units[i];
  }
  function fmtRatio(r) {
    if (r === null || r === undefined || !Number.isFinite(Number(r))) return '–';
    return Number(r).toFixed(2) + '×';
  }
  function fmtCount(n) {
    if (n === null || n === undefined) return '–';
    return Number(n).toLocaleString('en-US');
  }
  function fmtTime(ms) {
    if (!ms) return '–';
    const d = new Date(Number(ms));
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }
  function fmtDateTime(ms) {
    if (!ms) return '–';
    const d = new Date(Number(ms));
    return d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }
  function fmtDuration(seconds) {
    if (!Number.isFinite(seconds)) return '–';
    seconds = Math.max(0, Math.floor(seconds));
    const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.floor(seconds % 3600 / 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${seconds % 60}s`;
    return `${seconds}s`;
  }
  function fmtRate(bytesPerMin) {
    if (!Number.isFinite(bytesPerMin)) return '–';
    const sign = bytesPerMin > 0 ? '+' : '';
    return sign + fmtBytes(bytesPerMin) + '/min';
  }

  // Small DOM builder: el('td', {class: 'num', text: '1'}, child...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') node.textContent = v;
        else if (k === 'class') node.className = v;
        else if (k === 'dataset') Object.assign(node.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function toast(message, kind) {
    const t = el('div', { class: 'toast' + (kind ? ' ' + kind : ''), role: 'status', text: message });
    $('toasts').append(t);
    setTimeout(() => t.remove(), kind === 'error' ? 8000 : 5000);
  }

  // ---------------------------------------------------------------- token and HTTP
  function getToken() {
    try { return localStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
  }
  function setToken(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
    } catch (_) { /* storage disabled: the token lives for this page only */ }
  }

  let tokenWaiters = [];
  function askForToken(reason) {
    const form = $('token-form');
    $('token-label').textContent = reason || 'Agent token';
    form.hidden = false;
    $('btn-token').hidden = true;
    $('token-input').value = '';
    $('token-input').focus();
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }
  function closeTokenForm(token) {
    $('token-form').hidden = true;
    $('btn-token').hidden = false;
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach((w) => w(token));
  }

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  // fetch with the bearer token; on 401/403 ask for a token once and retry.
  async function api(method, path, body, retried) {
    const headers = { Accept: 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(API + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
      });
    } catch (err) {
      throw new ApiError('agent unreachable: ' + err.message, 0);
    }
    if ((res.status === 401 || res.status === 403) && !retried) {
      const reason = res.status === 401 ? 'Token required' : 'Token refused';
      const newToken = await askForToken(reason);
      if (newToken === null) throw new ApiError(`${method} ${path}: ${reason.toLowerCase()}`, res.status);
      return api(method, path, body, true);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = text; }
    }
    if (!res.ok) {
      const msg = data && typeof data === 'object' && data.error ? data.error : `HTTP ${res.status}`;
      throw new ApiError(`${method} ${path}: ${msg}`, res.status);
    }
    return data;
  }

  // ---------------------------------------------------------------- selection helpers
  function latest() { return state.history.length ? state.history[state.history.length - 1] : null; }
  function latestProcesses() { const s = latest(); return s && Array.isArray(s.processes) ? s.processes : []; }
  function findProcess(pid) { return latestProcesses().find((p) => p.pid === pid) || null; }
  function tracedPids() {
    const st = state.status;
    return new Set(st && Array.isArray(st.tracedPids) ? st.tracedPids : []);
  }
  function isTraced(p) { return !!(p && (p.heapTraced || tracedPids().has(p.pid))); }

  function chooseDefaultPid() {
    const procs = latestProcesses();
    if (!procs.length) return null;
    const bySize = (a, b) => (b.rssBytes || 0) - (a.rssBytes || 0);
    const traced = procs.filter((p) => p.heapTraced).sort(bySize);
    if (traced.length) return traced[0].pid;
    return procs.slice().sort(bySize)[0].pid;
  }

  function ensureSelection() {
    const procs = latestProcesses();
    if (state.selectedPid !== null && procs.some((p) => p.pid === state.selectedPid)) return;
    // Keep a user's choice while the process has only briefly vanished from a snapshot.
    if (state.userSelected && state.selectedPid !== null && state.history.slice(-3).some((s) => (s.processes || []).some((p) => p.pid === state.selectedPid))) return;
    const pid = chooseDefaultPid();
    if (pid !== state.selectedPid) {
      state.selectedPid = pid;
      state.userSelected = false;
      onSelectionChanged();
    }
  }

  function selectPid(pid) {
    if (pid === state.selectedPid) return;
    state.selectedPid = pid;
    state.userSelected = true;
    onSelectionChanged();
  }

  function onSelectionChanged() {
    renderSelected();
    renderCharts();
    renderCards();
    renderTable();
    loadConsumers(true);
  }

  // Series of the selected process over the history window.
  function seriesFor(pid) {
    const out = [];
    for (const snap of state.history) {
      const p = (snap.processes || []).find((q) => q.pid === pid);
      if (!p) continue;
      out.push({
        t: Number(snap.timestamp),
        rss: p.rssBytes,
        heap: p.heapTraced ? p.heapLiveBytes : null,
        external: p.externalBytes === undefined ? null : p.externalBytes,
        ratio: p.externalRatio === undefined ? null : p.externalRatio,
      });
    }
    return out;
  }

  // Least-squares slope of a series in bytes per minute.
  function slopePerMinute(points, key) {
    const pts = points.filter((p) => Number.isFinite(p[key]));
    if (pts.length < 2) return NaN;
    const t0 = pts[0].t;
    let sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (const p of pts) {
      const x = (p.t - t0) / 60000;
      sx += x; sy += p[key]; sxx += x * x; sxy += x * p[key];
    }
    const n = pts.length;
    const den = n * sxx - sx * sx;
    if (den === 0) return NaN;
    return (n * sxy - sx * sy) / den;
  }

  // ---------------------------------------------------------------- charts
  let memoryChart = null;
  let ratioChart = null;

  function chartEmpty(chart) {
    return !chart || chart.data.datasets.every((d) => !d.data.length);
  }

  // An empty chart shows why, over its plot area (CSS ::after with the data-empty text).
  function setEmptyNote(canvasId, note) {
    const box = $(canvasId).parentElement;
    box.classList.toggle('empty', !!note);
    if (note) box.dataset.empty = note;
  }

  function initCharts() {
    if (typeof window.Chart !== 'function') {
      toast('Chart library missing (vendor/chart.umd.min.js): charts are disabled', 'error');
      return;
    }
    const Chart = window.Chart;
    Chart.defaults.color = '#8b94a5';
    Chart.defaults.borderColor = 'rgba(139, 148, 165, 0.15)';
    Chart.defaults.font.family = 'system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Roboto, sans-serif';
    const timeAxis = {
      type: 'linear',
      ticks: { callback: function (v) { return chartEmpty(this.chart) ? '' : fmtTime(v); }, maxTicksLimit: 7, maxRotation: 0 },
      grid: { display: false },
    };
    // Byte axis ticks on round binary values (256 MiB, 512 MiB, ...), not 477 MiB.
    const byteTicks = (scale) => {
      const max = scale.max;
      if (!(max > 0)) return;
      const unit = max >= 2 * 1024 ** 3 ? 1024 ** 3 : max >= 2 * 1024 ** 2 ? 1024 ** 2 : max >= 2048 ? 1024 : 1;
      const raw = max / unit / 5;
      const step = Math.pow(2, Math.ceil(Math.log2(Math.max(raw, 1)))) * unit;
      const top = Math.ceil(max / step) * step;
      scale.max = top;
      scale.ticks = [];
      for (let v = 0; v <= top + step / 2; v += step) scale.ticks.push({ value: v });
    };
    const common = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      parsing: false,
      normalized: true,
      interaction: { mode: 'index', intersect: false },
      elements: { point: { radius: 0, hitRadius: 6, hoverRadius: 3 }, line: { borderWidth: 2, tension: 0.25 } },
      plugins: {
        legend: { labels: { boxWidth: 12, boxHeight: 12, usePointStyle: false } },
        tooltip: {
          callbacks: { title: (items) => (items.length ? fmtDateTime(items[0].parsed.x) : '') },
        },
      },
    };
    memoryChart = new Chart($('chart-memory'), {
      type: 'line',
      data: {
        datasets: [
          { label: 'RSS', data: [], borderColor: '#5b9cf5', backgroundColor: 'rgba(91, 156, 245, 0.12)', fill: true },
          { label: 'Heap live', data: [], borderColor: '#3ecf8e', backgroundColor: 'rgba(62, 207, 142, 0.1)' },
          { label: 'External', data: [], borderColor: '#f0b429', backgroundColor: 'rgba(240, 180, 41, 0.1)' },
        ],
      },
      options: Object.assign({}, common, {
        scales: {
          x: timeAxis,
          y: { beginAtZero: true, afterBuildTicks: byteTicks, ticks: { callback: function (v) { return chartEmpty(this.chart) ? '' : fmtBytes(v); } } },
        },
        plugins: Object.assign({}, common.plugins, {
          tooltip: { callbacks: Object.assign({}, common.plugins.tooltip.callbacks, { label: (i) => `${i.dataset.label}: ${fmtBytes(i.parsed.y)}` }) },
        }),
      }),
    });
    ratioChart = new Chart($('chart-ratio'), {
      type: 'line',
      data: {
        datasets: [
          { label: 'External / heap', data: [], borderColor: '#7c6cf0', backgroundColor: 'rgba(124, 108, 240, 0.15)', fill: true },
        ],
      },
      options: Object.assign({}, common, {
        scales: {
          x: timeAxis,
          y: { beginAtZero: true, ticks: { callback: function (v) { return chartEmpty(this.chart) ? '' : Number(v).toFixed(1) + '×'; }, maxTicksLimit: 6 } },
        },
        plugins: Object.assign({}, common.plugins, {
          tooltip: { callbacks: Object.assign({}, common.plugins.tooltip.callbacks, { label: (i) => `ratio: ${fmtRatio(i.parsed.y)}` }) },
        }),
      }),
    });
  }

  function renderCharts() {
    const pid = state.selectedPid;
    const series = pid === null ? [] : seriesFor(pid);
    const p = pid === null ? null : findProcess(pid);
    $('chart-memory-title').textContent = p ? `· ${p.comm} (${p.pid})` : '';
    if (!memoryChart) return;
    memoryChart.data.datasets[0].data = series.map((s) => ({ x: s.t, y: s.rss }));
    memoryChart.data.datasets[1].data = series.filter((s) => s.heap !== null).map((s) => ({ x: s.t, y: s.heap }));
    memoryChart.data.datasets[2].data = series.filter((s) => s.external !== null).map((s) => ({ x: s.t, y: s.external }));
    // The time axis spans exactly the data (a linear scale would round it out to "nice" bounds).
    const xmin = series.length ? series[0].t : undefined;
    const xmax = series.length ? series[series.length - 1].t : undefined;
    for (const chart of [memoryChart, ratioChart]) {
      chart.options.scales.x.min = xmin;
      chart.options.scales.x.max = xmax !== undefined && xmax === xmin ? xmax + 1000 : xmax;
    }
    memoryChart.update('none');
    ratioChart.data.datasets[0].data = series.filter((s) => s.ratio !== null).map((s) => ({ x: s.t, y: s.ratio }));
    ratioChart.update('none');
    const waiting = state.history.length ? null : 'Waiting for snapshots…';
    setEmptyNote('chart-memory', waiting || (series.length ? null : 'No snapshot of this process yet'));
    setEmptyNote('chart-ratio', waiting || (chartEmpty(ratioChart)
      ? (p && !p.heapTraced ? 'Heap not traced: start tracing to see its ratio' : 'No ratio yet (the live heap is empty)')
      : null));
  }

  // ---------------------------------------------------------------- cards and header
  function setValue(id, text, level) {
    const node = $(id);
    node.textContent = text;
    node.classList.remove('ok', 'warn', 'crit');
    if (level) node.classList.add(level);
  }

  function renderCards() {
    const snap = latest();
    if (snap) {
      const total = Number(snap.memTotalBytes) || 0;
      const used = Math.max(0, total - (Number(snap.memAvailableBytes) || 0));
      const pct = total ? (used / total) * 100 : 0;
      const level = pct > 90 ? 'crit' : pct > 75 ? 'warn' : null;
      setValue('host-used', fmtBytes(used), level);
      const bar = $('host-bar');
      bar.style.width = pct.toFixed(1) + '%';
      bar.className = level || '';
      $('host-detail').textContent = `${pct.toFixed(0)}% of ${fmtBytes(total)} · ${fmtBytes(snap.memAvailableBytes)} available`;
      const procs = latestProcesses();
      const top = procs.reduce((a, b) => (!a || (b.rssBytes || 0) > (a.rssBytes || 0) ? b : a), null);
      if (top) {
        setValue('top-rss', fmtBytes(top.rssBytes));
        $('top-detail').textContent = `${top.comm} (pid ${top.pid}) · ${procs.length} processes`;
      }
    }

    const p = state.selectedPid === null ? null : findProcess(state.selectedPid);
    if (!p) {
      setValue('external-value', '–'); setValue('ratio-value', '–'); setValue('growth-value', '–');
      $('external-detail').textContent = 'no process selected';
      $('ratio-detail').textContent = '';
      $('growth-detail').textContent = '';
      return;
    }
    if (p.externalBytes === null || p.externalBytes === undefined) {
      setValue('external-value', 'n/a');
      $('external-detail').textContent = `${p.comm}: heap not traced — start tracing to measure`;
      setValue('ratio-value', 'n/a');
      $('ratio-detail').textContent = 'needs a traced heap';
    } else {
      setValue('external-value', fmtBytes(p.externalBytes), p.externalBytes > 80 * 1024 * 1024 ? 'warn' : null);
      $('external-detail').textContent = `${p.comm}: RSS ${fmtBytes(p.rssBytes)} − heap ${fmtBytes(p.heapLiveBytes)}`;
      const r = p.externalRatio;
      setValue('ratio-value', fmtRatio(r), Number.isFinite(r) && r > 1.5 ? 'warn' : null);
      $('ratio-detail').textContent = Number.isFinite(r) ? `${p.comm}: external over live heap` : `${p.comm}: live heap is empty`;
    }
    const series = seriesFor(p.pid);
    const pattern = state.patterns.get(p.pid);
    const key = p.externalBytes === null || p.externalBytes === undefined ? 'rss' : 'external';
    let rate = slopePerMinute(series, key);
    let source = `${key === 'rss' ? 'RSS' : 'external'} trend over ${series.length} snapshots`;
    if (pattern && Number.isFinite(pattern.growthRate)) {
      rate = pattern.growthRate * 1024 * 1024;
      source = `${pattern.type} (${Math.round(pattern.confidence)}% confidence)`;
    }
    const level = Number.isFinite(rate) && rate > 5 * 1024 * 1024 ? 'crit' : Number.isFinite(rate) && rate > 1024 * 1024 ? 'warn' : null;
    setValue('growth-value', fmtRate(rate), level);
    $('growth-detail').textContent = `${p.comm}: ${source}`;
  }

  function renderSelected() {
    const p = state.selectedPid === null ? null : findProcess(state.selectedPid);
    $('selected-name').textContent = p ? `${p.comm} (pid ${p.pid})` : state.selectedPid !== null ? `pid ${state.selectedPid} (gone)` : 'none';
    const traced = isTraced(p);
    $('selected-traced').hidden = !traced;
    const btn = $('btn-trace');
    btn.disabled = !p;
    btn.textContent = traced ? 'Stop tracing' : 'Start tracing';
    btn.classList.toggle('btn-danger', traced);
    btn.dataset.action = traced ? 'stop' : 'start';
  }

  function renderStatus() {
    const st = state.status;
    const node = $('monitoring-status');
    if (!st) {
      node.textContent = 'agent status unknown';
      node.className = 'pill pill-muted';
      return;
    }
    const parts = [st.isMonitoring ? 'monitoring' : 'not monitoring'];
    if (Number.isFinite(st.uptimeSeconds)) parts.push('up ' + fmtDuration(st.uptimeSeconds));
    if (st.mallocAll) parts.push('malloc traced host-wide');
    else parts.push(`${(st.tracedPids || []).length} traced`);
    parts.push(`${fmtCount(st.eventsReceived)} events`);
    if (st.eventsLost) parts.push(`${fmtCount(st.eventsLost)} lost`);
    node.textContent = parts.join(' · ');
    node.className = 'pill ' + (!st.isMonitoring ? 'pill-bad' : st.eventsLost ? 'pill-wait' : 'pill-ok');
    node.title = `Agent started ${fmtDateTime(st.startedAt)}; events received ${fmtCount(st.eventsReceived)}, lost ${fmtCount(st.eventsLost)}`;
  }

  function setConnection(s, detail) {
    state.wsState = s;
    const node = $('connection-status');
    node.dataset.state = s;
    const labels = {
      connecting: 'connecting…',
      connected: 'WebSocket connected',
      reconnecting: 'reconnecting' + (detail ? ' in ' + detail : '…'),
      offline: 'offline' + (detail ? ' · retry in ' + detail : ''),
    };
    node.textContent = labels[s] || s;
    node.className = 'pill ' + (s === 'connected' ? 'pill-ok' : s === 'offline' ? 'pill-bad' : 'pill-wait');
  }

  // ---------------------------------------------------------------- process table
  function sortValue(p, key) {
    if (key === 'pattern') {
      const pat = state.patterns.get(p.pid);
      return pat ? (pat.confidence || 0) + patternRank(pat.type) * 1000 : -1;
    }
    const v = p[key];
    if (v === null || v === undefined) return key === 'comm' ? '' : -Infinity;
    return v;
  }
  function patternRank(type) {
    return { exponential: 5, leak: 4, spike: 3, linear: 2, stable: 1 }[type] || 0;
  }

  function renderTable() {
    const tbody = $('process-table');
    const { key, dir } = state.sort;
    for (const th of document.querySelectorAll('#process-table-el th[data-sort]')) {
      th.setAttribute('aria-sort', th.dataset.sort === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    const all = latestProcesses();
    const f = state.filter.trim().toLowerCase();
    const rows = all.filter((p) => !f || String(p.pid).includes(f) || (p.comm || '').toLowerCase().includes(f));
    rows.sort((a, b) => {
      const va = sortValue(a, key), vb = sortValue(b, key);
      if (typeof va === 'string' || typeof vb === 'string') return dir * String(va).localeCompare(String(vb));
      if (va === vb) return a.pid - b.pid;
      return dir * (va < vb ? -1 : 1);
    });
    let shown = rows.slice(0, TABLE_LIMIT);
    // Keep the selected process visible even when it falls past the limit.
    if (state.selectedPid !== null && !shown.some((p) => p.pid === state.selectedPid)) {
      const sel = rows.find((p) => p.pid === state.selectedPid);
      if (sel) shown = shown.concat([sel]);
    }
    const frag = document.createDocumentFragment();
    for (const p of shown) {
      const pat = state.patterns.get(p.pid);
      const traced = p.heapTraced;
      const na = (v, fmt) => (v === null || v === undefined ? el('td', { class: 'num na', text: '–' }) : el('td', { class: 'num', text: fmt(v) }));
      const tr = el('tr', { dataset: { pid: String(p.pid) }, class: p.pid === state.selectedPid ? 'selected' : null, title: traced ? 'heap traced' : 'heap not traced' },
        el('td', { class: 'num', text: String(p.pid) }),
        el('td', { class: 'comm' }, traced ? el('span', { class: 'dot-traced', title: 'heap traced' }) : null, p.comm || '?'),
        el('td', { class: 'num', text: fmtBytes(p.rssBytes) }),
        traced ? el('td', { class: 'num', text: fmtBytes(p.heapLiveBytes) }) : el('td', { class: 'num na', text: '–' }),
        na(p.externalBytes, fmtBytes),
        na(p.externalRatio, fmtRatio),
        el('td', { class: 'num', text: fmtBytes(p.mappedAnonBytes) }),
        el('td', { class: 'num', text: fmtBytes(p.mappedFileBytes) }),
        el('td', { class: 'num', text: fmtBytes(p.brkBytes) }),
        el('td', null, pat ? el('span', { class: 'tag ' + pat.type, title: pat.recommendation || '' }, `${pat.type} ${Math.round(pat.confidence)}%`) : el('span', { class: 'muted', text: '–' })),
      );
      frag.append(tr);
    }
    tbody.replaceChildren(frag);
    $('process-count').textContent = all.length ? `· ${all.length}` : '';
    $('process-foot').textContent = rows.length > TABLE_LIMIT
      ? `Showing ${TABLE_LIMIT} of ${rows.length} processes; filter to find others.`
      : all.length ? `${rows.length} of ${all.length} processes · snapshot ${fmtTime(latest().timestamp)}` : 'No snapshot yet.';
  }

  // ---------------------------------------------------------------- consumers
  let consumersSeq = 0;
  async function loadConsumers(force) {
    const pid = state.selectedPid;
    const box = $('consumers');
    if (pid === null) {
      box.replaceChildren(el('p', { class: 'empty', text: 'Select a process to see which libraries hold its memory.' }));
      $('consumers-title').textContent = '';
      return;
    }
    const now = Date.now();
    if (!force && pid === state.consumersPid && now - state.consumersAt < 15000) return;
    state.consumersPid = pid;
    state.consumersAt = now;
    const seq = ++consumersSeq;
    const p = findProcess(pid);
    $('consumers-title').textContent = p ? `· ${p.comm} (${pid})` : `· pid ${pid}`;
    let data;
    try {
      data = await api('GET', '/consumers?pid=' + encodeURIComponent(pid));
    } catch (err) {
      if (seq !== consumersSeq) return;
      box.replaceChildren(el('p', { class: 'empty', text: 'Consumers unavailable: ' + err.message }));
      return;
    }
    if (seq !== consumersSeq) return;
    const entry = data && Array.isArray(data.processes) ? data.processes.find((q) => q.pid === pid) || data.processes[0] : null;
    renderConsumers(entry, p);
  }

  function renderConsumers(entry, p) {
    const box = $('consumers');
    const libraries = (entry && entry.libraries && entry.libraries.length ? entry.libraries : (p && p.libraries) || []).slice()
      .sort((a, b) => (b.liveBytes || 0) - (a.liveBytes || 0));
    const consumers = (entry && entry.consumers ? entry.consumers : []).slice()
      .sort((a, b) => (b.allocatedMemory || 0) - (a.allocatedMemory || 0));
    if (!libraries.length && !consumers.length) {
      const msg = isTraced(p)
        ? 'No live allocations attributed yet.'
        : 'The heap of this process is not traced: start tracing to see its consumers per library and their stacks.';
      box.replaceChildren(el('p', { class: 'empty', text: msg }));
      return;
    }
    const frag = document.createDocumentFragment();
    if (libraries.length) {
      frag.append(el('h3', { class: 'sub', text: 'Live bytes per library' }));
      const max = Math.max(1, ...libraries.map((l) => l.liveBytes || 0));
      const list = el('ul', { class: 'lib-list' });
      for (const lib of libraries.slice(0, 12)) {
        const fill = el('span');
        fill.style.width = (100 * (lib.liveBytes || 0) / max).toFixed(1) + '%';
        list.append(el('li', { class: 'lib-row', dataset: { library: lib.library } },
          el('span', { class: 'name', title: lib.library, text: lib.library }),
          el('div', { class: 'bar' }, fill),
          el('span', { class: 'amount', text: `${fmtBytes(lib.liveBytes)} · peak ${fmtBytes(lib.peakBytes)} · ${fmtCount(lib.calls)} calls` }),
        ));
      }
      frag.append(list);
    }
    if (consumers.length) {
      frag.append(el('h3', { class: 'sub', text: `Allocation sites (${consumers.length})` }));
      for (const c of consumers.slice(0, 50)) {
        const stack = Array.isArray(c.stackTrace) ? c.stackTrace : [];
        const details = el('details', { class: 'consumer', dataset: { consumerId: String(c.id) } },
          el('summary', null,
            el('span', { class: 'cname', title: c.name },
              el('span', { class: 'kind', text: c.type || '' }), c.name || String(c.id)),
            el('span', { class: 'cmeta', text: c.category || '' }),
            el('span', { class: 'cmeta' }, el('span', { class: 'cbytes', text: fmtBytes(c.allocatedMemory) }), ` · ${fmtCount(c.activeAllocations)} live`),
          ),
          el('div', { class: 'facts', text: `peak ${fmtBytes(c.peakMemory)} · ${fmtCount(c.totalCalls)} calls · average ${fmtBytes(c.averageSize)}` }),
          stack.length ? el('ol', { class: 'stack' }, stack.map((f) => el('li', { text: f }))) : el('div', { class: 'facts', text: 'no stack captured' }),
        );
        frag.append(details);
      }
    }
    box.replaceChildren(frag);
  }

  // ---------------------------------------------------------------- alerts
  function upsertAlert(a) {
    if (!a || a.id === undefined) return;
    if (a.resolved) {
      state.alertsActive.delete(a.id);
      state.alertsResolved.set(a.id, a);
    } else if (!state.alertsResolved.has(a.id)) {
      state.alertsActive.set(a.id, a);
    }
  }

  function alertItem(a, active) {
    const ctx = a.context || {};
    const where = ctx.comm || ctx.pid ? `${ctx.comm || '?'} (pid ${ctx.pid ?? '?'})` : '';
    const meta = [fmtDateTime(a.timestamp), a.type, where, ctx.library ? 'lib ' + ctx.library : ''].filter(Boolean).join(' · ');
    const recs = Array.isArray(ctx.recommendations) ? ctx.recommendations : [];
    const item = el('li', { class: 'alert ' + (a.severity || 'info'), dataset: { alertId: String(a.id) } },
      el('div', { class: 'row' },
        el('span', { class: 'sev ' + (a.severity || 'info'), text: a.severity || 'info' }),
        active ? el('button', { type: 'button', class: 'btn btn-small btn-ghost resolve', text: 'Resolve', onclick: () => resolveAlert(a.id, item) }) : null,
      ),
      el('div', { class: 'msg', text: a.message || '' }),
      el('div', { class: 'meta', text: meta }),
      !active ? el('div', { class: 'meta', text: `resolved ${fmtDateTime(a.resolvedAt)}${a.resolvedBy ? ' by ' + a.resolvedBy : ''}` }) : null,
      recs.length ? el('details', null, el('summary', { text: `${recs.length} recommendation${recs.length > 1 ? 's' : ''}` }), el('ul', null, recs.map((r) => el('li', { text: r })))) : null,
    );
    return item;
  }

  function renderAlerts() {
    const active = [...state.alertsActive.values()].sort((a, b) => b.timestamp - a.timestamp);
    const resolved = [...state.alertsResolved.values()].sort((a, b) => (b.resolvedAt || b.timestamp) - (a.resolvedAt || a.timestamp)).slice(0, RESOLVED_SHOWN);
    const ulA = $('alerts-active');
    ulA.replaceChildren(...(active.length ? active.map((a) => alertItem(a, true)) : [el('li', { class: 'empty', text: 'No active alerts.' })]));
    const ulR = $('alerts-resolved');
    ulR.replaceChildren(...(resolved.length ? resolved.map((a) => alertItem(a, false)) : [el('li', { class: 'empty', text: 'None yet.' })]));
    const count = $('alerts-count');
    count.textContent = String(active.length);
    count.classList.toggle('hot', active.length > 0);
  }

  async function resolveAlert(id, item) {
    const btn = item && item.querySelector('button.resolve');
    if (btn) { btn.disabled = true; btn.textContent = 'Resolving…'; }
    try {
      const res = await api('POST', `/alerts/${encodeURIComponent(id)}/resolve`);
      const old = state.alertsActive.get(id) || { id };
      const updated = res && typeof res === 'object' && res.id !== undefined ? res : Object.assign({}, old, { resolved: true, resolvedAt: Date.now(), resolvedBy: 'dashboard' });
      updated.resolved = true;
      upsertAlert(updated);
      renderAlerts();
    } catch (err) {
      toast('Resolve failed: ' + err.message, 'error');
      if (btn) { btn.disabled = false; btn.textContent = 'Resolve'; }
    }
  }

  async function loadAlerts() {
    const data = await api('GET', '/alerts');
    state.alertsActive.clear();
    state.alertsResolved.clear();
    for (const a of (data && data.recent) || []) upsertAlert(a);
    for (const a of (data && data.active) || []) upsertAlert(Object.assign({}, a, { resolved: !!a.resolved }));
    renderAlerts();
  }

  // ---------------------------------------------------------------- actions
  async function forceAnalysis() {
    const btn = $('btn-analyze');
    btn.disabled = true;
    btn.classList.add('busy');
    btn.textContent = 'Analyzing…';
    try {
      const results = await api('POST', '/analyze');
      renderAnalysis(Array.isArray(results) ? results : []);
    } catch (err) {
      toast('Analysis failed: ' + err.message, 'error');
    } finally {
      btn.disabled = false;
      btn.classList.remove('busy');
      btn.textContent = 'Force analysis';
    }
  }

  function renderAnalysis(results) {
    for (const r of results) if (r && r.pattern && r.pid !== undefined) state.patterns.set(r.pid, r.pattern);
    const box = $('analysis-result');
    $('analysis-time').textContent = '· ' + fmtTime(Date.now()) + ` · ${results.length} process${results.length === 1 ? '' : 'es'}`;
    if (!results.length) {
      box.replaceChildren(el('p', { class: 'empty', text: 'Not enough snapshots for a pattern yet.' }));
    } else {
      const sorted = results.slice().sort((a, b) => patternRank(b.pattern && b.pattern.type) - patternRank(a.pattern && a.pattern.type) || ((b.pattern && b.pattern.growthRate) || 0) - ((a.pattern && a.pattern.growthRate) || 0));
      const body = el('tbody');
      for (const r of sorted) {
        const pat = r.pattern || {};
        const top = Array.isArray(r.libraries) && r.libraries.length ? r.libraries.slice().sort((a, b) => (b.liveBytes || 0) - (a.liveBytes || 0))[0] : null;
        body.append(el('tr', { dataset: { pid: String(r.pid) }, onclick: () => selectPid(r.pid) },
          el('td', { class: 'num', text: String(r.pid) }),
          el('td', { class: 'comm', text: r.comm || '?' }),
          el('td', { text: r.metric || '' }),
          el('td', null, el('span', { class: 'tag ' + (pat.type || ''), text: `${pat.type || '?'} ${Math.round(pat.confidence || 0)}%` })),
          el('td', { class: 'num', text: Number.isFinite(pat.growthRate) ? `${pat.growthRate.toFixed(2)} MB/min` : '–' }),
          el('td', { class: 'num', text: Number.isFinite(pat.duration) ? `${pat.duration.toFixed(1)} min` : '–' }),
          el('td', { text: pat.severity || '' }),
          el('td', { text: top ? `${top.library} ${fmtBytes(top.liveBytes)}` : '–' }),
          el('td', { class: 'rec', text: pat.recommendation || '' }),
        ));
      }
      const head = el('thead', null, el('tr', null, ['PID', 'Command', 'Metric', 'Pattern', 'Growth', 'Window', 'Severity', 'Top library', 'Recommendation'].map((h) => el('th', { text: h }))));
      box.replaceChildren(el('div', { class: 'table-wrap' }, el('table', { class: 'data' }, head, body)));
    }
    $('analysis-panel').hidden = false;
    renderTable();
    renderCards();
  }

  async function toggleTrace() {
    const pid = state.selectedPid;
    if (pid === null) return;
    const btn = $('btn-trace');
    const stop = btn.dataset.action === 'stop';
    btn.disabled = true;
    btn.classList.add('busy');
    try {
      await api(stop ? 'DELETE' : 'POST', `/trace/${encodeURIComponent(pid)}`);
      toast(`${stop ? 'Stopped' : 'Started'} tracing the heap of pid ${pid}`);
      await loadStatus();
    } catch (err) {
      toast(`${stop ? 'Stop' : 'Start'} tracing failed: ${err.message}`, 'error');
    } finally {
      btn.classList.remove('busy');
      renderSelected();
      loadConsumers(true);
    }
  }

  async function exportData(ev) {
    // A plain link works when the agent needs no token for reads; with a token, fetch and save.
    if (!getToken()) return;
    ev.preventDefault();
    try {
      const headers = { Authorization: 'Bearer ' + getToken() };
      const res = await fetch(API + '/export', { headers, cache: 'no-store' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: `memtrace-export-${new Date().toISOString().replace(/[:.]/g, '-')}.json` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      toast('Export failed: ' + err.message, 'error');
    }
  }

  // ---------------------------------------------------------------- data loading
  function addSnapshot(snap) {
    if (!snap || !Array.isArray(snap.processes)) return;
    const last = latest();
    if (last && Number(snap.timestamp) <= Number(last.timestamp)) {
      if (Number(snap.timestamp) === Number(last.timestamp)) state.history[state.history.length - 1] = snap;
      else return;
    } else {
      state.history.push(snap);
    }
    if (state.history.length > HISTORY_KEEP) state.history.splice(0, state.history.length - HISTORY_KEEP);
  }

  function renderAll() {
    ensureSelection();
    renderSelected();
    renderCards();
    renderCharts();
    renderTable();
  }

  async function loadStatus() {
    state.status = await api('GET', '/status');
    renderStatus();
    if (state.status && state.status.lastSnapshot && !state.history.length) addSnapshot(state.status.lastSnapshot);
    return state.status;
  }

  async function loadHistory() {
    const snaps = await api('GET', '/history?count=' + HISTORY_COUNT);
    if (!Array.isArray(snaps)) return;
    // Merge: snapshots already received live stay; history fills in before them.
    const live = state.history;
    const byTs = new Map();
    for (const s of snaps.concat(live)) if (s && s.timestamp !== undefined) byTs.set(Number(s.timestamp), s);
    state.history = [...byTs.values()].sort((a, b) => Number(a.timestamp) - Number(b.timestamp)).slice(-HISTORY_KEEP);
  }

  async function loadPatterns() {
    const procs = await api('GET', '/processes');
    if (!Array.isArray(procs)) return;
    for (const p of procs) {
      if (p.pattern) state.patterns.set(p.pid, p.pattern);
    }
  }

  function settle(promise, what) {
    return promise.catch((err) => {
      if (!err || err.status !== 0) toast(`${what}: ${err.message}`, 'error');
      return null;
    });
  }

  async function initialLoad() {
    await Promise.all([
      settle(loadStatus(), 'Status'),
      settle(loadHistory(), 'History'),
      settle(loadPatterns(), 'Processes'),
      settle(loadAlerts(), 'Alerts'),
    ]);
    renderAll();
    loadConsumers(true);
  }

  // ---------------------------------------------------------------- WebSocket
  function wsUrl() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const token = getToken();
    return `${proto}//${location.host}${API}/ws` + (token ? '?token=' + encodeURIComponent(token) : '');
  }

  let renderPending = false;
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      renderAll();
      loadConsumers(false);
    });
  }

  function connect() {
    clearTimeout(state.wsTimer);
    if (state.ws) {
      state.ws.onclose = null;
      try { state.ws.close(); } catch (_) { /* already closed */ }
    }
    if (state.wsState !== 'offline') setConnection(state.wsAttempt ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onopen = () => {
      const wasDown = state.wsAttempt > 0;
      state.wsAttempt = 0;
      setConnection('connected');
      if (wasDown) {
        // Catch up on what happened while the socket was down.
        Promise.all([settle(loadHistory(), 'History'), settle(loadAlerts(), 'Alerts'), settle(loadStatus(), 'Status')]).then(renderAll);
      }
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      handleMessage(msg);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      state.ws = null;
      scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  function scheduleReconnect() {
    state.wsAttempt += 1;
    const base = Math.min(30000, 1000 * Math.pow(2, Math.min(state.wsAttempt - 1, 5)));
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    const secs = Math.max(1, Math.round(delay / 1000)) + 's';
    setConnection('reconnecting', secs);
    // Tell "agent down" from "socket refused" with a plain request.
    fetch(API + '/status', { cache: 'no-store', headers: getToken() ? { Authorization: 'Bearer ' + getToken() } : {} })
      .then((res) => {
        if ((res.status === 401 || res.status === 403) && !tokenWaiters.length) {
          askForToken(res.status === 401 ? 'Token required' : 'Token refused').then((t) => { if (t !== null) connect(); });
        }
      })
      .catch(() => { if (!state.ws) setConnection('offline', secs); });
    state.wsTimer = setTimeout(connect, delay);
  }

  function handleMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'snapshot':
        addSnapshot(msg.data);
        scheduleRender();
        break;
      case 'alert:created':
      case 'alert:resolved':
        upsertAlert(msg.data);
        renderAlerts();
        if (msg.type === 'alert:created' && msg.data) toast(`${(msg.data.severity || 'alert').toUpperCase()}: ${msg.data.message || ''}`, msg.data.severity === 'critical' ? 'error' : 'warn');
        break;
      case 'pattern:detected': {
        const d = msg.data || {};
        if (d.pid !== undefined && d.pattern) state.patterns.set(d.pid, d.pattern);
        else settle(loadPatterns(), 'Processes');
        if (d.pattern) toast(`Pattern ${d.pattern.type} (${Math.round(d.pattern.confidence || 0)}%) in ${d.comm || 'pid ' + d.pid}`, 'warn');
        scheduleRender();
        break;
      }
      case 'lagged': {
        const n = msg.data && msg.data.skipped;
        toast(`Live feed fell behind: ${n ?? 'some'} update${n === 1 ? '' : 's'} skipped; reloading history`, 'warn');
        Promise.all([settle(loadHistory(), 'History'), settle(loadAlerts(), 'Alerts')]).then(renderAll);
        break;
      }
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- wiring
  function wire() {
    $('agent-origin').textContent = location.host;
    $('host-name').textContent = location.hostname;
    for (const th of document.querySelectorAll('#process-table-el th[data-sort]')) {
      th.addEventListener('click', () => {
        const key = th.dataset.sort;
        if (state.sort.key === key) state.sort.dir = -state.sort.dir;
        else state.sort = { key, dir: key === 'comm' || key === 'pid' ? 1 : -1 };
        renderTable();
      });
    }
    $('process-table').addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr[data-pid]');
      if (tr) selectPid(Number(tr.dataset.pid));
    });
    $('process-filter').addEventListener('input', (ev) => { state.filter = ev.target.value; renderTable(); });
    $('btn-analyze').addEventListener('click', forceAnalysis);
    $('btn-export').addEventListener('click', exportData);
    $('btn-trace').addEventListener('click', toggleTrace);
    $('analysis-close').addEventListener('click', () => { $('analysis-panel').hidden = true; });
    $('btn-token').addEventListener('click', () => {
      askForToken(getToken() ? 'Replace token' : 'Agent token').then((t) => { if (t !== null) connect(); });
    });
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('token-input').value.trim();
      setToken(token);
      closeTokenForm(token);
      if (!state.ws || state.wsState !== 'connected') connect();
    });
    $('token-cancel').addEventListener('click', () => closeTokenForm(null));
    // Refresh the slower-moving parts.
    setInterval(() => { settle(loadStatus(), 'Status').then(renderSelected); }, 15000);
    setInterval(() => { settle(loadPatterns(), 'Processes').then(() => { renderTable(); renderCards(); }); }, 60000);
    setInterval(() => { if (state.history.length) renderStatus(); }, 30000);
  }

  window.memtraceDashboard = {
    chartPoints: () => (memoryChart ? memoryChart.data.datasets[0].data.length : 0),
    selectedPid: () => state.selectedPid,
    connection: () => state.wsState,
    select: (pid) => selectPid(Number(pid)),
  };

  function start() {
    wire();
    initCharts();
    renderCharts();
    renderTable();
    setConnection('connecting');
    renderAlerts();
    initialLoad().finally(connect);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
