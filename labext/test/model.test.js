// Unit tests of the sidebar's model (events -> tree) and the sparkline path, run with
// node's own test runner on a CommonJS build (`jlpm test`): no extra npm packages.
const test = require('node:test');
const assert = require('node:assert/strict');

const { RunsModel, mergeSeries, SINGLE_RUNS, isMergeable } = require('../../lib-test/model.js');
const { sparklinePath } = require('../../lib-test/sparkline.js');

let clock = 0;
function run(name, sweep, status, extra = {}) {
  clock += 1;
  return {
    run_id: `r${clock}`,
    name,
    sweep,
    status,
    step: null,
    steps: 10,
    created: clock,
    started: null,
    ended: null,
    error: null,
    output_file: `/home/runs/r${clock}/output.ipynb`,
    output_path: null,
    output_exists: false,
    ...extra
  };
}

test('a snapshot builds sweeps newest first, runs oldest first, single runs apart', () => {
  const model = new RunsModel();
  const a1 = run('p1', 'a', 'succeeded');
  const a2 = run('p2', 'a', 'failed');
  const solo = run('solo', null, 'running');
  const b1 = run('p1', 'b', 'queued');
  model.apply({ type: 'snapshot', runs: [a1, a2, solo, b1] });
  const tree = model.tree();
  assert.deepEqual(
    tree.map(n => n.name),
    ['b', SINGLE_RUNS, 'a']
  );
  assert.deepEqual(
    tree[2].runs.map(r => r.run_id),
    [a1.run_id, a2.run_id]
  );
  assert.deepEqual(tree[2].counts, { succeeded: 1, failed: 1 });
  assert.equal(tree[2].rerunnable, 1);
  assert.equal(tree[1].sweep, null);
});

test('a run event changes one run; the latest run of a point decides the counts', () => {
  const model = new RunsModel();
  const first = run('p1', 'a', 'failed');
  model.apply({ type: 'snapshot', runs: [first] });
  const rerun = run('p1', 'a', 'queued');
  model.apply({ type: 'run', run: rerun });
  assert.deepEqual(model.tree()[0].counts, { queued: 1 });
  assert.equal(model.tree()[0].rerunnable, 0);
  model.apply({ type: 'run', run: { ...rerun, status: 'running', step: 3 } });
  const node = model.tree()[0];
  assert.deepEqual(node.counts, { running: 1 });
  assert.equal(node.runs.length, 2);
  assert.equal(node.runs[1].step, 3);
});

test('the status filter keeps matching runs and drops empty sweeps', () => {
  const model = new RunsModel();
  model.setRuns([run('p1', 'a', 'failed'), run('p2', 'a', 'succeeded'), run('p1', 'b', 'queued')]);
  const failed = model.tree('failed');
  assert.deepEqual(
    failed.map(n => [n.name, n.runs.map(r => r.name)]),
    [['a', ['p1']]]
  );
});

test('metric events extend the loss series; overlaps merge by step', () => {
  const model = new RunsModel();
  const r = run('p1', 'a', 'running');
  model.setRuns([r]);
  model.apply({
    type: 'metrics',
    run_id: r.run_id,
    last_step: 2,
    keys: { loss: { steps: [1, 2], values: [3, 2.5] }, lr: { steps: [1], values: [0.1] } }
  });
  model.apply({
    type: 'metrics',
    run_id: r.run_id,
    last_step: 4,
    keys: { loss: { steps: [3, 4], values: [2, null] } }
  });
  assert.deepEqual(model.loss(r.run_id), { steps: [1, 2, 3, 4], values: [3, 2.5, 2, null] });
  // a REST history that overlaps what the events already brought
  model.addLoss(r.run_id, { steps: [2, 3], values: [2.4, 2.1] });
  assert.deepEqual(model.loss(r.run_id), { steps: [1, 2, 3, 4], values: [3, 2.4, 2.1, null] });
});

test('a new snapshot forgets the series of runs that are gone', () => {
  const model = new RunsModel();
  const r = run('p1', 'a', 'running');
  model.setRuns([r]);
  model.addLoss(r.run_id, { steps: [1], values: [1] });
  model.setRuns([]);
  assert.equal(model.loss(r.run_id), undefined);
});

