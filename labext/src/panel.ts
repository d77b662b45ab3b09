/**
 * The "nblab" left-sidebar panel: sweeps with their runs, status badges, progress,
 * loss sparklines and actions. Rendering is plain DOM from RunsModel.tree(); the
 * actions are callbacks the plugin supplies.
 */
import { Widget } from '@lumino/widgets';

import { isMergeable, ISweepNode, RunsModel, runDetail } from './model';
import { sparkline } from './sparkline';
import { IRun, RERUNNABLE, STATUSES, Status, TERMINAL } from './types';

export interface IPanelActions {
  openOutput(run: IRun): void;
  openReport(sweep: string): Promise<void>;
  cancel(run: IRun): Promise<void>;
  rerun(run: IRun): Promise<void>;
  rerunSweep(sweep: string): Promise<void>;
  copyRunId(run: IRun): void;
  refresh(): Promise<void>;
  /** Merge a sweep's succeeded runs, or the runs chosen with their checkboxes. */
  merge(target: { sweep?: string; run_ids?: string[] }): Promise<void>;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

export class NblabPanel extends Widget {
  constructor(
    readonly model: RunsModel,
    private readonly actions: IPanelActions
  ) {
    super();
    this.id = 'nblab-sidebar';
    this.addClass('nblab-panel');
    this.title.caption = 'nblab: sweeps and runs';

    const header = el('div', 'nblab-header');
    header.appendChild(el('span', 'nblab-title', 'nblab'));
    this._filter = el('select', 'nblab-filter');
    this._filter.title = 'Show runs with this status';
    for (const option of ['all', ...STATUSES]) {
      const item = el('option', '', option);
      item.value = option;
      this._filter.appendChild(item);
    }
    this._filter.onchange = () => this._render();
    header.appendChild(this._filter);
    const refresh = el('button', 'nblab-button', '⟳');
    refresh.title = 'Refresh';
    refresh.onclick = () => void this.actions.refresh();
    header.appendChild(refresh);
    this._mergeChosen = this._button(
      'merge chosen',
      'Merge the runs chosen with their checkboxes (pick a method)',
      async () => {
        await this.actions.merge({ run_ids: [...this._chosen] });
        this._chosen.clear();
        this._render();
      }
    );
    header.appendChild(this._mergeChosen);
    this.node.appendChild(header);

    this._list = el('div', 'nblab-list');
    this.node.appendChild(this._list);
    this._footer = el('div', 'nblab-footer');
    this.node.appendChild(this._footer);

    model.changed.connect(this._scheduleRender, this);
    this._render();
  }

  set filter(value: Status | 'all') {
    this._filter.value = value;
    this._render();
  }

  /** The footer: where the store is, and whether updates are live. */
  setFooter(home: string, mode: string): void {
    this._footer.textContent = '';
    this._footer.appendChild(el('div', 'nblab-store', `store: ${home}`));
    this._footer.appendChild(el('div', 'nblab-mode', `updates: ${mode}`));
    this._footer.title = home;
  }

  private _scheduleRender(): void {
    if (this._pending) {
      return;
    }
    this._pending = true;
    requestAnimationFrame(() => {
      this._pending = false;
      this._render();
    });
  }

  private _render(): void {
    for (const id of [...this._chosen]) {
      const run = this.model.run(id);
      if (!run || !isMergeable(run)) {
        this._chosen.delete(id);
      }
    }
    this._mergeChosen.style.display = this._chosen.size < 2 ? 'none' : '';
    this._mergeChosen.textContent = `merge ${this._chosen.size} chosen`;
    const nodes = this.model.tree(this._filter.value as Status | 'all');
    this._list.textContent = '';
    this._used.clear();
    if (nodes.length === 0) {
      const empty =
        this.model.size === 0
          ? 'No runs yet. Right-click a sweep .toml file: "Run sweep from this TOML".'
          : 'No runs with this status.';
      this._list.appendChild(el('div', 'nblab-empty', empty));
      return;
    }
    for (const node of nodes) {
      this._list.appendChild(this._sweep(node));
    }
    for (const runId of [...this._rows.keys()]) {
      if (!this._used.has(runId)) {
        this._rows.delete(runId); // gone, or filtered out: built again when shown
      }
    }
  }

  private _sweep(node: ISweepNode): HTMLElement {
    const details = el('details', 'nblab-sweep');
    details.dataset.sweep = node.name;
    details.open = !this._collapsed.has(node.name);
    details.ontoggle = () => {
      if (details.open) {
        this._collapsed.delete(node.name);
      } else {
        this._collapsed.add(node.name);
      }
    };
    const summary = el('summary', 'nblab-sweep-header');
    summary.appendChild(el('span', 'nblab-sweep-name', node.name));
    const counts = el('span', 'nblab-counts');
    for (const status of STATUSES) {
      const n = node.counts[status];
      if (n) {
        const badge = el('span', `nblab-badge nblab-status-${status}`, `${n}`);
        badge.title = `${n} ${status}`;
        counts.appendChild(badge);
      }
    }
    summary.appendChild(counts);
    if (node.sweep !== null) {
      const sweep = node.sweep;
      summary.appendChild(
        this._button('report', 'Open the report (built if missing)', () =>
          this.actions.openReport(sweep)
        )
      );
      if (node.mergeable >= 2) {
        summary.appendChild(
          this._button('merge', 'Merge the succeeded runs of this sweep (pick a method)', () =>
            this.actions.merge({ sweep })
          )
        );
      }
      if (node.rerunnable > 0) {
        summary.appendChild(
          this._button('rerun failed', 'Rerun every failed or cancelled point', () =>
            this.actions.rerunSweep(sweep)
          )
        );
      }
    }
    details.appendChild(summary);
    for (const run of node.runs) {
      details.appendChild(this._row(run));
    }
    return details;
  }

