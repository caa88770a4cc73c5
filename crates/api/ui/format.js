// How figures and states read on the dashboard.

import { h } from "./dom.js";

/** `x` with at most `digits` decimals (no trailing zeros), or "–" for none. */
export function num(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x.toFixed(digits)).toString();
}

/** A ratio (0 to 1) as a percentage with one decimal. */
export function percent(ratio) {
  if (ratio === null || ratio === undefined) return "–";
  return `${(ratio * 100).toFixed(1)}%`;
}

/** Milliseconds, shorter as they grow. */
export function ms(x) {
  if (x === null || x === undefined) return "–";
  if (x >= 1000) return `${num(x / 1000, 2)}s`;
  return `${num(x, x >= 100 ? 0 : 1)}ms`;
}

/** A time (Unix seconds) as `YYYY-MM-DD HH:MM:SS UTC`. */
export function dateTime(unixSeconds) {
  return `${new Date(unixSeconds * 1000).toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

/** A time (Unix seconds) as `HH:MM:SS` (UTC). */
export function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toISOString().slice(11, 19);
}

/** A number of seconds as a short duration (`45s`, `3m 20s`, `2h 5m`). */
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

/** How good a state is: `ok`, `warn`, `bad` or `idle` (the badge's class). */
export function severity(state) {
  if (["running", "reporting", "succeeded"].includes(state)) return "ok";
  if (["rolling back", "rolled back", "unknown", "silent", "no report", "failed"].includes(state)) {
    return "bad";
  }
  if (["scaled to zero", "no services", "no services of yours"].includes(state)) return "idle";
  return "warn";
}

/** A state as a badge: its words, with a mark so that it does not rely on colour alone. */
export function badge(state) {
  const level = severity(state);
  const mark = { ok: "●", warn: "▲", bad: "✖", idle: "○" }[level];
  return h("span", { class: `badge ${level}`, "data-state": state },
    h("span", { "aria-hidden": "true" }, `${mark} `), state);
}
