/**
 * Keeps a RunsModel current: the events websocket when it is open, else polling
 * GET runs (and the loss of running runs) every `interval` seconds, retrying the
 * websocket at the same pace.
 */
import { ServerConnection } from '@jupyterlab/services';

import { LOSS_KEY, RunsModel } from './model';
import { eventsUrl, requestAPI } from './request';
import { EventMessage, IMetrics, IRun } from './types';

export class LiveRuns {
  constructor(
    readonly model: RunsModel,
    interval = 5
  ) {
    this._interval = interval;
  }

  /** 'events' while the websocket is open, else 'polling'. */
  get mode(): 'events' | 'polling' {
    return this._socket?.readyState === WebSocket.OPEN ? 'events' : 'polling';
  }

  set interval(seconds: number) {
    this._interval = Math.max(1, seconds);
    if (this._timer !== undefined) {
      this._schedule();
    }
  }

  start(): void {
    this._disposed = false;
    this._connect();
    this._schedule();
    void this.refresh();
  }

  dispose(): void {
    this._disposed = true;
    window.clearInterval(this._timer);
    this._timer = undefined;
    this._socket?.close();
    this._socket = null;
  }

  /** GET runs now, then the loss of every run whose sparkline is missing or behind. */
  async refresh(): Promise<void> {
    const runs = await requestAPI<IRun[]>(['runs']);
    this.model.setRuns(runs);
    await this.loadLosses(runs.filter(r => this._needsLoss(r)));
  }

  async loadLosses(runs: IRun[]): Promise<void> {
    for (const run of runs) {
      const have = this.model.loss(run.run_id);
      const since = have?.steps[have.steps.length - 1];
      this._lossStep.set(run.run_id, run.step ?? -1);
      try {
        const data = await requestAPI<IMetrics>(['runs', run.run_id, 'metrics'], {}, {
          keys: LOSS_KEY,
          since_step: since,
          max_points: 200
        });
        const loss = data.keys[LOSS_KEY];
        if (loss) {
          this.model.addLoss(run.run_id, loss);
        }
      } catch (error) {
        console.warn(`nblab: no metrics for run ${run.run_id}`, error);
      }
    }
  }

  private _needsLoss(run: IRun): boolean {
    return run.step !== null && this._lossStep.get(run.run_id) !== run.step;
  }

  private _schedule(): void {
    window.clearInterval(this._timer);
    this._timer = window.setInterval(() => this._tick(), this._interval * 1000);
  }

  private _tick(): void {
    if (this.mode === 'events') {
      return;
    }
    void this.refresh().catch(error => console.warn('nblab: polling failed', error));
    if (!this._socket || this._socket.readyState === WebSocket.CLOSED) {
      this._connect();
    }
  }

  private _connect(): void {
    if (this._disposed) {
      return;
    }
    const settings = ServerConnection.makeSettings();
    let socket: WebSocket;
    try {
      socket = new settings.WebSocket(eventsUrl(settings));
    } catch (error) {
      console.warn('nblab: events websocket unavailable, polling', error);
      return;
    }
    this._socket = socket;
    socket.onmessage = event => {
      const message = JSON.parse(event.data) as EventMessage;
      this.model.apply(message);
      if (message.type === 'snapshot') {
        // sparklines of runs seen for the first time; later rows arrive as events
        void this.loadLosses(message.runs.filter(r => this._needsLoss(r)));
      } else if (message.type === 'metrics') {
        this._lossStep.set(message.run_id, message.last_step ?? -1);
      } else if (message.type === 'run' && !this._lossStep.has(message.run.run_id)) {
        void this.loadLosses([message.run].filter(r => this._needsLoss(r)));
      }
    };
    socket.onclose = () => {
      if (this._socket === socket) {
        this._socket = null;
      }
    };
  }

  private _interval: number;
  private _timer: number | undefined;
  private _socket: WebSocket | null = null;
  private _disposed = false;
  private _lossStep = new Map<string, number>();
}
