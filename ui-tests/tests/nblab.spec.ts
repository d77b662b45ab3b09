import { expect, test } from '@jupyterlab/galata';
import { execFileSync } from 'child_process';
import * as path from 'path';

/** The store the test server seeded (jupyter_server_test_config.py). */
const HOME = process.env.NBLAB_UI_HOME ?? path.resolve(__dirname, '..', '.nblab-home');
const PYTHON = process.env.NBLAB_PYTHON ?? path.resolve(__dirname, '..', '..', '.venv', 'bin', 'python');
const STORE = path.resolve(__dirname, '..', 'nblab_store.py');
const SHOTS = path.resolve(__dirname, '..', 'screenshots');

// One server, one store, changed by the tests: run them in order.
test.describe.configure({ mode: 'serial' });

async function openSidebar(page: any) {
  await page.click('.jp-SideBar [data-id="nblab-sidebar"]');
  await expect(page.locator('#nblab-sidebar')).toBeVisible();
}

test('the sidebar lists the sweep and its runs', async ({ page }) => {
  await openSidebar(page);
  const sweep = page.locator('.nblab-sweep[data-sweep="ui-sweep"]');
  await expect(sweep).toBeVisible();
  await expect(sweep.locator('.nblab-run')).toHaveCount(3);
  const names = await sweep.locator('.nblab-run-name').allTextContents();
  expect(names).toEqual(['bf16', 'nvfp4', 'mxfp8']);
  await expect(sweep.locator('.nblab-run[data-status="succeeded"] .nblab-progress')).toContainText('40/40');
  await expect(sweep.locator('.nblab-run[data-status="running"] .nblab-progress')).toContainText('20/40');
  // the sparkline of the succeeded run has its 40 points
  await expect(sweep.locator('.nblab-run[data-status="succeeded"] svg.nblab-sparkline path')).toHaveCount(1);
  await expect(sweep.locator('.nblab-run[data-status="failed"] .nblab-action-rerun')).toBeVisible();
  await expect(page.locator('.nblab-footer')).toContainText(HOME);
  await page.locator('#nblab-sidebar').screenshot({ path: path.join(SHOTS, 'sidebar.png') });
});

test('a run status badge follows the store', async ({ page }) => {
  await openSidebar(page);
  const live = page.locator('.nblab-sweep[data-sweep="ui-sweep"] .nblab-run', { hasText: 'mxfp8' });
  await expect(live.locator('.nblab-run-status')).toHaveText('running');
  await expect(page.locator('.nblab-footer')).toContainText('updates: events');
  execFileSync(PYTHON, [STORE, 'set-status', HOME, 'mxfp8', 'succeeded']);
  await expect(live.locator('.nblab-run-status')).toHaveText('succeeded', { timeout: 10000 });
  await expect(live).toHaveAttribute('data-status', 'succeeded');
  await page.locator('#nblab-sidebar').screenshot({ path: path.join(SHOTS, 'sidebar-updated.png') });
});

test('the status filter hides other runs', async ({ page }) => {
  await openSidebar(page);
  await page.selectOption('.nblab-filter', 'failed');
  await expect(page.locator('.nblab-run')).toHaveCount(1);
  await expect(page.locator('.nblab-run-name')).toHaveText('nvfp4');
});

test('"New nblab recipe notebook" creates a RecipeBuilder notebook', async ({ page }) => {
  await page.evaluate(async () => {
    await (window as any).jupyterapp.commands.execute('launcher:create');
  });
  // the launcher just opened is the visible one (the default launcher may sit behind it)
  await page.locator('.jp-LauncherCard:visible', { hasText: 'New nblab recipe notebook' }).click();
  const cell = page.locator('.jp-NotebookPanel .jp-Cell').first();
  await expect(cell).toContainText('RecipeBuilder()', { timeout: 20000 });
  await expect(page.locator('.jp-NotebookPanel .jp-Cell').first()).toContainText(
    'from nblab.widgets import RecipeBuilder'
  );
  const name = await page.evaluate(() => (window as any).jupyterapp.shell.currentWidget.context.path);
  expect(name).toMatch(/Untitled.*\.ipynb$/);
  await page.screenshot({ path: path.join(SHOTS, 'recipe-notebook.png') });
});

