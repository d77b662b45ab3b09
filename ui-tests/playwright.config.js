/**
 * Galata's base configuration, with the system chromium (Debian's /usr/bin/chromium;
 * no browser download) and no video (it needs a downloaded ffmpeg).
 */
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

// not galata's 8888, so a JupyterLab someone runs on this machine is left alone
const port = process.env.NBLAB_UI_PORT ?? '8871';

module.exports = {
  ...baseConfig,
  workers: 1,
  retries: 0,
  timeout: 60000,
  reporter: [['list'], ['html', { open: 'never', outputFolder: 'playwright-report' }]],
  use: {
    ...baseConfig.use,
    baseURL: `http://localhost:${port}`,
    video: 'off',
    trace: 'retain-on-failure',
    screenshot: 'on',
    launchOptions: {
      executablePath: process.env.NBLAB_CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking']
    }
  },
  webServer: {
    command: 'jlpm start',
    url: `http://localhost:${port}/lab`,
    timeout: 120 * 1000,
    reuseExistingServer: false
  }
};
