/**
 * The sidebar's state: runs by id and each run's loss series, fed by the events
 * stream (snapshot, run, metrics) or by polling, and grouped into a tree of sweeps.
 * No DOM and no server calls here.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { EventMessage, IRun, ISeries, RERUNNABLE, Status } from './types';

export const LOSS_KEY = 'loss';
export const SINGLE_RUNS = '(single runs)';

export interface ISweepNode {
  name: string;
  /** null for the group of runs that belong to no sweep */
  sweep: string | null;
  runs: IRun[];
  counts: Partial<Record<Status, number>>;
  /** points (run names) whose latest run failed, diverged or was cancelled */
  rerunnable: number;
  /** succeeded training runs (the latest of each point): what a Merge would take */
  mergeable: number;
}

/** A run that can be merged: a succeeded training run (not an eval or a merge). */
export function isMergeable(run: IRun): boolean {
  return run.status === 'succeeded' && (run.kind ?? 'train') === 'train';
}

/** A count as people say it: 950, 7.3k, 88.8k, 7.3M, 1.11B. */
export function shortCount(n: number): string {
  const units: [number, string][] = [
    [1e9, 'B'],
    [1e6, 'M'],
    [1e3, 'k']
  ];
  for (const [size, unit] of units) {
    if (n >= size) {
      const value = n / size;
      return `${value >= 100 ? value.toFixed(0) : value.toPrecision(3).replace(/\.?0+$/, '')}${unit}`;
    }
  }
  return String(n);
}

/** The run's detail words beside its progress: its kind (when not a training run) and
 * its model's parameter count. */
export function runDetail(run: IRun): string {
  const parts: string[] = [];
  if (run.kind && run.kind !== 'train') {
    parts.push(run.kind);
  }
  if (run.params !== undefined && run.params !== null) {
    parts.push(`${shortCount(run.params)} params`);
  }
  return parts.join(' · ');
}

/** Merge `more` into `into` by step (the newer value wins for a step seen twice). */
export function mergeSeries(into: ISeries | undefined, more: ISeries): ISeries {
  if (!into || into.steps.length === 0) {
    return { steps: [...more.steps], values: [...more.values] };
  }
  const last = into.steps[into.steps.length - 1];
  if (more.steps.length === 0 || more.steps[0] > last) {
    return {
      steps: into.steps.concat(more.steps),
      values: into.values.concat(more.values)
    };
  }
  const byStep = new Map<number, number | null>();
  into.steps.forEach((s, i) => byStep.set(s, into.values[i]));
  more.steps.forEach((s, i) => byStep.set(s, more.values[i]));
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  return { steps, values: steps.map(s => byStep.get(s) ?? null) };
}

export class RunsModel {
  private _runs = new Map<string, IRun>();
  private _loss = new Map<string, ISeries>();
  private _changed = new Signal<this, void>(this);

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get size(): number {
    return this._runs.size;
  }

  run(runId: string): IRun | undefined {
    return this._runs.get(runId);
  }

  runs(): IRun[] {
    return [...this._runs.values()];
  }

  loss(runId: string): ISeries | undefined {
    return this._loss.get(runId);
  }

  /** Replace every run (a snapshot or a poll); loss series of known runs are kept. */
  setRuns(runs: IRun[]): void {
    this._runs = new Map(runs.map(r => [r.run_id, r]));
    for (const id of [...this._loss.keys()]) {
      if (!this._runs.has(id)) {
        this._loss.delete(id);
      }
    }
    this._changed.emit();
  }

  updateRun(run: IRun): void {
    this._runs.set(run.run_id, run);
    this._changed.emit();
  }

  addLoss(runId: string, series: ISeries): void {
    this._loss.set(runId, mergeSeries(this._loss.get(runId), series));
    this._changed.emit();
  }

  /** Merge the loss series of many runs (a snapshot's, or one GET series) with one
   * change signal for all of them. */
  addLosses(byRun: Record<string, Record<string, ISeries>>): void {
    for (const [runId, keys] of Object.entries(byRun)) {
      const loss = keys[LOSS_KEY];
      if (loss && this._runs.has(runId)) {
        this._loss.set(runId, mergeSeries(this._loss.get(runId), loss));
      }
    }
    this._changed.emit();
  }

  /** Apply one message of the events websocket. */
  apply(message: EventMessage): void {
    switch (message.type) {
      case 'snapshot':
        this.setRuns(message.runs);
        if (message.metrics) {
          this.addLosses(message.metrics);
        }
        break;
      case 'run':
        this.updateRun(message.run);
        break;
      case 'metrics': {
        const loss = message.keys[LOSS_KEY];
        if (loss) {
          this.addLoss(message.run_id, loss);
        }
        break;
      }
      default:
        break;
    }
  }

  /** Sweeps, newest first, each with its runs oldest first; runs filtered by status. */
  tree(filter: Status | 'all' = 'all'): ISweepNode[] {
    const groups = new Map<string | null, IRun[]>();
    const ordered = this.runs().sort(
      (a, b) => a.created - b.created || a.run_id.localeCompare(b.run_id)
    );
    for (const run of ordered) {
      const list = groups.get(run.sweep) ?? [];
      list.push(run);
      groups.set(run.sweep, list);
    }
    const nodes: ISweepNode[] = [];
    for (const [sweep, all] of groups) {
      const latest = new Map<string, IRun>();
      all.forEach(r => latest.set(r.name, r));
      const counts: Partial<Record<Status, number>> = {};
      latest.forEach(r => (counts[r.status] = (counts[r.status] ?? 0) + 1));
      const runs = filter === 'all' ? all : all.filter(r => r.status === filter);
      if (runs.length === 0) {
        continue;
      }
      nodes.push({
        name: sweep ?? SINGLE_RUNS,
        sweep,
        runs,
        counts,
        rerunnable: [...latest.values()].filter(
          r => RERUNNABLE.includes(r.status) && (r.kind ?? 'train') === 'train'
        ).length,
        mergeable: [...latest.values()].filter(isMergeable).length
      });
    }
    const newest = (n: ISweepNode) => Math.max(...n.runs.map(r => r.created));
    return nodes.sort((a, b) => newest(b) - newest(a));
  }
}