test('"Run sweep from this TOML" is on .toml files and posts the sweep', async ({ page, tmpPath }) => {
  // a sweep the server refuses (unknown axis), so no job starts: the reply names the file
  await page.contents.uploadContent(
    'name = "ui-bad"\nbase = "gpt-tiny"\n[grid]\n"no.such" = [1, 2]\n',
    'text',
    `${tmpPath}/bad-sweep.toml`
  );
  await page.contents.uploadContent('hello', 'text', `${tmpPath}/notes.txt`);
  await page.filebrowser.refresh();

  await page.locator('.jp-DirListing-item', { hasText: 'notes.txt' }).click({ button: 'right' });
  await expect(page.getByRole('menuitem', { name: 'Rename' })).toBeVisible();
  await expect(page.getByRole('menuitem', { name: 'Run sweep from this TOML' })).toHaveCount(0);
  await page.keyboard.press('Escape');

  await page.locator('.jp-DirListing-item', { hasText: 'bad-sweep.toml' }).click({ button: 'right' });
  await page.getByRole('menuitem', { name: 'Run sweep from this TOML' }).click();
  // the error notification names the file and the bad axis (galata hides toasts: open
  // the notification center from the status bar)
  await page.locator('.jp-Notification-Status').click();
  await expect(page.getByText(/bad-sweep\.toml.*invalid sweep 'ui-bad'/).first()).toBeVisible();
  await page.getByRole('button', { name: 'Details' }).first().click();
  await expect(page.locator('.jp-Dialog-body')).toContainText('no.such');
  await page.screenshot({ path: path.join(SHOTS, 'run-sweep-error.png') });
});

// End to end with real jobs (papermill + a 4-step gpt-tiny run, then the report): about
// a minute on 2 cores, so only with NBLAB_UI_E2E=1 (`make ui-test-e2e`).
test('a tiny sweep started from the context menu runs to succeeded and reports', async ({
  page,
  tmpPath
}) => {
  test.skip(!process.env.NBLAB_UI_E2E, 'set NBLAB_UI_E2E=1 to start real jobs');
  test.setTimeout(300000);
  await page.contents.uploadContent(
    [
      'name = "ui-e2e"',
      'base = "gpt-tiny"',
      '[set]',
      '"train.steps" = 4',
      '"schedule.warmup_steps" = 1',
      '"eval.interval" = 4',
      '"eval.batches" = 1',
      '"metrics.log_interval" = 1',
      '"metrics.stats_interval" = 2',
      '"metrics.histogram_interval" = 4',
      '[grid]',
      '"precision.preset" = ["bf16"]',
      ''
    ].join('\n'),
    'text',
    `${tmpPath}/tiny.toml`
  );
  await page.filebrowser.refresh();
  await page.locator('.jp-DirListing-item', { hasText: 'tiny.toml' }).click({ button: 'right' });
  await page.getByRole('menuitem', { name: 'Run sweep from this TOML' }).click();

  const sweep = page.locator('.nblab-sweep[data-sweep="ui-e2e"]');
  await expect(sweep.locator('.nblab-run')).toHaveCount(1, { timeout: 20000 });
  const run = sweep.locator('.nblab-run');
  await expect(run).toHaveAttribute('data-status', 'running', { timeout: 120000 });
  await expect(run).toHaveAttribute('data-status', 'succeeded', { timeout: 180000 });
  await expect(run.locator('.nblab-progress')).toContainText('4/4');
  await expect(run.locator('svg.nblab-sparkline path')).toHaveCount(1);
  await page.locator('#nblab-sidebar').screenshot({ path: path.join(SHOTS, 'sidebar-e2e.png') });

  // the report is outside the server root: it opens as HTML in a new tab
  const [report] = await Promise.all([
    page.waitForEvent('popup', { timeout: 240000 }),
    sweep.locator('.nblab-action-report').click()
  ]);
  await report.waitForLoadState();
  await expect(report.locator('body')).toContainText('ui-e2e');
  await report.screenshot({ path: path.join(SHOTS, 'report.png') });
});