  /** The row of `run`: the one drawn before when nothing it shows has changed (with 200
   * runs, an event about one run then moves 199 rows instead of building them again). */
  private _row(run: IRun): HTMLElement {
    const loss = this.model.loss(run.run_id);
    const n = loss ? loss.steps.length : 0;
    const tail = n ? `${loss!.steps[n - 1]}:${loss!.values[n - 1]}` : '';
    const key = `${JSON.stringify(run)}|${n}|${tail}`;
    const drawn = this._rows.get(run.run_id);
    if (drawn && drawn.key === key) {
      this._used.add(run.run_id);
      return drawn.el;
    }
    const el = this._run(run);
    this._rows.set(run.run_id, { key, el });
    this._used.add(run.run_id);
    return el;
  }

  private _run(run: IRun): HTMLElement {
    const row = el('div', 'nblab-run');
    row.dataset.runId = run.run_id;
    row.dataset.status = run.status;
    // line 1: status, name, loss sparkline; line 2: progress, actions
    const top = el('div', 'nblab-run-line');
    if (isMergeable(run)) {
      const choose = el('input', 'nblab-choose');
      choose.type = 'checkbox';
      choose.title = 'Choose this run for "merge chosen"';
      choose.checked = this._chosen.has(run.run_id);
      choose.onchange = () => {
        if (choose.checked) {
          this._chosen.add(run.run_id);
        } else {
          this._chosen.delete(run.run_id);
        }
        this._render();
      };
      top.appendChild(choose);
    }
    const badge = el('span', `nblab-badge nblab-run-status nblab-status-${run.status}`, run.status);
    if (run.error) {
      badge.title = run.error;
    }
    top.appendChild(badge);
    const name = el('span', 'nblab-run-name', run.name);
    name.title = `${run.name} (${run.run_id})`;
    top.appendChild(name);
    top.appendChild(sparkline(this.model.loss(run.run_id)));
    row.appendChild(top);

    const bottom = el('div', 'nblab-run-line nblab-run-detail');
    const progress = el('span', 'nblab-progress');
    const step = run.step ?? 0;
    progress.appendChild(
      el('span', 'nblab-progress-text', run.steps ? `${step}/${run.steps}` : `step ${step}`)
    );
    if (run.steps) {
      const bar = el('span', 'nblab-bar');
      const fill = el('span', 'nblab-bar-fill');
      fill.style.width = `${Math.min(100, (100 * step) / run.steps).toFixed(0)}%`;
      bar.appendChild(fill);
      progress.appendChild(bar);
    }
    const detail = runDetail(run);
    if (detail) {
      progress.appendChild(el('span', 'nblab-run-params', detail));
    }
    bottom.appendChild(progress);

    const actions = el('span', 'nblab-actions');
    actions.appendChild(
      this._button('notebook', 'Open the output notebook', async () => this.actions.openOutput(run))
    );
    if (!TERMINAL.includes(run.status)) {
      actions.appendChild(this._button('cancel', 'Cancel this run', () => this.actions.cancel(run)));
    }
    if (RERUNNABLE.includes(run.status) && (run.kind ?? 'train') === 'train') {
      actions.appendChild(
        this._button('rerun', 'Rerun with the same recipe', () => this.actions.rerun(run))
      );
    }
    actions.appendChild(
      this._button('copy id', `Copy the run id ${run.run_id}`, async () =>
        this.actions.copyRunId(run)
      )
    );
    bottom.appendChild(actions);
    row.appendChild(bottom);
    return row;
  }

  private _button(label: string, title: string, action: () => Promise<void>): HTMLElement {
    const button = el('button', `nblab-button nblab-action-${label.replace(/ /g, '-')}`, label);
    button.title = title;
    button.onclick = event => {
      event.preventDefault();
      event.stopPropagation();
      button.disabled = true;
      action().finally(() => (button.disabled = false));
    };
    return button;
  }

  private _filter: HTMLSelectElement;
  private _mergeChosen: HTMLElement;
  private _chosen = new Set<string>();
  private _list: HTMLElement;
  private _footer: HTMLElement;
  private _collapsed = new Set<string>();
  private _pending = false;
  private _rows = new Map<string, { key: string; el: HTMLElement }>();
  private _used = new Set<string>();
}
