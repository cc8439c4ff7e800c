// End-to-end check of the memtrace dashboard in headless Chromium (playwright-core, Debian's
// /usr/bin/chromium; no browser download).
//
//   MEMTRACE_URL=http://127.0.0.1:10000   agent base URL (required)
//   MEMTRACE_TOKEN=...                    bearer token, put into localStorage before the page loads
//   SCREENSHOT=/tmp/dashboard.png         full-page screenshot path (default: dashboard-e2e.png)
//   MEMTRACE_E2E_TIMEOUT=30               seconds each wait may take (default 30)
//   CHROMIUM=/usr/bin/chromium            browser executable
//
// Exits 0 when every check passed, 1 otherwise; the last line is `e2e: N passed, M failed`.
import { chromium } from 'playwright-core';

const base = (process.env.MEMTRACE_URL || '').replace(/\/+$/, '');
const token = process.env.MEMTRACE_TOKEN || '';
const screenshot = process.env.SCREENSHOT || 'dashboard-e2e.png';
const timeoutMs = Number(process.env.MEMTRACE_E2E_TIMEOUT || 30) * 1000;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

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
          throw new Error(`alert ${id} did not move to resolved${tokenAsked ? ': the agent wants a token (set MEMTRACE_TOKEN)' : ''}`);
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

    await check('export link', async () => {
      const href = await page.getAttribute('#btn-export', 'href');
      if (!href || !href.endsWith('/api/memory/export')) throw new Error(`href is ${href}`);
      return href;
    });

    await check('no page errors or CSP violations', async () => {
      if (pageErrors.length) throw new Error(pageErrors.slice(0, 3).join(' | '));
      return '';
    });

    await check('screenshot saved', async () => {
      // A sticky header lands where the page was scrolled to: scroll to the top first.
      await page.evaluate(() => window.scrollTo(0, 0));
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
