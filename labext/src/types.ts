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
  /** train | eval | merge (nblab.runs.schema.RUN_KINDS) */
  kind?: string;
  /** the model's parameter count, once its training built the model */
  params?: number | null;
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

export type EventMessage =
  | { type: 'snapshot'; runs: IRun[] }
  | { type: 'run'; run: IRun }
  | ({ type: 'metrics' } & IMetrics)
  | { type: 'error'; message: string };
