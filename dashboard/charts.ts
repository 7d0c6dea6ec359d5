/**
 * Hand-written SVG bar charts: a few hundred bytes of code instead of a chart library. The SVG scales with its
 * container (viewBox), each bar carries its value in a `<title>` (hover) and in `data-value`.
 */
import { s } from './dom';

export interface Bar {
  /** Short axis label, e.g. `11-22`. */
  readonly label: string;
  readonly value: number;
  /** Hover text, e.g. `2026-11-22: 12 requests`. */
  readonly title: string;
  /** Identifies the bar, e.g. the day; kept in `data-key`. */
  readonly key?: string;
}

export interface BarChartOptions {
  /** Accessible name of the chart. */
  readonly label: string;
  /** Formats the y-axis values. */
  readonly format: (value: number) => string;
  /** Text drawn in the middle when every bar is zero. */
  readonly emptyText?: string;
  /** Width of the drawing in SVG units; {@link chartWidth} picks one that keeps the text legible. @default 640 */
  readonly width?: number;
}

/**
 * A drawing width for the current screen. The SVG scales to its container, text included, so a phone gets a
 * narrower drawing instead of a shrunken wide one.
 */
export function chartWidth(viewportWidth: number): number {
  return viewportWidth < 720 ? 360 : 640;
}

const HEIGHT = 200;
const LEFT = 64;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 24;

/** The smallest "round" number (1, 2 or 5 × 10^n) at or above `value`. */
export function niceCeil(value: number): number {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * magnitude >= value * (1 - 1e-12)) return step * magnitude;
  return 10 * magnitude;
}

/** A bar chart of `bars`, left to right, with a zero-based y axis. */
export function barChart(bars: readonly Bar[], options: BarChartOptions): SVGSVGElement {
  const WIDTH = options.width ?? 640;
  const plotWidth = WIDTH - LEFT - RIGHT;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const max = Math.max(0, ...bars.map((b) => b.value));
  const top = niceCeil(max);
  const y = (v: number) => TOP + plotHeight - (v / top) * plotHeight;
  const slot = plotWidth / Math.max(1, bars.length);
  const svg = s('svg', { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: 'chart', role: 'img', 'aria-label': options.label });
  for (const tick of [0, top / 2, top]) {
    svg.append(
      s('line', { x1: LEFT, x2: WIDTH - RIGHT, y1: y(tick), y2: y(tick), class: 'grid' }),
      s('text', { x: LEFT - 6, y: y(tick) + 4, class: 'axis', 'text-anchor': 'end' }, options.format(tick)),
    );
  }
  bars.forEach((bar, i) => {
    const height = Math.max(0, TOP + plotHeight - y(bar.value));
    svg.append(
      s(
        'rect',
        {
          class: 'bar',
          x: (LEFT + i * slot + slot * 0.1).toFixed(2),
          y: (TOP + plotHeight - height).toFixed(2),
          width: Math.max(1, slot * 0.8).toFixed(2),
          // A non-zero value always shows at least a sliver.
          height: (bar.value > 0 ? Math.max(height, 1.5) : 0).toFixed(2),
          'data-key': bar.key ?? bar.label,
          'data-value': bar.value,
        },
        s('title', null, bar.title),
      ),
    );
  });
  const labelled = bars.length <= 8 ? bars.map((_, i) => i) : [0, Math.floor((bars.length - 1) / 2), bars.length - 1];
  for (const i of labelled) {
    svg.append(s('text', { x: LEFT + (i + 0.5) * slot, y: HEIGHT - 6, class: 'axis', 'text-anchor': 'middle' }, bars[i]!.label));
  }
  if (max === 0 && options.emptyText) {
    svg.append(s('text', { x: LEFT + plotWidth / 2, y: TOP + plotHeight / 2, class: 'empty', 'text-anchor': 'middle' }, options.emptyText));
  }
  return svg;
}
