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
    patternMetrics: new Map(), // pid -> the metric of that pattern, where known (/analyze, stream)
    status: null,
    selectedPid: null,
    userSelected: false,
    sort: { key: 'rssBytes', dir: -1 },
    filter: '',
    alertsActive: new Map(),   // id -> Alert
    alertsResolved: new Map(), // id -> Alert
    alertsPending: [],         // PendingAlert, oldest first
    alertsSuppressed: null,    // the budget's suppressed counts
    consumersPid: null,
    consumersAt: 0,
    consumersEntry: undefined, // the consumers answer last shown (re-rendered at each snapshot)
    ws: null,
    wsState: 'connecting',
    wsAttempt: 0,
    wsTimer: null,
  };

  // ---------------------------------------------------------------- formatting
  // One unit system: binary prefixes (1 KiB = 1024 B, 1 MiB = 1024 KiB, ...), three significant
  // digits. The agent's MB (JSON fields and messages) is 1024 * 1024 bytes, that is MiB.
  const MiB = 1024 * 1024;
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  function fmtBytes(n) {
    if (n === null || n === undefined || !Number.isFinite(Number(n))) return '–';
    n = Number(n);
    const sign = n < 0 ? '-' : '';
    let v = Math.abs(n);
    let i = 0;
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    let digits = i === 0 ? 0 : v >= 100 ? 0 : v >= 10 ? 1 : 2;
    // 1023.7 MiB rounds to 1024 MiB: say 1.00 GiB instead.
    if (Number(v.toFixed(digits)) >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; digits = 2; }
    return sign + v.toFixed(digits) + ' ' + UNITS[i];
  }
  function fmtRatio(r) {
    if (r === null || r === undefined || !Number.isFinite(Number(r))) return '–';
    return Number(r).toFixed(2) + '×';
  }
  function fmtCount(n) {
    if (n === null || n === undefined || !Number.isFinite(Number(n))) return '–';
    return Number(n).toLocaleString('en-US');
  }
  function fmtTime(ms, withSeconds) {
    if (!ms) return '–';
    const d = new Date(Number(ms));
    const opts = { hour: '2-digit', minute: '2-digit', hour12: false };
    if (withSeconds !== false) opts.second = '2-digit';
    return d.toLocaleTimeString([], opts);
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
    const text = fmtBytes(bytesPerMin);
    const sign = bytesPerMin > 0 && !/^0(\.0+)? /.test(text) ? '+' : '';
    return sign + text + '/min';
  }
  // The agent's free text (alert messages, recommendations, drill-down reasons) says MB for
  // 1024 * 1024 bytes; on this page that unit is written MiB.
  function unitsText(text) {
    return String(text == null ? '' : text)
      .replace(/(\d)\s?MB\b/g, '$1 MiB')
      .replace(/\bMB\/min\b/g, 'MiB/min')
      .replace(/(\d)\s?GB\b/g, '$1 GiB')
      .replace(/(\d)\s?KB\b/g, '$1 KiB');
  }
  const METRIC_LABELS = { rss: 'RSS', heapLive: 'Heap live', external: 'External' };
  function metricLabel(m) { return METRIC_LABELS[m] || String(m || ''); }

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

  const TOASTS_SHOWN = 4;
  function toast(message, kind) {
    const t = el('div', { class: 'toast' + (kind ? ' ' + kind : ''), role: 'status', text: message });
    const box = $('toasts');
    box.append(t);
    // A burst (an analysis finding many patterns) keeps only the newest few on screen.
    while (box.children.length > TOASTS_SHOWN) box.firstElementChild.remove();
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

  // What a snapshot says about the external memory of a process: `full` (RSS minus a heap traced
  // from the start), `since-attach` (only the growth since tracing began is known), or null. An
  // agent that does not report a basis gives RSS minus the live heap where the heap is traced.
  function externalBasis(p) {
    if (!p) return null;
    if (typeof p.externalBasis === 'string' && p.externalBasis) return p.externalBasis;
    return null;
  }
  // The external figure of one snapshot: bytes (full basis or no basis reported), or the growth
  // since attach (`since-attach` basis), or null.
  function externalFigure(p) {
    if (!p) return null;
    if (Number.isFinite(p.externalBytes)) return p.externalBytes;
    if (externalBasis(p) === 'since-attach' && Number.isFinite(p.externalGrowthBytes)) return p.externalGrowthBytes;
    return null;
  }

  // Series of one process over the history window.
  function seriesFor(pid) {
    const out = [];
    for (const snap of state.history) {
      const p = (snap.processes || []).find((q) => q.pid === pid);
      if (!p) continue;
      out.push({
        t: Number(snap.timestamp),
        rss: p.rssBytes,
        heapLive: p.heapTraced ? p.heapLiveBytes : null,
        external: externalFigure(p),
        ratio: Number.isFinite(p.externalRatio) ? p.externalRatio : null,
      });
    }
    return out;
  }

  // Least-squares line through (minutes, bytes): slope in bytes per minute, r², samples, span.
  function fitLine(points) {
    const n = points.length;
    if (n < 2) return null;
    const t0 = points[0].t;
    let mx = 0, my = 0;
    for (const p of points) { mx += (p.t - t0) / 60000; my += p.y; }
    mx /= n; my /= n;
    let sxx = 0, sxy = 0, syy = 0;
    for (const p of points) {
      const dx = (p.t - t0) / 60000 - mx, dy = p.y - my;
      sxx += dx * dx; sxy += dx * dy; syy += dy * dy;
    }
    if (!(sxx > 0)) return null;
    const slope = sxy / sxx;
    const r2 = syy > 0 ? (sxy * sxy) / (sxx * syy) : 0;
    return { slope, r2, n, minutes: (points[n - 1].t - t0) / 60000 };
  }

  // Growth is "confident" when a line fits the last GROWTH_WINDOW samples well (r² >= 0.8, at
  // least 4 samples) and it rose by at least 1 MiB over them: smaller moves are noise at this scale.
  const GROWTH_WINDOW = 20;
  const GROWTH_MIN_R2 = 0.8;
  const GROWTH_MIN_SAMPLES = 4;
  const GROWTH_MIN_BYTES = MiB;
  function growthFits(series) {
    const fits = {};
    for (const key of ['rss', 'heapLive', 'external']) {
      const pts = series.filter((s) => Number.isFinite(s[key])).slice(-GROWTH_WINDOW).map((s) => ({ t: s.t, y: s[key] }));
      const f = fitLine(pts);
      if (!f) continue;
      f.metric = key;
      f.confident = f.n >= GROWTH_MIN_SAMPLES && f.r2 >= GROWTH_MIN_R2 && f.slope > 0 && f.slope * f.minutes >= GROWTH_MIN_BYTES;
      fits[key] = f;
    }
    return fits;
  }
  // The metric the growth card shows: the largest confident growth among RSS, live heap and
  // external memory; RSS when nothing grows confidently (or the heap is not traced).
  function chooseGrowth(series) {
    const fits = growthFits(series);
    const confident = Object.values(fits).filter((f) => f.confident).sort((a, b) => b.slope - a.slope);
    const chosen = confident[0] || fits.rss || null;
    return { chosen, fits };
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

  // Time axis: ticks on round clock times (every 10 s, 1 min, 5 min, ...), at most 6.
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400].map((s) => s * 1000);
  function timeTicks(scale) {
    const min = scale.min, max = scale.max;
    if (!(max > min)) return;
    const step = TIME_STEPS.find((s) => (max - min) / s <= 6) || TIME_STEPS[TIME_STEPS.length - 1];
    // Hours and days fall on the local clock's round values.
    const offset = step >= 3600000 ? -new Date(min).getTimezoneOffset() * 60000 : 0;
    const ticks = [];
    for (let t = Math.ceil((min + offset) / step) * step - offset; t <= max; t += step) ticks.push({ value: t });
    scale.ticks = ticks;
  }
  function timeLabel(value, index, ticks) {
    const step = ticks.length > 1 ? ticks[1].value - ticks[0].value : 1000;
    return fmtTime(value, step < 60000);
  }

  // Decimals a tick step needs to be written exactly (0.25 -> 2, 0.5 -> 1, 64 -> 0), at most 4.
  function stepDigits(step) {
    for (let d = 0; d < 4; d++) {
      const scaled = step * 10 ** d;
      if (Math.abs(scaled - Math.round(scaled)) < 1e-6 * Math.max(1, scaled)) return d;
    }
    return 4;
  }

  // Byte axis: one unit for the whole axis (the largest in which the top tick is at least 1), a
  // round binary step (..., 0.25, 0.5, 1, 2, 4, ... of that unit), about five steps.
  const BYTE_STEPS = [0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
  function byteTicks(scale) {
    const max = scale.max;
    if (!(max > 0)) return;
    let u = 0;
    while (u < UNITS.length - 1 && max >= 1024 ** (u + 1)) u++;
    const raw = max / 1024 ** u / 5;
    let step = BYTE_STEPS.find((c) => c >= raw && (u > 0 || c >= 1)) || 512;
    step *= 1024 ** u;
    const top = Math.ceil(max / step - 1e-9) * step;
    scale.max = top;
    scale.ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) scale.ticks.push({ value: v });
    // A top of 1024 MiB reads 1 GiB: the axis moves to the next unit.
    if (top >= 1024 ** (u + 1) && u < UNITS.length - 1) u++;
    scale.byteUnit = u;
    scale.byteDigits = stepDigits(step / 1024 ** u);
  }
  function byteLabel(value) {
    const u = this.byteUnit || 0;
    const digits = this.byteDigits || 0;
    return (value / 1024 ** u).toFixed(digits) + ' ' + UNITS[u];
  }
  // Ratio axis: as many decimals as the step needs (0.02×, 0.04×, not 0.0×, 0.0×).
  function ratioLabel(value, index, ticks) {
    const step = ticks.length > 1 ? Math.abs(ticks[1].value - ticks[0].value) : 1;
    const digits = step > 0 ? stepDigits(step) : 1;
    return (value === 0 ? '0' : Number(value).toFixed(digits)) + '×';
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
    const timeAxis = () => ({
      type: 'linear',
      afterBuildTicks: timeTicks,
      ticks: { callback: function (v, i, t) { return chartEmpty(this.chart) ? '' : timeLabel(v, i, t); }, maxRotation: 0, autoSkip: false },
      grid: { display: false },
    });
    const common = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      parsing: false,
      normalized: true,
      interaction: { mode: 'index', intersect: false },
      elements: { point: { radius: 0, hitRadius: 6, hoverRadius: 3 }, line: { borderWidth: 2, tension: 0.25 } },
      plugins: {
        // Series without data (no heap traced) stay out of the legend.
        legend: { labels: { boxWidth: 12, boxHeight: 12, usePointStyle: false, filter: (item, data) => data.datasets[item.datasetIndex].data.length > 0 } },
        tooltip: {
          callbacks: { title: (items) => (items.length ? fmtDateTime(items[0].parsed.x) : '') },
        },
      },
    };
    memoryChart = new Chart($('chart-memory'), {
      type: 'line',
      data: {
        datasets: [
          { label: 'RSS (resident)', data: [], borderColor: '#5b9cf5', backgroundColor: 'rgba(91, 156, 245, 0.12)', fill: true },
          { label: 'Heap live', data: [], borderColor: '#3ecf8e', backgroundColor: 'rgba(62, 207, 142, 0.1)' },
          { label: 'External', data: [], borderColor: '#f0b429', backgroundColor: 'rgba(240, 180, 41, 0.1)' },
        ],
      },
      options: Object.assign({}, common, {
        scales: {
          x: timeAxis(),
          y: { beginAtZero: true, afterBuildTicks: byteTicks, ticks: { autoSkip: false, callback: function (v) { return chartEmpty(this.chart) ? '' : byteLabel.call(this, v); } } },
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
          x: timeAxis(),
          y: { beginAtZero: true, ticks: { maxTicksLimit: 6, callback: function (v, i, t) { return chartEmpty(this.chart) ? '' : ratioLabel(v, i, t); } } },
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
    $('chart-memory-title').textContent = p ? `· ${p.comm} (${p.pid}) · binary units` : '';
    $('chart-ratio-title').textContent = p ? `· ${p.comm} (${p.pid})` : '';
    if (!memoryChart) return;
    const basis = externalBasis(p);
    memoryChart.data.datasets[0].data = series.map((s) => ({ x: s.t, y: s.rss }));
    memoryChart.data.datasets[1].data = series.filter((s) => s.heapLive !== null).map((s) => ({ x: s.t, y: s.heapLive }));
    // On the since-attach basis the external figure is a growth, not a size: not on a size chart.
    memoryChart.data.datasets[2].data = basis === 'since-attach' ? [] : series.filter((s) => s.external !== null).map((s) => ({ x: s.t, y: s.external }));
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
    let ratioNote = null;
    if (chartEmpty(ratioChart)) {
      if (p && !p.heapTraced) ratioNote = 'Heap not traced: start tracing to see its ratio';
      else if (basis === 'since-attach') ratioNote = 'Heap traced since attach: the heap from before is unknown, so there is no ratio';
      else ratioNote = 'No ratio yet (the live heap is empty)';
    }
    setEmptyNote('chart-ratio', waiting || ratioNote);
  }

  function axisLabels(chart) {
    if (!chart) return { x: [], y: [] };
    const labels = (scale) => (scale && Array.isArray(scale.ticks) ? scale.ticks.map((t) => (Array.isArray(t.label) ? t.label.join(' ') : String(t.label ?? ''))) : []);
    return { x: labels(chart.scales.x), y: labels(chart.scales.y) };
  }

  // ---------------------------------------------------------------- cards and header
  function setValue(id, text, level) {
    const node = $(id);
    node.textContent = text;
    node.classList.remove('ok', 'warn', 'crit', 'quiet');
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
      $('external-basis').textContent = '';
      $('ratio-detail').textContent = '';
      $('growth-metric').textContent = '';
      $('growth-detail').textContent = '';
      $('growth-others').textContent = '';
      delete $('growth-value').dataset.metric;
      return;
    }
    renderExternalCards(p);
    renderGrowthCard(p);
  }

  function renderExternalCards(p) {
    const basis = externalBasis(p);
    const basisNode = $('external-basis');
    basisNode.dataset.basis = basis || '';
    if (basis === 'full') basisNode.textContent = 'basis: full (heap traced from the process start)';
    else if (basis === 'since-attach') basisNode.textContent = 'basis: since attach (heap before tracing unknown)';
    else basisNode.textContent = '';
    if (!p.heapTraced) {
      setValue('external-value', 'n/a');
      $('external-detail').textContent = `${p.comm}: heap not traced — start tracing to measure`;
      setValue('ratio-value', 'n/a');
      $('ratio-detail').textContent = 'needs a traced heap';
      return;
    }
    if (Number.isFinite(p.externalBytes)) {
      setValue('external-value', fmtBytes(p.externalBytes), p.externalBytes > 80 * MiB ? 'warn' : null);
      $('external-detail').textContent = `${p.comm}: RSS ${fmtBytes(p.rssBytes)} − heap ${fmtBytes(p.heapLiveBytes)}`;
    } else if (basis === 'since-attach' && Number.isFinite(p.externalGrowthBytes)) {
      const g = p.externalGrowthBytes;
      setValue('external-value', (g > 0 ? '≥ +' : '') + fmtBytes(g), g > 80 * MiB ? 'warn' : null);
      $('external-detail').textContent = `${p.comm}: RSS growth since attach not explained by heap growth (a lower bound)`;
    } else {
      setValue('external-value', '–');
      $('external-detail').textContent = `${p.comm}: no external figure in this snapshot`;
    }
    const r = p.externalRatio;
    if (Number.isFinite(r)) {
      setValue('ratio-value', fmtRatio(r), r > 1.5 ? 'warn' : null);
      $('ratio-detail').textContent = `${p.comm}: external over live heap`;
    } else {
      setValue('ratio-value', 'n/a');
      $('ratio-detail').textContent = basis === 'since-attach' ? `${p.comm}: heap before tracing unknown` : `${p.comm}: live heap is empty`;
    }
  }

  function renderGrowthCard(p) {
    const { chosen, fits } = chooseGrowth(seriesFor(p.pid));
    const value = $('growth-value');
    if (!chosen) {
      setValue('growth-value', '–');
      delete value.dataset.metric;
      $('growth-metric').textContent = '';
      $('growth-detail').textContent = `${p.comm}: needs two snapshots`;
      $('growth-others').textContent = '';
      return;
    }
    const rate = chosen.slope;
    const level = chosen.confident ? (rate > 5 * MiB ? 'crit' : rate > MiB ? 'warn' : null) : null;
    const label = chosen.metric === 'external' && externalBasis(p) === 'since-attach' ? 'External (since attach)' : metricLabel(chosen.metric);
    setValue('growth-value', fmtRate(rate), chosen.confident ? level : 'quiet');
    value.dataset.metric = chosen.metric;
    value.dataset.confident = String(chosen.confident);
    $('growth-metric').textContent = '· ' + label;
    const fit = `fit over ${chosen.n} snapshots (${fmtDuration(chosen.minutes * 60)}), r² ${chosen.r2.toFixed(2)}`;
    $('growth-detail').textContent = chosen.confident
      ? `${label} of ${p.comm} grows · ${fit}`
      : `${p.comm}: no confident growth · ${label} trend, ${fit}`;
    const others = Object.values(fits).filter((f) => f !== chosen).map((f) => `${metricLabel(f.metric)} ${fmtRate(f.slope)}`);
    const pattern = state.patterns.get(p.pid);
    if (pattern && pattern.type) {
      const metric = state.patternMetrics.get(p.pid);
      others.push(`last analysis: ${pattern.type} ${Math.round(pattern.confidence || 0)}%${metric ? ' on ' + metricLabel(metric) : ''}`);
    }
    $('growth-others').textContent = others.join(' · ');
  }

  // The selected process's figures in two groups that are never added together: resident memory
  // (RSS and its parts, swap) and virtual address space (mappings, break).
  function renderSelectedFacts(p) {
    const box = $('selected-facts');
    if (!p) { box.replaceChildren(); return; }
    const group = (cls, title, items) => el('div', { class: 'fgroup ' + cls, dataset: { group: cls } },
      el('span', { class: 'glabel', text: title }),
      items.map(([k, v, key]) => el('span', { class: 'fact', dataset: { key } }, el('span', { class: 'k', text: k }), ' ', el('span', { class: 'v', text: v }))));
    const parts = [
      group('res', 'Resident', [
        ['RSS', fmtBytes(p.rssBytes), 'rssBytes'],
        ['anon', fmtBytes(p.rssAnonBytes), 'rssAnonBytes'],
        ['file', fmtBytes(p.rssFileBytes), 'rssFileBytes'],
        ['shmem', fmtBytes(p.rssShmemBytes), 'rssShmemBytes'],
        ['swap', fmtBytes(p.swapBytes), 'swapBytes'],
      ]),
    ];
    if (p.heapTraced) {
      parts.push(group('heap', 'Traced heap', [
        ['live', fmtBytes(p.heapLiveBytes), 'heapLiveBytes'],
        ['blocks', fmtCount(p.heapLiveCount), 'heapLiveCount'],
        ['peak', fmtBytes(p.heapPeakBytes), 'heapPeakBytes'],
      ]));
    }
    parts.push(group('virt', 'Virtual: address space, not in RSS', [
      ['mapped anon', fmtBytes(p.mappedAnonBytes), 'mappedAnonBytes'],
      ['mapped file', fmtBytes(p.mappedFileBytes), 'mappedFileBytes'],
      ['brk', fmtBytes(p.brkBytes), 'brkBytes'],
    ]));
    box.replaceChildren(...parts);
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
    renderSelectedFacts(p);
  }

  const COUNTERS = [
    ['eventsLost', 'Kernel events lost', (st) => st.eventsLost, 'ring buffer full'],
    ['snapshotsDropped', 'Snapshots dropped', (st) => st.snapshotsDropped, 'analysis side too far behind'],
    ['webhookFailures', 'Webhook failures', (st) => st.failures && st.failures.webhookFailures, 'alert events given up on after the retries'],
    ['webhookDropped', 'Webhook events dropped', (st) => st.failures && st.failures.webhookDropped, 'dropped from the full queue'],
    ['storeWriteFailures', 'Data writes failed', (st) => st.failures && st.failures.storeWriteFailures, 'writes to the data directory'],
    ['storeSkippedLines', 'Data lines skipped', (st) => st.failures && st.failures.storeSkippedLines, 'corrupted or partial lines read'],
  ];

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
    const problems = COUNTERS.reduce((n, [, , get]) => n + (Number(get(st)) || 0), 0);
    node.textContent = parts.join(' · ');
    node.className = 'pill ' + (!st.isMonitoring ? 'pill-bad' : problems ? 'pill-wait' : 'pill-ok');
    node.title = `Agent started ${fmtDateTime(st.startedAt)}; events received ${fmtCount(st.eventsReceived)}, lost ${fmtCount(st.eventsLost)}`;
    renderCounters(st);
    renderTraced(st);
  }

  // Suppressed and failed work the agent lives with (status `failures`, `snapshotsDropped`, ...):
  // only the counters the agent reports are shown.
  function renderCounters(st) {
    const items = [];
    for (const [key, label, get, hint] of COUNTERS) {
      const v = get(st);
      if (v === undefined || v === null) continue;
      items.push(el('div', { class: 'counter' + (Number(v) > 0 ? ' hot' : ''), dataset: { counter: key }, title: hint },
        el('dt', { text: label }), el('dd', { text: fmtCount(v) })));
    }
    items.push(el('div', { class: 'counter', dataset: { counter: 'eventsReceived' } }, el('dt', { text: 'Kernel events received' }), el('dd', { text: fmtCount(st.eventsReceived) })));
    if (Number.isFinite(st.snapshotInterval)) {
      items.push(el('div', { class: 'counter', dataset: { counter: 'snapshotInterval' } }, el('dt', { text: 'Snapshot every' }), el('dd', { text: fmtDuration(st.snapshotInterval) })));
    }
    $('agent-counters').replaceChildren(...items);
  }

  const REASONS = { configured: 'configured (agent.pids / --pid)', requested: 'requested (API or dashboard)', drilldown: 'drill-down (it grew)' };
  function renderTraced(st) {
    const box = $('traced');
    const traced = Array.isArray(st.traced) ? st.traced : [];
    const drills = new Map((Array.isArray(st.drilldowns) ? st.drilldowns : []).map((d) => [d.pid, d]));
    $('traced-count').textContent = st.mallocAll ? '· every process (agent.mallocAll)' : `· ${traced.length}`;
    if (!traced.length) {
      box.replaceChildren(el('p', { class: 'empty', text: st.mallocAll ? 'Every process is traced (agent.mallocAll).' : 'No process is traced: select one and start tracing.' }));
      return;
    }
    const body = el('tbody');
    for (const t of traced.slice().sort((a, b) => (b.since || 0) - (a.since || 0))) {
      const d = drills.get(t.pid);
      const lib = String(t.library || '');
      body.append(el('tr', { dataset: { pid: String(t.pid), reason: String(t.reason || '') }, onclick: () => selectPid(t.pid) },
        el('td', { class: 'num', text: String(t.pid) }),
        el('td', { class: 'comm', text: t.comm || '?' }),
        el('td', { class: 'reason', text: (REASONS[t.reason] || String(t.reason || '?')) + (d ? ` until ${fmtTime(d.endsAt)}` : '') , title: d ? unitsText(d.reason) : '' }),
        el('td', { text: fmtDateTime(t.since) }),
        el('td', { class: 'lib', title: lib, text: lib.split('/').pop() || '–' }),
        el('td', { class: 'num', title: Array.isArray(t.functions) ? t.functions.join(', ') : '', text: Array.isArray(t.functions) ? String(t.functions.length) : '–' }),
      ));
    }
    const head = el('thead', null, el('tr', null, ['PID', 'Command', 'Why', 'Since', 'Allocator', 'Probes'].map((h) => el('th', { text: h }))));
    box.replaceChildren(el('div', { class: 'table-wrap short' }, el('table', { class: 'data', id: 'traced-table' }, head, body)));
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
      const cell = (col, text, cls) => el('td', { class: 'num' + (cls ? ' ' + cls : ''), dataset: { col }, text });
      const bytes = (col, v, cls) => (Number.isFinite(v) ? cell(col, fmtBytes(v), cls) : cell(col, '–', 'na' + (cls ? ' ' + cls : '')));
      let external;
      if (Number.isFinite(p.externalBytes)) external = bytes('externalBytes', p.externalBytes);
      else if (externalBasis(p) === 'since-attach' && Number.isFinite(p.externalGrowthBytes)) {
        external = cell('externalBytes', (p.externalGrowthBytes > 0 ? '+' : '') + fmtBytes(p.externalGrowthBytes), 'since-attach');
        external.title = 'growth since tracing began that the heap does not explain (a lower bound)';
      } else external = cell('externalBytes', '–', 'na');
      const metric = state.patternMetrics.get(p.pid);
      const tr = el('tr', { dataset: { pid: String(p.pid) }, class: p.pid === state.selectedPid ? 'selected' : null, title: traced ? 'heap traced' : 'heap not traced' },
        el('td', { class: 'num', dataset: { col: 'pid' }, text: String(p.pid) }),
        el('td', { class: 'comm', dataset: { col: 'comm' } }, traced ? el('span', { class: 'dot-traced', title: 'heap traced' }) : null, el('span', { class: 'comm-text', text: p.comm || '?' })),
        bytes('rssBytes', p.rssBytes, 'grp-res'),
        bytes('swapBytes', p.swapBytes),
        traced ? bytes('heapLiveBytes', p.heapLiveBytes, 'grp-heap') : cell('heapLiveBytes', '–', 'na grp-heap'),
        external,
        Number.isFinite(p.externalRatio) ? cell('externalRatio', fmtRatio(p.externalRatio)) : cell('externalRatio', '–', 'na'),
        bytes('mappedAnonBytes', p.mappedAnonBytes, 'virt grp-virt'),
        bytes('mappedFileBytes', p.mappedFileBytes, 'virt'),
        bytes('brkBytes', p.brkBytes, 'virt'),
        el('td', { dataset: { col: 'pattern' } }, pat ? el('span', { class: 'tag ' + pat.type, title: unitsText(pat.recommendation || '') }, `${pat.type} ${Math.round(pat.confidence)}%${metric ? ' · ' + metricLabel(metric) : ''}`) : el('span', { class: 'muted', text: '–' })),
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
      box.dataset.pid = '';
      box.replaceChildren(el('p', { class: 'empty', text: 'Select a process to see which libraries hold its memory.' }));
      $('consumers-title').textContent = '';
      return;
    }
    const now = Date.now();
    if (!force && pid === state.consumersPid && now - state.consumersAt < 15000) return;
    if (pid !== state.consumersPid) state.consumersEntry = undefined;
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
      box.dataset.pid = String(pid);
      box.replaceChildren(el('p', { class: 'empty', text: 'Consumers unavailable: ' + err.message }));
      return;
    }
    if (seq !== consumersSeq) return;
    const entry = data && Array.isArray(data.processes) ? data.processes.find((q) => q.pid === pid) || null : null;
    renderConsumers(entry, findProcess(pid) || p);
  }

  // Library roll-ups. A library's figure from the agent is what it asked for: the requested sizes
  // of its live heap blocks plus the lengths of its live mappings. Mappings are address space (a
  // reservation needs no memory until touched), so that sum can exceed what the process holds. No
  // library can hold more than the process holds, RSS + swap: the figure shown ("held") is the
  // smaller of the two, marked "≤" when capped, and the asked-for figure stays in the detail with
  // its split into heap blocks and mapped (virtual) bytes. The bars are shares of RSS + swap.
  function libraryRollups(entry, p) {
    const libraries = (entry && Array.isArray(entry.libraries) && entry.libraries.length ? entry.libraries : (p && p.libraries) || []);
    const consumers = entry && Array.isArray(entry.consumers) ? entry.consumers : [];
    const split = new Map();
    for (const c of consumers) {
      if (c.metadata && c.metadata.allocatorInternal) continue;
      const s = split.get(c.category) || { heap: 0, mapped: 0 };
      if (c.type === 'malloc') s.heap += c.allocatedMemory || 0; else s.mapped += c.allocatedMemory || 0;
      split.set(c.category, s);
    }
    const cap = p ? (Number(p.rssBytes) || 0) + (Number(p.swapBytes) || 0) : Infinity;
    return libraries.map((lib) => {
      const asked = Number(lib.liveBytes) || 0;
      const s = split.get(lib.library) || { heap: 0, mapped: 0 };
      const held = Math.min(asked, cap);
      return { library: lib.library, asked, heap: s.heap, mapped: s.mapped, other: Math.max(0, asked - s.heap - s.mapped), held, capped: asked > cap, cap, peak: lib.peakBytes, calls: lib.calls };
    }).sort((a, b) => b.held - a.held || b.asked - a.asked || String(a.library).localeCompare(String(b.library)));
  }

  function renderConsumers(entry, p) {
    const box = $('consumers');
    state.consumersEntry = entry;
    box.dataset.pid = p ? String(p.pid) : '';
    // The snapshot whose RSS + swap bounds the library figures.
    const snap = latest();
    box.dataset.snapshot = snap ? String(snap.timestamp) : '';
    // Re-rendered at each snapshot: the stacks a reader opened stay open.
    const open = new Set([...box.querySelectorAll('details[open]')].map((d) => d.dataset.consumerId || d.dataset.folded));
    const libraries = libraryRollups(entry, p);
    const all = (entry && entry.consumers ? entry.consumers : []).slice()
      .sort((a, b) => (b.allocatedMemory || 0) - (a.allocatedMemory || 0));
    // The allocator's own mappings and break growth back heap blocks already counted at their
    // callers: folded into one heap row, never listed as consumers of their own.
    const internal = all.filter((c) => c.metadata && c.metadata.allocatorInternal);
    const consumers = all.filter((c) => !(c.metadata && c.metadata.allocatorInternal));
    if (!libraries.length && !all.length) {
      const msg = isTraced(p)
        ? 'No live allocations attributed yet.'
        : 'The heap of this process is not traced: start tracing to see its consumers per library and their stacks.';
      box.replaceChildren(el('p', { class: 'empty', text: msg }));
      return;
    }
    const frag = document.createDocumentFragment();
    if (libraries.length) {
      const cap = libraries[0].cap;
      frag.append(el('h3', { class: 'sub', text: 'Per library: memory held' }));
      frag.append(el('p', { class: 'rule', text: Number.isFinite(cap)
        ? `A library holds at most what the process holds, RSS + swap = ${fmtBytes(cap)}; bars are shares of it. What a library asked for (heap blocks + mapped address space) is in the detail, and figures above RSS + swap are shown capped (≤).`
        : 'What each library asked for (heap blocks + mapped address space).' }));
      const list = el('ul', { class: 'lib-list', dataset: { capBytes: String(cap) } });
      for (const lib of libraries.slice(0, 12)) {
        const fill = el('span');
        const share = Number.isFinite(cap) && cap > 0 ? lib.held / cap : 0;
        fill.style.width = (100 * Math.min(1, share)).toFixed(1) + '%';
        const detail = [`asked ${fmtBytes(lib.asked)}`];
        if (lib.heap) detail.push(`heap ${fmtBytes(lib.heap)}`);
        if (lib.mapped) detail.push(`mapped ${fmtBytes(lib.mapped)} virtual`);
        if (lib.other) detail.push(`${fmtBytes(lib.other)} in evicted consumers`);
        list.append(el('li', { class: 'lib-row' + (lib.capped ? ' capped' : ''), dataset: { library: lib.library, heldBytes: String(lib.held), askedBytes: String(lib.asked) } },
          el('span', { class: 'name', title: lib.library, text: lib.library }),
          el('div', { class: 'bar' }, fill),
          el('span', { class: 'held', title: lib.capped ? `asked for ${fmtBytes(lib.asked)}, more than the process holds (RSS + swap ${fmtBytes(lib.cap)})` : '', text: (lib.capped ? '≤ ' : '') + fmtBytes(lib.held) }),
          el('span', { class: 'amount', title: `${fmtCount(lib.calls)} calls · peak ${fmtBytes(lib.peak)}`, text: detail.join(' · ') }),
        ));
      }
      frag.append(list);
    }
    if (consumers.length || internal.length) {
      frag.append(el('h3', { class: 'sub', text: `Allocation sites (${consumers.length})` }));
      for (const c of consumers.slice(0, 50)) {
        const stack = Array.isArray(c.stackTrace) ? c.stackTrace : [];
        const virtual = c.type !== 'malloc';
        const details = el('details', { class: 'consumer', dataset: { consumerId: String(c.id) } },
          el('summary', null,
            el('span', { class: 'cname', title: c.name },
              el('span', { class: 'kind', text: c.type || '' }), c.name || String(c.id)),
            el('span', { class: 'cmeta', text: c.category || '' }),
            el('span', { class: 'cmeta' }, el('span', { class: 'cbytes', text: fmtBytes(c.allocatedMemory) }), virtual ? el('span', { class: 'virt-word', text: ' virtual' }) : null, ` · ${fmtCount(c.activeAllocations)} live`),
          ),
          el('div', { class: 'facts', text: `peak ${fmtBytes(c.peakMemory)} · ${fmtCount(c.totalCalls)} calls · average ${fmtBytes(c.averageSize)}` }),
          stack.length ? el('ol', { class: 'stack' }, stack.map((f) => el('li', { text: f }))) : el('div', { class: 'facts', text: 'no stack captured' }),
        );
        frag.append(details);
      }
      if (internal.length) {
        const bytes = internal.reduce((n, c) => n + (c.allocatedMemory || 0), 0);
        const owners = [...new Set(internal.map((c) => c.category || '?'))].join(', ');
        frag.append(el('details', { class: 'consumer folded', dataset: { folded: 'allocator', bytes: String(bytes), count: String(internal.length) } },
          el('summary', null,
            el('span', { class: 'cname' }, el('span', { class: 'kind', text: 'heap' }), `allocator's own memory (${owners})`),
            el('span', { class: 'cmeta', text: `${internal.length} mapping${internal.length === 1 ? '' : 's'}` }),
            el('span', { class: 'cmeta' }, el('span', { class: 'cbytes', text: fmtBytes(bytes) }), el('span', { class: 'virt-word', text: ' virtual' })),
          ),
          el('div', { class: 'facts', text: 'Arenas and break growth the allocator made to hold heap blocks; those blocks are counted at the sites that asked for them, so this is in no library\'s figure.' }),
          el('ul', { class: 'folded-list' }, internal.map((c) => el('li', { text: `${c.type || ''} ${c.name || c.id} · ${fmtBytes(c.allocatedMemory)}` }))),
        ));
      }
    }
    for (const d of frag.querySelectorAll('details')) {
      if (open.has(d.dataset.consumerId || d.dataset.folded)) d.open = true;
    }
    box.replaceChildren(frag);
  }

  // At each snapshot the library figures follow the process's RSS + swap (the consumers themselves
  // are fetched again every 15 s).
  function rerenderConsumers() {
    const pid = state.selectedPid;
    if (pid === null || state.consumersPid !== pid || state.consumersEntry === undefined) return;
    if ($('consumers').dataset.pid !== String(pid)) return;
    renderConsumers(state.consumersEntry, findProcess(pid));
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
    const recs = Array.isArray(ctx.recommendations) ? ctx.recommendations.map(unitsText) : [];
    const item = el('li', { class: 'alert ' + (a.severity || 'info'), dataset: { alertId: String(a.id) } },
      el('div', { class: 'row' },
        el('span', { class: 'sev ' + (a.severity || 'info'), text: a.severity || 'info' }),
        active ? el('button', { type: 'button', class: 'btn btn-small btn-ghost resolve', text: 'Resolve', onclick: () => resolveAlert(a.id, item) }) : null,
      ),
      el('div', { class: 'msg', text: unitsText(a.message || '') }),
      el('div', { class: 'meta', text: meta }),
      !active ? el('div', { class: 'meta', text: `resolved ${fmtDateTime(a.resolvedAt)}${a.resolvedBy ? ' by ' + a.resolvedBy : ''}` }) : null,
      recs.length ? el('details', null, el('summary', { text: `${recs.length} recommendation${recs.length > 1 ? 's' : ''}` }), el('ul', null, recs.map((r) => el('li', { text: r })))) : null,
    );
    return item;
  }

  // A condition seen true that has not alerted: it waits for its `for:` (or a young process's grace
  // period), or a budget held it back when it was due.
  function pendingItem(p) {
    const when = p.suppressed ? 'held back by a budget' : `alerts at ${fmtTime(p.firesAt)} if it still holds`;
    return el('li', { class: 'alert pending ' + (p.severity || 'info'), dataset: { pid: String(p.pid), trigger: String(p.trigger || '') } },
      el('div', { class: 'row' }, el('span', { class: 'sev ' + (p.severity || 'info'), text: p.severity || 'info' })),
      el('div', { class: 'msg', text: unitsText(p.message || '') }),
      el('div', { class: 'meta', text: [`${p.comm || '?'} (pid ${p.pid})`, p.trigger, `true since ${fmtTime(p.since)}`, when].join(' · ') }),
    );
  }

  // Suppressed candidates: how many, of which type, of which processes.
  function renderSuppressed(s) {
    const node = $('alerts-suppressed');
    if (!s || !s.total) {
      node.textContent = 'No alert held back by a budget.';
      node.classList.remove('hot');
      return;
    }
    const types = Object.entries(s.byType || {}).map(([t, n]) => `${t} ${fmtCount(n)}`).join(', ');
    const procs = (s.byProcess || []).slice(0, 5).map((p) => `${p.comm || '?'}${p.container ? ' [' + p.container + ']' : ''} ${fmtCount(p.count)}`);
    const rest = (s.byProcess || []).length > 5 || s.other ? ', …' : '';
    node.textContent = `Held back by a budget since start: ${fmtCount(s.total)} (${types}); by process: ${procs.join(', ')}${rest}`;
    node.classList.add('hot');
  }

  function renderAlerts() {
    const active = [...state.alertsActive.values()].sort((a, b) => b.timestamp - a.timestamp);
    const resolved = [...state.alertsResolved.values()].sort((a, b) => (b.resolvedAt || b.timestamp) - (a.resolvedAt || a.timestamp)).slice(0, RESOLVED_SHOWN);
    const ulA = $('alerts-active');
    ulA.replaceChildren(...(active.length ? active.map((a) => alertItem(a, true)) : [el('li', { class: 'empty', text: 'No active alerts.' })]));
    const ulR = $('alerts-resolved');
    ulR.replaceChildren(...(resolved.length ? resolved.map((a) => alertItem(a, false)) : [el('li', { class: 'empty', text: 'None yet.' })]));
    const pending = state.alertsPending;
    $('alerts-pending').replaceChildren(...(pending.length ? pending.map(pendingItem) : [el('li', { class: 'empty', text: 'None.' })]));
    renderSuppressed(state.alertsSuppressed);
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
    // A resolution is final: an answer fetched before an alert was resolved (here or by the stream)
    // must not bring it back as active. Active alerts are replaced by the answer's.
    state.alertsActive.clear();
    state.alertsPending = Array.isArray(data && data.pending) ? data.pending : [];
    state.alertsSuppressed = (data && data.suppressed) || null;
    for (const a of (data && data.recent) || []) upsertAlert(a);
    for (const a of (data && data.active) || []) upsertAlert(Object.assign({}, a, { resolved: !!a.resolved }));
    if (state.alertsResolved.size > 400) {
      const keep = [...state.alertsResolved.values()].sort((x, y) => (y.resolvedAt || y.timestamp) - (x.resolvedAt || x.timestamp)).slice(0, 200);
      state.alertsResolved = new Map(keep.map((x) => [x.id, x]));
    }
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

  // The "top library" of an analysis row: its most concerning library (the agent lists them most
  // concerning first), with its size at the analysis, capped like the roll-ups at RSS + swap.
  function topLibraryText(r) {
    const libs = Array.isArray(r.libraries) ? r.libraries.filter((l) => l && l.library) : [];
    if (!libs.length) return '–';
    const lib = libs[0];
    const pat = lib.pattern || {};
    const p = findProcess(r.pid);
    const cap = p ? (Number(p.rssBytes) || 0) + (Number(p.swapBytes) || 0) : Infinity;
    const bytes = Number(pat.currentBytes);
    const size = Number.isFinite(bytes) && bytes > 0 ? (bytes > cap ? '≤ ' + fmtBytes(cap) : fmtBytes(bytes)) : null;
    return [lib.library, size, pat.type && pat.type !== 'stable' ? `(${pat.type})` : null].filter(Boolean).join(' ');
  }

  function renderAnalysis(results) {
    for (const r of results) {
      if (r && r.pattern && r.pid !== undefined) {
        state.patterns.set(r.pid, r.pattern);
        if (r.metric) state.patternMetrics.set(r.pid, r.metric);
      }
    }
    const box = $('analysis-result');
    $('analysis-time').textContent = '· ' + fmtTime(Date.now()) + ` · ${results.length} process${results.length === 1 ? '' : 'es'}`;
    if (!results.length) {
      box.replaceChildren(el('p', { class: 'empty', text: 'Not enough snapshots for a pattern yet.' }));
    } else {
      const sorted = results.slice().sort((a, b) => patternRank(b.pattern && b.pattern.type) - patternRank(a.pattern && a.pattern.type) || ((b.pattern && b.pattern.growthRate) || 0) - ((a.pattern && a.pattern.growthRate) || 0));
      const body = el('tbody');
      for (const r of sorted) {
        const pat = r.pattern || {};
        body.append(el('tr', { dataset: { pid: String(r.pid) }, onclick: () => selectPid(r.pid) },
          el('td', { class: 'num', text: String(r.pid) }),
          el('td', { class: 'comm', text: r.comm || '?' }),
          el('td', { text: metricLabel(r.metric) }),
          el('td', null, el('span', { class: 'tag ' + (pat.type || ''), text: `${pat.type || '?'} ${Math.round(pat.confidence || 0)}%` })),
          el('td', { class: 'num', text: Number.isFinite(pat.growthRate) ? fmtRate(pat.growthRate * MiB) : '–' }),
          el('td', { class: 'num', text: Number.isFinite(pat.duration) ? fmtDuration(pat.duration * 60) : '–' }),
          el('td', { text: pat.severity || '' }),
          el('td', { class: 'toplib', dataset: { col: 'topLibrary' }, text: topLibraryText(r) }),
          el('td', { class: 'rec', text: unitsText(pat.recommendation || '') }),
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
    rerenderConsumers();
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
      if (!p.pattern) continue;
      const old = state.patterns.get(p.pid);
      if (!old || old.type !== p.pattern.type) state.patternMetrics.delete(p.pid);
      state.patterns.set(p.pid, p.pattern);
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
        if (msg.type === 'alert:created' && msg.data) toast(`${(msg.data.severity || 'alert').toUpperCase()}: ${unitsText(msg.data.message || '')}`, msg.data.severity === 'critical' ? 'error' : 'warn');
        break;
      case 'pattern:detected': {
        const d = msg.data || {};
        if (d.pid !== undefined && d.pattern) {
          state.patterns.set(d.pid, d.pattern);
          if (d.metric) state.patternMetrics.set(d.pid, d.metric);
        }
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

  // Hooks for the end-to-end test (memtrace/dashboard/e2e.mjs).
  window.memtraceDashboard = {
    chartPoints: () => (memoryChart ? memoryChart.data.datasets[0].data.length : 0),
    selectedPid: () => state.selectedPid,
    connection: () => state.wsState,
    select: (pid) => selectPid(Number(pid)),
    // Timestamp of the snapshot the page shows.
    snapshotTimestamp: () => { const s = latest(); return s ? Number(s.timestamp) : null; },
    refreshStatus: () => loadStatus().then(() => { renderSelected(); return true; }),
    process: (pid) => { const p = findProcess(Number(pid)); return p ? JSON.parse(JSON.stringify(p)) : null; },
    axisLabels: () => ({ memory: axisLabels(memoryChart), ratio: axisLabels(ratioChart) }),
    growth: (pid) => {
      const { chosen, fits } = chooseGrowth(seriesFor(pid === undefined ? state.selectedPid : Number(pid)));
      return { chosen, fits };
    },
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
