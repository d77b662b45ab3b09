/** The JSON shapes of the nblab server API (nblab/server/api.py). */

export type Status =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'diverged'
  | 'cancelled';

export const STATUSES: Status[] = [
  'queued',
  'running',
  'succeeded',
  'failed',
  'diverged',
  'cancelled'
];
export const TERMINAL: Status[] = ['succeeded', 'failed', 'diverged', 'cancelled'];
export const RERUNNABLE: Status[] = ['failed', 'diverged', 'cancelled'];
/** nblab.merge.run.METHODS, the Merge action's choices */
export const MERGE_METHODS = ['greedy', 'uniform', 'ties', 'task-arithmetic', 'dare', 'fisher'];

/** train (a training job), eval or merge (made from other runs: runs.sources) */
export type RunKind = 'train' | 'eval' | 'merge';

export interface IRun {
  run_id: string;
  name: string;
  sweep: string | null;
  status: Status;
  step: number | null;
  steps: number | null;
  created: number;
  started: number | null;
  ended: number | null;
  error: string | null;
  output_file: string;
  output_path: string | null;
  output_exists: boolean;
  /** train | eval | merge (nblab.runs.schema.RUN_KINDS); absent from servers older than
   * run kinds: a training run */
  kind?: RunKind;
  /** the model's parameter count, once its training built the model */
  params?: number | null;
}

/** What POST merges answers. */
export interface IMergeStarted {
  run_id: string;
  name: string;
  method: string;
  members: string[];
}

export interface ISeries {
  steps: number[];
  values: (number | null)[];
}

export interface IMetrics {
  run_id: string;
  last_step: number | null;
  keys: Record<string, ISeries>;
}

export interface IReportFiles {
  ipynb_file: string;
  html_file: string;
  ipynb_path: string | null;
  exists: boolean;
}

export interface ISweep {
  name: string;
  report: IReportFiles | null;
}

export interface IInfo {
  home: string;
  home_path: string | null;
  poll_interval: number;
  max_points: number;
}

/** GET series (metrics of many runs in one request): run_id -> its series by key. */
export interface IManyMetrics {
  runs: Record<string, { last_step: number | null; keys: Record<string, ISeries> }>;
}

export type EventMessage =
  | {
      type: 'snapshot';
      runs: IRun[];
      /** run_id -> key -> its history, downsampled (the socket's keys) */
      metrics?: Record<string, Record<string, ISeries>>;
    }
  | { type: 'run'; run: IRun }
  | ({ type: 'metrics' } & IMetrics)
  | { type: 'error'; message: string };
