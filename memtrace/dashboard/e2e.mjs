// End-to-end check of the memtrace dashboard in headless Chromium (playwright-core, Debian's
// /usr/bin/chromium; no browser download).
//
//   MEMTRACE_URL=http://127.0.0.1:10000   agent base URL (required)
//   MEMTRACE_TOKEN=...                    bearer token, put into localStorage before the page loads
//   SCREENSHOT=/tmp/dashboard.png         full-page screenshot path (default: dashboard-e2e.png)
//   MEMTRACE_E2E_TIMEOUT=30               seconds each wait may take (default 30)
//   CHROMIUM=/usr/bin/chromium            browser executable
//   MEMTRACE_EXPECT=/tmp/expect.json      optional: figures a test knows (see `expect` below)
//   SHOTS_DIR=/tmp                         where the extra screenshots go (default: next to SCREENSHOT)
//
// Besides the page working (load, WebSocket, chart, table, alerts, analysis, CSP), it checks that
// what the page shows agrees with the API: every figure of the process table equals the snapshot's
// figure in binary units, axes have distinct labels in one unit, no decimal unit (MB) anywhere,
// traced processes with their reasons, the agent's counters, per-library figures within RSS +
// swap, allocator-internal consumers folded into the heap row, a top library that is a name and a
// size or a dash.
//
// MEMTRACE_EXPECT (JSON) adds checks of figures a test knows from its workloads:
//   { "growth": [{"pid": 1, "name": "leaker", "metrics": ["rss", "heapLive"], "minSamples": 8}],
//     "cells": [{"pid": 1, "col": "heapLiveBytes", "text": "4.00 MiB"}],
//     "cappedLibrary": [{"pid": 1, "library": "memops"}],
//     "folded": [1],
//     "comm": [{"pid": 1, "text": "<b>x"}],
//     "analysis": true,           (the forced analysis must have rows)
//     "topLibrary": [{"pid": 1, "library": "leaker"}],
//     "finalSelect": 1 }
//
// Exits 0 when every check passed, 1 otherwise; the last line is `e2e: N passed, M failed`.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const base = (process.env.MEMTRACE_URL || '').replace(/\/+$/, '');
const token = process.env.MEMTRACE_TOKEN || '';
const screenshot = process.env.SCREENSHOT || 'dashboard-e2e.png';
const timeoutMs = Number(process.env.MEMTRACE_E2E_TIMEOUT || 30) * 1000;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const expect = process.env.MEMTRACE_EXPECT ? JSON.parse(readFileSync(process.env.MEMTRACE_EXPECT, 'utf8')) : {};
const shotsDir = process.env.SHOTS_DIR || dirname(screenshot);