test('changed fires once per event', () => {
  const model = new RunsModel();
  let fired = 0;
  model.changed.connect(() => (fired += 1));
  model.apply({ type: 'snapshot', runs: [] });
  model.apply({ type: 'run', run: run('p', 'a', 'queued') });
  model.apply({ type: 'error', message: 'x' });
  assert.equal(fired, 2);
});

test('mergeSeries appends when the new steps come after', () => {
  assert.deepEqual(mergeSeries({ steps: [1], values: [1] }, { steps: [2], values: [2] }), {
    steps: [1, 2],
    values: [1, 2]
  });
  assert.deepEqual(mergeSeries(undefined, { steps: [5], values: [1] }), {
    steps: [5],
    values: [1]
  });
});

test('the sparkline spans its box and a NaN breaks the line', () => {
  const d = sparklinePath({ steps: [0, 1, 2, 3], values: [4, 2, null, 0] }, 82, 22);
  assert.equal(d, 'M1.0,1.0L27.7,11.0M81.0,21.0');
  assert.equal(sparklinePath({ steps: [], values: [] }, 80, 18), '');
  assert.equal(sparklinePath({ steps: [7], values: [1] }, 80, 18), 'M40.0,9.0');
});

test('a sweep counts its succeeded training runs as mergeable, and no merge run as rerunnable', () => {
  const model = new RunsModel();
  const a = run('p1', 'ft', 'succeeded');
  const b = run('p2', 'ft', 'succeeded');
  const c = run('p3', 'ft', 'failed');
  const soup = run('merge-greedy', 'ft', 'succeeded', { kind: 'merge' });
  const broken = run('merge-ties', 'ft', 'failed', { kind: 'merge' });
  model.apply({ type: 'snapshot', runs: [a, b, c, soup, broken] });
  const [node] = model.tree();
  assert.equal(node.mergeable, 2);
  assert.equal(node.rerunnable, 1);
  assert.equal(isMergeable(a), true);
  assert.equal(isMergeable(soup), false);
  assert.equal(isMergeable(c), false);
});

test('a run shows its kind and its model size in words', () => {
  const { runDetail, shortCount } = require('../../lib-test/model.js');
  assert.equal(shortCount(950), '950');
  assert.equal(shortCount(88832), '88.8k');
  assert.equal(shortCount(7_300_000), '7.3M');
  assert.equal(shortCount(123_551_232), '124M');
  assert.equal(shortCount(1_109_626_880), '1.11B');
  assert.equal(runDetail(run('p', 'a', 'running', { params: 7_300_000 })), '7.3M params');
  assert.equal(runDetail(run('p', 'a', 'running', { kind: 'eval', params: null })), 'eval');
  assert.equal(runDetail(run('p', 'a', 'running', { kind: 'train' })), '');
});

test('a snapshot carries every sparkline: no request per run', () => {
  const model = new RunsModel();
  const a = run('p1', 'a', 'running', { step: 3 });
  const b = run('p2', 'a', 'succeeded', { step: 2 });
  model.apply({
    type: 'snapshot',
    runs: [a, b],
    metrics: {
      [a.run_id]: { loss: { steps: [1, 2, 3], values: [3, 2, 1] } },
      [b.run_id]: { loss: { steps: [1, 2], values: [4, null] } },
      gone: { loss: { steps: [1], values: [9] } }
    }
  });
  assert.deepEqual(model.loss(a.run_id), { steps: [1, 2, 3], values: [3, 2, 1] });
  assert.deepEqual(model.loss(b.run_id), { steps: [1, 2], values: [4, null] });
  assert.equal(model.loss('gone'), undefined); // not a run of the snapshot
  // a later metrics event merges by step into the snapshot's series
  model.apply({
    type: 'metrics',
    run_id: a.run_id,
    last_step: 4,
    keys: { loss: { steps: [4], values: [0.5] } }
  });
  assert.deepEqual(model.loss(a.run_id).steps, [1, 2, 3, 4]);
});
