import { expect, test } from '@jupyterlab/galata';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/**
 * The sidebar with 200 more runs (sweep ui-scale, 300 loss rows each): the page opens
 * one events socket and makes no request per run (the snapshot carries every
 * sparkline), nothing polls while the socket is open, and a change arrives as an event.
 * The refresh it measures (GET runs + GET series, then the re-render) is printed and
 * written to test-results/sidebar-scale.json; it is a measurement, not a pass mark.
 */
const HOME = process.env.NBLAB_UI_HOME ?? path.resolve(__dirname, '..', '.nblab-home');
const PYTHON = process.env.NBLAB_PYTHON ?? path.resolve(__dirname, '..', '..', '.venv', 'bin', 'python');
const STORE = path.resolve(__dirname, '..', 'nblab_store.py');
const RESULTS = path.resolve(__dirname, '..', 'test-results');
const MORE = 200;

test.describe.configure({ mode: 'serial' });

test.beforeAll(() => {
  execFileSync(PYTHON, [STORE, 'seed-many', HOME, String(MORE)]);
});

test('200 runs: one events socket, no request per run, no polling', async ({ page }) => {
  const requests: string[] = [];
  const sockets: string[] = [];
  page.on('request', request => {
    if (request.url().includes('/nblab/api/')) {
      requests.push(new URL(request.url()).pathname);
    }
  });
  page.on('websocket', socket => {
    if (socket.url().includes('/nblab/api/events')) {
      sockets.push(socket.url());
    }
  });
  await page.reload();
  await page.click('.jp-SideBar [data-id="nblab-sidebar"]');
  const scale = page.locator('.nblab-sweep[data-sweep="ui-scale"]');
  await expect(scale.locator('.nblab-run')).toHaveCount(MORE, { timeout: 30000 });
  // every sparkline drawn, from the snapshot and the start-up refresh alone
  await expect(scale.locator('svg.nblab-sparkline path')).toHaveCount(MORE);
  await expect(page.locator('.nblab-footer')).toContainText('updates: events');
  const atStart = [...requests];
  await page.waitForTimeout(3000); // six of the server's poll intervals
  expect(sockets).toHaveLength(1);
  // start-up: info, runs and one series request for every sparkline
  expect(atStart.filter(p => /\/runs\/[^/]+\/metrics$/.test(p))).toEqual([]);
  expect(atStart.length).toBeLessThanOrEqual(4);
  expect(requests.slice(atStart.length)).toEqual([]); // nothing polls while the socket is open

  // a change is an event on the socket, not a request
  execFileSync(PYTHON, [STORE, 'set-status', HOME, 'point-007', 'cancelled', 'ui-scale']);
  const changed = scale.locator('.nblab-run', { hasText: 'point-007' });
  await expect(changed).toHaveAttribute('data-status', 'cancelled', { timeout: 10000 });
  expect(requests.slice(atStart.length)).toEqual([]);
});

test('200 runs: the refresh, measured', async ({ page }) => {
  await page.click('.jp-SideBar [data-id="nblab-sidebar"]');
  // the other specs' runs are there too (the seeded sweep, an end-to-end sweep's)
  const scale = page.locator('.nblab-sweep[data-sweep="ui-scale"] .nblab-run');
  await expect(scale).toHaveCount(MORE, { timeout: 30000 });
  const shown = await page.locator('.nblab-run').count();
  const times: { refresh: number[]; render: number[] } = await page.evaluate(async () => {
    const app = (window as any).jupyterapp;
    const frame = () => new Promise(resolve => requestAnimationFrame(resolve));
    const refresh: number[] = [];
    const render: number[] = [];
    for (let i = 0; i < 7; i++) {
      const start = performance.now();
      await app.commands.execute('nblab:refresh'); // GET runs + GET series, into the model
      const fetched = performance.now();
      await frame(); // the panel re-renders in the next frame, before this callback
      document.querySelector('#nblab-sidebar')!.getBoundingClientRect(); // and lays out
      refresh.push(performance.now() - start);
      render.push(performance.now() - fetched);
    }
    return { refresh, render };
  });
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const result = {
    runs: shown,
    refresh_ms: times.refresh,
    render_ms: times.render,
    refresh_median_ms: median(times.refresh),
    render_median_ms: median(times.render)
  };
  console.log(`sidebar with ${result.runs} runs: ${JSON.stringify(result)}`);
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'sidebar-scale.json'), JSON.stringify(result, null, 1));
  expect(times.refresh).toHaveLength(7);
  await expect(scale).toHaveCount(MORE);
});
