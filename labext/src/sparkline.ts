/** A small SVG line of a loss series (null values, e.g. a diverged loss, break the line). */
import { ISeries } from './types';

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The path's `d` attribute for `series` in a width x height box (y grows downwards). */
export function sparklinePath(series: ISeries, width: number, height: number): string {
  const points = series.steps
    .map((s, i) => [s, series.values[i]] as [number, number | null])
    .filter(([, v]) => v !== null && Number.isFinite(v)) as [number, number][];
  if (points.length === 0) {
    return '';
  }
  const xs = points.map(p => p[0]);
  const ys = points.map(p => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  const pad = 1;
  const sx = (x: number) =>
    x1 === x0 ? width / 2 : pad + ((x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y: number) =>
    y1 === y0 ? height / 2 : pad + ((y1 - y) / (y1 - y0)) * (height - 2 * pad);
  let d = '';
  let pen = 'M';
  series.steps.forEach((s, i) => {
    const v = series.values[i];
    if (v === null || !Number.isFinite(v)) {
      pen = 'M';
      return;
    }
    d += `${pen}${sx(s).toFixed(1)},${sy(v).toFixed(1)}`;
    pen = 'L';
  });
  return d;
}

export function sparkline(
  series: ISeries | undefined,
  width = 80,
  height = 18
): SVGSVGElement {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('class', 'nblab-sparkline');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const d = series ? sparklinePath(series, width, height) : '';
  if (d) {
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', d);
    svg.appendChild(path);
    const last = series!.values[series!.values.length - 1];
    const title = document.createElementNS(SVG_NS, 'title');
    title.textContent =
      last === null || last === undefined ? 'loss: NaN' : `loss ${last.toPrecision(4)}`;
    svg.appendChild(title);
  }
  return svg;
}
