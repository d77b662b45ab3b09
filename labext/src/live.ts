/**
 * Keeps a RunsModel current: the events websocket when it is open (its snapshot carries
 * every run and its loss sparkline, then changes arrive as events), else polling every
 * `interval` seconds with two requests, GET runs and GET series (every run's loss at
 * once), retrying the websocket at the same pace. Never a request per run.
 */
import { ServerConnection } from '@jupyterlab/services';

import { LOSS_KEY, RunsModel } from './model';
import { eventsUrl, requestAPI } from './request';
import { EventMessage, IManyMetrics, IRun, ISeries } from './types';

/** Points per sparkline fetched by GET series (the snapshot sends as many). */
export const SPARK_POINTS = 100;

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

  /** GET runs and, at the same time, the loss of every run in one request (GET series). */
  async refresh(): Promise<void> {
    const [runs, found] = await Promise.all([
      requestAPI<IRun[]>(['runs']),
      requestAPI<IManyMetrics>(['series'], {}, { keys: LOSS_KEY, max_points: SPARK_POINTS })
    ]);
    this.model.setRuns(runs);
    const byRun: Record<string, Record<string, ISeries>> = {};
    for (const [runId, data] of Object.entries(found.runs)) {
      byRun[runId] = data.keys;
    }
    this.model.addLosses(byRun);
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
      // the snapshot has every sparkline; rows after it, and new runs' rows, are events
      this.model.apply(JSON.parse(event.data) as EventMessage);
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
}