// The API, read by this script (not through the page).
async function apiGet(path) {
  const res = await fetch(base + '/api/memory' + path, { headers: token ? { Authorization: 'Bearer ' + token } : {} });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status}`);
  return res.json();
}

// "123 MiB" -> its value, unit and precision. Binary units only, a value from 1 to 1023.x (bytes:
// an integer), as many digits as three significant ones need.
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
function parseBytes(text) {
  const m = /^(-?)(\d+(?:\.(\d+))?) (B|KiB|MiB|GiB|TiB|PiB)$/.exec(String(text).trim());
  if (!m) return null;
  const u = UNITS.indexOf(m[4]);
  const digits = m[3] ? m[3].length : 0;
  const v = Number(m[2]);
  return { bytes: (m[1] ? -1 : 1) * v * 1024 ** u, unit: u, digits, value: v };
}
// Whether `text` is `bytes` in binary units, to the precision shown, in the unit that fits.
function showsBytes(text, bytes) {
  const p = parseBytes(text);
  if (!p) return `"${text}" is not a size in binary units`;
  const tol = 0.5 * 10 ** -p.digits * 1024 ** p.unit + 1e-6;
  if (Math.abs(p.bytes - bytes) > tol) return `"${text}" is ${p.bytes} bytes, the API says ${bytes}`;
  const abs = Math.abs(bytes);
  const fits = abs < 1024 ? p.unit === 0 : p.value >= 1 && p.value <= 1024 && abs >= 1024 ** p.unit;
  if (!fits) return `"${text}" is not in the unit that fits ${bytes} bytes`;
  return null;
}

if (!base) {
  console.error('e2e: set MEMTRACE_URL to the agent, e.g. MEMTRACE_URL=http://127.0.0.1:10000');
  console.log('e2e: 0 passed, 1 failed');
  process.exit(2);
}

let passed = 0;
let failed = 0;
function pass(name, detail) {
  passed++;
  console.log(`ok   ${name}${detail ? ' — ' + detail : ''}`);
}
function fail(name, detail) {
  failed++;
  console.log(`FAIL ${name}${detail ? ' — ' + detail : ''}`);
}
async function check(name, fn) {
  try {
    const detail = await fn();
    pass(name, detail);
    return true;
  } catch (err) {
    fail(name, err && err.message ? err.message.split('\n')[0] : String(err));
    return false;
  }
}

// Before a screenshot: at the top of the page, without the passing notifications (they would
// cover the charts).
async function quiet(page) {
  await page.evaluate(() => {
    window.scrollTo(0, 0);
    for (const t of document.querySelectorAll('#toasts .toast')) t.remove();
  });
}

// Selects `pid` in the page and waits until its consumers are shown.
async function selectAndWait(page, pid) {
  await page.evaluate((p) => window.memtraceDashboard.select(p), pid);
  await page.waitForFunction((p) => window.memtraceDashboard.selectedPid() === p && document.querySelector('#consumers').dataset.pid === String(p), pid, { timeout: timeoutMs });
}

async function figureChecks(page) {
  const metricLabels = { rss: 'RSS', heapLive: 'Heap live', external: 'External' };

  // The growth card, on processes whose growing metric the test knows.
  for (const g of expect.growth || []) {
    await check(`growth card: ${g.name || 'pid ' + g.pid} names ${g.metrics.map((m) => metricLabels[m]).join(' or ')}`, async () => {
      await page.evaluate((p) => window.memtraceDashboard.select(p), g.pid);
      try {
        await page.waitForFunction(([p, ms, n]) => {
          const v = document.querySelector('#growth-value');
          const g = window.memtraceDashboard.growth(p);
          return window.memtraceDashboard.selectedPid() === p && v.dataset.confident === 'true' && ms.includes(v.dataset.metric) && g.chosen && g.chosen.n >= n;
        }, [g.pid, g.metrics, g.minSamples || 4], { timeout: timeoutMs });
      } catch (err) {
        const state = await page.evaluate(() => ({ metric: document.querySelector('#growth-value').dataset.metric, text: document.querySelector('#card-growth').innerText }));
        throw new Error(`card shows ${state.metric}: ${state.text.replace(/\s+/g, ' ')}`);
      }
      const card = await page.evaluate(() => ({ metric: document.querySelector('#growth-value').dataset.metric, label: document.querySelector('#growth-metric').textContent, value: document.querySelector('#growth-value').textContent, detail: document.querySelector('#growth-detail').textContent }));
      if (!card.label.includes(metricLabels[card.metric])) throw new Error(`label "${card.label}" does not name ${card.metric}`);
      if (!/^\+\d/.test(card.value) || !/\/min$/.test(card.value)) throw new Error(`value "${card.value}" is not a growth per minute`);
      await quiet(page);
      const top = await page.locator('.cards').boundingBox();
      const bottom = await page.locator('.charts').boundingBox();
      const path = join(shotsDir, `dashboard-growth-${(g.name || g.pid).toString().replace(/[^\w-]/g, '_')}.png`);
      await page.screenshot({ path, clip: { x: 0, y: 0, width: 1400, height: Math.ceil(bottom.y + bottom.height - top.y + top.y + 8) } });
      return `${card.label.replace(/^·\s*/, '')} ${card.value} (${card.detail}); ${path}`;
    });
  }

  await check('process table: every figure equals the API snapshot in binary units', async () => {
    // Read the page in one go (it renders between tasks, not during this evaluate).
    const shown = await page.evaluate(() => ({
      ts: window.memtraceDashboard.snapshotTimestamp(),
      rows: [...document.querySelectorAll('#process-table tr[data-pid]')].map((tr) => {
        const cells = {};
        for (const td of tr.querySelectorAll('td[data-col]')) cells[td.dataset.col] = td.textContent;
        const comm = tr.querySelector('td.comm');
        return { pid: Number(tr.dataset.pid), cells, commText: comm.querySelector('.comm-text').textContent, commElements: [...comm.querySelectorAll('*')].map((e) => e.className) };
      }),
    }));
    const history = await apiGet('/history?count=200');
    const snap = history.find((s) => Number(s.timestamp) === shown.ts);
    if (!snap) throw new Error(`snapshot ${shown.ts} not in the API's history`);
    const byPid = new Map(snap.processes.map((p) => [p.pid, p]));
    const problems = [];
    let compared = 0;
    for (const row of shown.rows) {
      const p = byPid.get(row.pid);
      if (!p) { problems.push(`pid ${row.pid} not in the snapshot`); continue; }
      // An unreadable (empty) command name is shown as "?".
      if (row.commText !== (p.comm || '?')) problems.push(`pid ${row.pid}: command ${JSON.stringify(row.commText)}, API ${JSON.stringify(p.comm)}`);
      if (row.commElements.some((c) => c !== 'dot-traced' && c !== 'comm-text')) problems.push(`pid ${row.pid}: markup in the command cell: ${row.commElements}`);
      const cols = ['rssBytes', 'swapBytes', 'mappedAnonBytes', 'mappedFileBytes', 'brkBytes'];
      if (p.heapTraced) cols.push('heapLiveBytes');
      if (Number.isFinite(p.externalBytes)) cols.push('externalBytes');
      for (const col of cols) {
        const why = showsBytes(row.cells[col], p[col]);
        if (why) problems.push(`pid ${row.pid} ${col}: ${why}`);
        compared++;
      }
      if (!p.heapTraced && row.cells.heapLiveBytes !== '–') problems.push(`pid ${row.pid}: heap shown for an untraced process`);
    }
    if (problems.length) throw new Error(problems.slice(0, 4).join('; '));
    return `${compared} figures of ${shown.rows.length} processes at snapshot ${shown.ts}`;
  });

  for (const c of expect.cells || []) {
    await check(`pid ${c.pid} ${c.col} shows ${c.text}`, async () => {
      const sel = `#process-table tr[data-pid="${c.pid}"] td[data-col="${c.col}"]`;
      try {
        await page.waitForFunction(([s, t]) => { const td = document.querySelector(s); return td && td.textContent === t; }, [sel, c.text], { timeout: timeoutMs });
      } catch (err) {
        throw new Error(`shows ${JSON.stringify(await page.textContent(sel).catch(() => null))}`);
      }
      return c.text;
    });
  }
  for (const c of expect.comm || []) {
    await check(`pid ${c.pid}: its name is shown as text, not markup`, async () => {
      const got = await page.evaluate((pid) => {
        const tr = document.querySelector(`#process-table tr[data-pid="${pid}"]`);
        return tr ? { text: tr.querySelector('.comm-text').textContent, markup: tr.querySelectorAll('td.comm b, td.comm i, td.comm img').length } : null;
      }, c.pid);
      if (!got) throw new Error('row missing');
      if (got.text !== c.text || got.markup) throw new Error(`shows ${JSON.stringify(got)}`);
      return JSON.stringify(got.text);
    });
  }

  await check('axes: distinct labels, one unit per byte axis', async () => {
    const labels = await page.evaluate(() => window.memtraceDashboard.axisLabels());
    const problems = [];
    for (const [name, axis] of Object.entries(labels)) {
      for (const [dir, list] of Object.entries(axis)) {
        const nonEmpty = list.filter((l) => l !== '');
        if (new Set(nonEmpty).size !== nonEmpty.length) problems.push(`${name}.${dir} repeats a label: ${nonEmpty.join(' | ')}`);
      }
    }
    const units = new Set(labels.memory.y.filter(Boolean).map((l) => l.split(' ')[1]));
    if (units.size > 1) problems.push('memory axis mixes units: ' + labels.memory.y.join(' | '));
    if (labels.memory.y.some((l) => l && !/^\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)$/.test(l))) problems.push('memory axis label not a size: ' + labels.memory.y.join(' | '));
    if (labels.memory.y.filter(Boolean).length < 2) problems.push('memory axis has fewer than 2 labels');
    if (problems.length) throw new Error(problems.join('; '));
    return `memory ${labels.memory.y.join(', ')} · time ${labels.memory.x.join(', ')} · ratio ${labels.ratio.y.join(', ') || '(no data)'}`;
  });

  // The page reads /status every 15 s: it reads it again here, between two reads of the API, so
  // what it shows lies between them (counters only grow; a process traced in both is listed).
  const before = await apiGet('/status');
  await page.evaluate(() => window.memtraceDashboard.refreshStatus());
  const status = await apiGet('/status');
  await check('traced processes are listed with their reason', async () => {
    const rows = await page.$$eval('#traced-table tr[data-pid]', (trs) => trs.map((tr) => ({ pid: Number(tr.dataset.pid), reason: tr.dataset.reason, text: tr.querySelector('td.reason').textContent })));
    const both = (status.traced || []).filter((t) => (before.traced || []).some((b) => b.pid === t.pid && b.reason === t.reason));
    const missing = both.filter((t) => !rows.some((r) => r.pid === t.pid && r.reason === t.reason && r.text.startsWith(t.reason)));
    if (missing.length) throw new Error('not listed: ' + missing.map((t) => `${t.pid} (${t.reason})`).join(', ') + '; shown: ' + JSON.stringify(rows));
    if (!both.length) return 'none traced';
    return rows.map((r) => `${r.pid} ${r.reason}`).join(', ');
  });
  await check('agent counters equal the status', async () => {
    const shown = await page.$$eval('#agent-counters [data-counter]', (items) => Object.fromEntries(items.map((i) => [i.dataset.counter, i.querySelector('dd').textContent])));
    const counters = (st) => ({ eventsLost: st.eventsLost, snapshotsDropped: st.snapshotsDropped, ...(st.failures || {}) });
    const low = counters(before), high = counters(status);
    const problems = [];
    for (const [k, v] of Object.entries(high)) {
      if (v === undefined) continue;
      const n = Number(String(shown[k] ?? '').replace(/,/g, ''));
      if (shown[k] === undefined) problems.push(`${k} not shown`);
      else if (!(n >= low[k] && n <= v)) problems.push(`${k}: shown ${shown[k]}, status ${low[k]} then ${v}`);
    }
    if (problems.length) throw new Error(problems.join('; '));
    return Object.entries(high).map(([k, v]) => `${k} ${v}`).join(', ');
  });

  // Per traced process: library roll-ups within RSS + swap, allocator-internal consumers folded.
  const latest = await apiGet('/processes');
  const present = new Set(latest.map((p) => p.pid));
  for (const t of (status.traced || []).filter((t) => present.has(t.pid))) {
    const name = `pid ${t.pid} (${t.comm}): library figures within RSS + swap, allocator's own mappings folded`;
    const run = async () => {
      await selectAndWait(page, t.pid);
      const shown = await page.evaluate(() => {
        const box = document.querySelector('#consumers');
        const list = box.querySelector('.lib-list');
        return {
          cap: list ? Number(list.dataset.capBytes) : null,
          libs: [...box.querySelectorAll('.lib-row')].map((li) => ({ library: li.dataset.library, held: Number(li.dataset.heldBytes), asked: Number(li.dataset.askedBytes), text: li.querySelector('.held').textContent })),
          ids: [...box.querySelectorAll('details.consumer[data-consumer-id]')].map((d) => d.dataset.consumerId),
          folded: box.querySelector('[data-folded="allocator"]') ? { bytes: Number(box.querySelector('[data-folded="allocator"]').dataset.bytes), count: Number(box.querySelector('[data-folded="allocator"]').dataset.count) } : null,
          ts: Number(box.dataset.snapshot),
        };
      });
      const api = await apiGet('/consumers?pid=' + t.pid);
      const report = (api.processes || []).find((p) => p.pid === t.pid) || { consumers: [] };
      const internal = report.consumers.filter((c) => c.metadata && c.metadata.allocatorInternal);
      const problems = [];
      // RSS + swap of the process in the snapshot the page bounded the figures with, from the API.
      const snap = (await apiGet('/history?count=200')).find((s) => Number(s.timestamp) === shown.ts);
      const proc = snap && snap.processes.find((p) => p.pid === t.pid);
      if (!proc) throw new Error(`pid ${t.pid} not in the API's snapshot ${shown.ts}`);
      const cap = proc.rssBytes + proc.swapBytes;
      if (shown.libs.length && shown.cap !== cap) problems.push(`cap ${shown.cap} is not RSS + swap ${cap}`);
      for (const l of shown.libs) {
        if (!(l.held <= cap)) problems.push(`${l.library} shows ${l.held} > RSS + swap ${cap}`);
        const p = parseBytes(l.text.replace(/^≤ /, ''));
        if (!p || p.bytes > cap + 0.5 * 10 ** -p.digits * 1024 ** p.unit) problems.push(`${l.library} reads "${l.text}"`);
        if (l.asked > cap && !l.text.startsWith('≤ ')) problems.push(`${l.library} asked ${l.asked} > ${cap} but is not marked capped`);
      }
      const listed = internal.filter((c) => shown.ids.includes(c.id));
      if (listed.length) problems.push('listed on their own: ' + listed.map((c) => c.id).join(', '));
      if (internal.length && !shown.folded) problems.push(`${internal.length} allocator-internal consumers but no folded heap row`);
      if (problems.length) throw new Error(problems.join('; '));
      const capped = shown.libs.filter((l) => l.asked > cap).length;
      return `${shown.libs.length} libraries (${capped} capped at ${cap} bytes), ${internal.length} allocator-internal folded`;
    };
    try {
      pass(name, await run());
    } catch (err) {
      // A process traced by a drill-down may exit while it is looked at: nothing to check then.
      const alive = (await apiGet('/processes').catch(() => [])).some((p) => p.pid === t.pid);
      if (alive) fail(name, err && err.message ? err.message.split('\n')[0] : String(err));
      else console.log(`skip ${name} — the process exited during the check`);
    }
  }

  for (const c of expect.cappedLibrary || []) {
    await check(`pid ${c.pid}: library ${JSON.stringify(c.library)} asked for more than RSS + swap and is shown capped`, async () => {
      await selectAndWait(page, c.pid);
      const proc = (await apiGet('/processes/' + c.pid)).snapshot;
      const cap = proc.rssBytes + proc.swapBytes;
      const row = await page.evaluate((lib) => {
        const li = [...document.querySelectorAll('#consumers .lib-row')].find((l) => l.dataset.library === lib);
        return li ? { held: li.querySelector('.held').textContent, name: li.querySelector('.name').textContent, asked: Number(li.dataset.askedBytes), amount: li.querySelector('.amount').textContent } : null;
      }, c.library);
      if (!row) throw new Error('no such library row');
      if (row.name !== c.library) throw new Error(`name shown as ${JSON.stringify(row.name)}`);
      if (!(row.asked > cap)) throw new Error(`it asked ${row.asked}, not more than ${cap}: nothing to cap`);
      const why = showsBytes(row.held.replace(/^≤ /, ''), cap);
      if (!row.held.startsWith('≤ ') || why) throw new Error(`shows "${row.held}" for RSS + swap ${cap}: ${why || 'not marked ≤'}`);
      const path = join(shotsDir, 'dashboard-consumers.png');
      await quiet(page);
      await page.locator('#consumers-panel').screenshot({ path });
      return `"${row.held}" (${row.amount}); ${path}`;
    });
  }
  for (const pid of expect.folded || []) {
    await check(`pid ${pid}: the allocator's own mappings are one heap row with their bytes`, async () => {
      await selectAndWait(page, pid);
      const api = await apiGet('/consumers?pid=' + pid);
      const report = (api.processes || []).find((p) => p.pid === pid) || { consumers: [] };
      const internal = report.consumers.filter((c) => c.metadata && c.metadata.allocatorInternal);
      if (!internal.length) throw new Error('the API lists no allocator-internal consumer for this process');
      const folded = await page.evaluate(() => {
        const f = document.querySelector('#consumers [data-folded="allocator"]');
        return f ? { bytes: Number(f.dataset.bytes), count: Number(f.dataset.count), text: f.querySelector('summary').textContent } : null;
      });
      const bytes = internal.reduce((n, c) => n + c.allocatedMemory, 0);
      if (!folded || folded.bytes !== bytes || folded.count !== internal.length) throw new Error(`folded ${JSON.stringify(folded)}, API ${internal.length} of ${bytes} bytes`);
      return `${internal.map((c) => c.name).join(', ')} → ${folded.text}`;
    });
  }
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const pageErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  if (token) {
    await context.addInitScript((t) => {
      try { window.localStorage.setItem('memtraceToken', t); } catch (_) { /* opaque origin */ }
    }, token);
  }
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push('page error: ' + err.message));
  page.on('console', (msg) => {
    const text = msg.text();
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(text)) pageErrors.push('CSP: ' + text);
  });

  const url = base + '/api/memory/dashboard';
  const loaded = await check('dashboard loads', async () => {
    const res = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: timeoutMs });
    if (!res) throw new Error(`no response from ${url}`);
    if (!res.ok()) throw new Error(`${url} answered HTTP ${res.status()}`);
    const csp = res.headers()['content-security-policy'];
    return `HTTP ${res.status()}${csp ? ', CSP: ' + csp : ', no CSP header'}`;
  });

  if (loaded) {
    await check('charting library loaded', async () => {
      await page.waitForFunction(() => typeof window.Chart === 'function' && !!window.memtraceDashboard, null, { timeout: timeoutMs });
      return 'Chart.js ' + (await page.evaluate(() => window.Chart.version));
    });

    await check('WebSocket connected', async () => {
      try {
        await page.waitForFunction(() => {
          const s = document.querySelector('#connection-status');
          return s && /(^|\s)connected/i.test(s.textContent) && s.dataset.state === 'connected';
        }, null, { timeout: timeoutMs });
      } catch (err) {
        const text = await page.textContent('#connection-status').catch(() => '?');
        const tokenAsked = await page.isVisible('#token-form').catch(() => false);
        const hint = tokenAsked ? ' (the agent asks for a token: set MEMTRACE_TOKEN)' : token ? '' : ' (no MEMTRACE_TOKEN given: does the WebSocket need one?)';
        throw new Error(`status still "${text}" after ${timeoutMs / 1000}s${hint}`);
      }
      return await page.textContent('#connection-status');
    });

    await check('memory chart has points', async () => {
      try {
        await page.waitForFunction(() => window.memtraceDashboard && window.memtraceDashboard.chartPoints() > 0, null, { timeout: timeoutMs });
      } catch (err) {
        throw new Error(`chartPoints() is ${await page.evaluate(() => window.memtraceDashboard && window.memtraceDashboard.chartPoints())} after ${timeoutMs / 1000}s`);
      }
      const n = await page.evaluate(() => window.memtraceDashboard.chartPoints());
      const box = await page.locator('#chart-memory').boundingBox();
      if (!box || box.width < 100 || box.height < 100) throw new Error('#chart-memory canvas is not laid out');
      return `${n} points for pid ${await page.evaluate(() => window.memtraceDashboard.selectedPid())}`;
    });

    await check('process table has rows', async () => {
      await page.waitForSelector('#process-table tr[data-pid]', { timeout: timeoutMs });
      return `${await page.locator('#process-table tr[data-pid]').count()} rows`;
    });

    await check('table sorts on header click', async () => {
      const th = page.locator('#process-table-el th[data-sort="pid"]');
      await th.click();
      const first = await th.getAttribute('aria-sort');
      await th.click();
      const second = await th.getAttribute('aria-sort');
      if (first === second || first === 'none' || second === 'none') throw new Error(`aria-sort went ${first} -> ${second}`);
      const pids = await page.$$eval('#process-table tr[data-pid]', (rows) => rows.map((r) => Number(r.dataset.pid)));
      const sorted = pids.slice().sort((a, b) => (second === 'ascending' ? a - b : b - a));
      if (pids.join() !== sorted.join()) throw new Error('rows are not in PID order');
      await page.locator('#process-table-el th[data-sort="rssBytes"]').click();
      return `pid ${first} then ${second}`;
    });

    await check('row click selects the process', async () => {
      const rows = page.locator('#process-table tr[data-pid]');
      const count = await rows.count();
      const row = rows.nth(count > 1 ? 1 : 0);
      const pid = Number(await row.getAttribute('data-pid'));
      await row.click();
      await page.waitForFunction((p) => window.memtraceDashboard.selectedPid() === p, pid, { timeout: timeoutMs });
      await page.waitForFunction(() => {
        const c = document.querySelector('#consumers');
        return c && !/Select a process/.test(c.textContent);
      }, null, { timeout: timeoutMs });
      // Back to the default choice, so the screenshot shows the most telling process.
      await rows.first().click();
      return `pid ${pid}`;
    });

    await figureChecks(page);

    const activeIds = await page.$$eval('#alerts-active [data-alert-id]', (items) => items.map((i) => i.dataset.alertId)).catch(() => []);
    if (activeIds.length) {
      const id = activeIds[0];
      await check('resolve an active alert', async () => {
        const sel = (root) => `${root} [data-alert-id="${id.replace(/"/g, '\\"')}"]`;
        await page.locator(sel('#alerts-active') + ' button.resolve').click();
        try {
          await page.waitForFunction(
            ([a, r]) => !document.querySelector(a) && !!document.querySelector(r),
            [sel('#alerts-active'), sel('#alerts-resolved')],
            { timeout: timeoutMs },
          );
        } catch (err) {
          const tokenAsked = await page.isVisible('#token-form').catch(() => false);
          const where = await page.evaluate(([a, r]) => ({ active: !!document.querySelector(a), resolved: !!document.querySelector(r), toasts: [...document.querySelectorAll('#toasts .toast')].map((t) => t.textContent) }), [sel('#alerts-active'), sel('#alerts-resolved')]);
          throw new Error(`alert ${id} did not move to resolved${tokenAsked ? ': the agent wants a token (set MEMTRACE_TOKEN)' : ''}: ${JSON.stringify(where)}`);
        }
        return `alert ${id}`;
      });
    } else {
      console.log('skip resolve an active alert — no active alert');
    }

    await check('force analysis shows a result', async () => {
      await page.click('#btn-analyze');
      try {
        await page.waitForSelector('#analysis-panel:not([hidden])', { timeout: timeoutMs });
      } catch (err) {
        const tokenAsked = await page.isVisible('#token-form').catch(() => false);
        throw new Error(`no analysis result${tokenAsked ? ': the agent wants a token (set MEMTRACE_TOKEN)' : ''}`);
      }
      return (await page.textContent('#analysis-time')).replace(/^\s*·\s*/, '');
    });

    const analysisRows = await page.$$eval('#analysis-result td.toplib', (tds) => tds.length).catch(() => 0);
    if (analysisRows || expect.analysis) await check('analysis: every top library is a name and a size, or a dash', async () => {
      const cells = await page.$$eval('#analysis-result td.toplib', (tds) => tds.map((t) => t.textContent));
      if (!cells.length) throw new Error('no analysis rows');
      const bad = cells.filter((c) => {
        if (c === '–') return false;
        if (/(^|\s)[–-]$/.test(c.trim()) || !c.trim()) return true;
        // "name SIZE" or "name ≤ SIZE", optionally "(pattern)"; or a bare name.
        const m = /^(.+?)(?: (≤ )?(\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB)))?(?: \((\w+)\))?$/.exec(c);
        return !m;
      });
      if (bad.length) throw new Error('cells: ' + bad.map((b) => JSON.stringify(b)).join(', '));
      const named = cells.filter((c) => c !== '–');
      return `${cells.length} rows, ${named.length} with a library${named.length ? ' (e.g. ' + JSON.stringify(named[0]) + ')' : ''}`;
    });
    else console.log('skip analysis: every top library is a name and a size, or a dash — no analysis rows yet (too few snapshots)');
    for (const t of expect.topLibrary || []) {
      await check(`analysis: pid ${t.pid}'s top library is ${t.library} with its size`, async () => {
        const cell = await page.$eval(`#analysis-result tr[data-pid="${t.pid}"] td.toplib`, (td) => td.textContent).catch(() => null);
        if (cell === null) throw new Error('no analysis row');
        const m = /^(.+?) (≤ )?(\d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB))(?: \((\w+)\))?$/.exec(cell);
        if (!m || m[1] !== t.library) throw new Error(`shows ${JSON.stringify(cell)}`);
        return JSON.stringify(cell);
      });
    }

    await check('units: binary prefixes only, stated on the page', async () => {
      const note = await page.textContent('#units-note');
      if (!/1 MiB = 1024 KiB/.test(note)) throw new Error('the units are not stated: ' + note);
      const text = await page.evaluate(() => document.body.innerText);
      const decimal = text.match(/\d\s?(?:kB|KB|MB|GB|TB)\b|\bMB\/min/g);
      if (decimal) throw new Error('decimal units shown: ' + [...new Set(decimal)].slice(0, 5).join(', '));
      const odd = text.match(/\b(?:undefined|NaN)\b/g);
      if (odd) throw new Error('shows ' + [...new Set(odd)].join(', '));
      return 'no MB/GB, no undefined/NaN';
    });

    await check('export link', async () => {
      const href = await page.getAttribute('#btn-export', 'href');
      if (!href || !href.endsWith('/api/memory/export')) throw new Error(`href is ${href}`);
      return href;
    });

    await check('no page errors or CSP violations', async () => {
      if (pageErrors.length) throw new Error(pageErrors.slice(0, 3).join(' | '));
      return '';
    });

    if (expect.finalSelect) {
      await page.evaluate((p) => window.memtraceDashboard.select(p), expect.finalSelect);
      await page.waitForFunction((p) => document.querySelector('#consumers').dataset.pid === String(p), expect.finalSelect, { timeout: timeoutMs }).catch(() => {});
    }
    await check('screenshot saved', async () => {
      // A sticky header lands where the page was scrolled to: scroll to the top first.
      await quiet(page);
      await page.screenshot({ path: screenshot, fullPage: true });
      return screenshot;
    });
  }
} catch (err) {
  fail('e2e run', err && err.message ? err.message : String(err));
} finally {
  await browser.close().catch(() => {});
}

console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
