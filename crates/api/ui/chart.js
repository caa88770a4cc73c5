// Line charts drawn as SVG: one line per region over the metrics window, with a grid, the time
// along the bottom, a legend, and a text alternative saying each line's last and highest value.

import { h, svg } from "./dom.js";
import { clock } from "./format.js";

const WIDTH = 480;
const HEIGHT = 220;
const MARGIN = { top: 12, right: 12, bottom: 28, left: 60 };
/** Colours a chart tells apart (classes `series-0` … in style.css); more lines reuse them. */
const COLOURS = 6;

/** The smallest round number (1, 2, 2.5 or 5 times a power of ten) at least `max`. */
function roundUp(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= max);
}

/** The path of `points` through `x` and `y`, lifted where a value is missing. */
function pathOf(points, x, y) {
  let d = "";
  let down = false;
  for (const p of points) {
    if (p.v === null || p.v === undefined) {
      down = false;
      continue;
    }
    d += `${down ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
    down = true;
  }
  return d;
}

/** Points with a value whose neighbours have none: a path alone would not show them. */
function lonely(points) {
  const has = (i) => i >= 0 && i < points.length && points[i].v !== null && points[i].v !== undefined;
  return points.filter((_, i) => has(i) && !has(i - 1) && !has(i + 1));
}

/**
 * A chart named `id` titled `title` of `series` (`{name, points: [{t, v}]}`, `t` in Unix seconds,
 * `v` null where there is no figure) from `start` to `end`, its values written by `format`.
 */
export function lineChart({ id, title, format, start, end, series }) {
  const width = WIDTH - MARGIN.left - MARGIN.right;
  const height = HEIGHT - MARGIN.top - MARGIN.bottom;
  const values = series.flatMap((s) => s.points.map((p) => p.v)).filter((v) => v !== null && v !== undefined);
  const top = roundUp(Math.max(0, ...values));
  const span = Math.max(1, end - start);
  const x = (t) => MARGIN.left + ((t - start) / span) * width;
  const y = (v) => MARGIN.top + height - (v / top) * height;

  const grid = [0, 1, 2, 3, 4].map((i) => {
    const v = (top * i) / 4;
    return svg("g", { class: "grid" },
      svg("line", { x1: MARGIN.left, x2: MARGIN.left + width, y1: y(v), y2: y(v) }),
      svg("text", { x: MARGIN.left - 6, y: y(v) + 4, class: "tick y" }, format(v)));
  });
  const times = [0, 1, 2, 3].map((i) => {
    const t = start + (span * i) / 3;
    return svg("text", { x: x(t), y: HEIGHT - 8, class: `tick x${i === 0 ? " first" : i === 3 ? " last" : ""}` },
      clock(t));
  });
  const lines = series.map((s, i) => svg("g", { class: `series-${i % COLOURS}` },
    svg("path", { class: "line", d: pathOf(s.points, x, y) }),
    lonely(s.points).map((p) => svg("circle", { class: "dot", cx: x(p.t), cy: y(p.v), r: 2.5 }))));
  const empty = values.length === 0
    ? svg("text", { x: MARGIN.left + width / 2, y: MARGIN.top + height / 2, class: "empty" },
      "no figures in this window")
    : null;

  const describe = (s) => {
    const known = s.points.filter((p) => p.v !== null && p.v !== undefined);
    if (known.length === 0) return `${s.name}: no figures`;
    const last = known[known.length - 1].v;
    return `${s.name}: last ${format(last)}, highest ${format(Math.max(...known.map((p) => p.v)))}`;
  };
  const description = series.length ? series.map(describe).join("; ") : "no region";

  return h("figure", { class: "chart", id, "data-chart": id },
    h("figcaption", { id: `${id}-title` }, title),
    svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-labelledby": `${id}-title ${id}-desc`,
      preserveAspectRatio: "xMidYMid meet",
    },
    svg("desc", { id: `${id}-desc` }, description),
    grid, times, lines, empty),
    h("ul", { class: "legend", "aria-hidden": "true" }, series.map((s, i) =>
      h("li", null, h("span", { class: `swatch series-${i % COLOURS}` }), s.name))));
}
