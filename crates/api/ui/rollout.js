// How far a rollout in one region has come, from the region's row of a service's status: its
// phase and step, the share of requests or of healthy instances the new version has, and why it
// failed when a gate failed.

import { h } from "./dom.js";
import { badge } from "./format.js";

/** The phase as words (`rolled_back` → `rolled back`). */
function words(value) {
  return String(value).replace(/_/g, " ");
}

/**
 * The progress of the rollout in `row` (a RegionStatus): `{phase, fraction (0 to 1 or null),
 * detail}`, or null when the region reports none and runs one version.
 */
export function progressOf(row) {
  const r = row.rollout;
  const versions = row.versions || [];
  if (!r && versions.length < 2) return null;
  const version = r ? r.version : row.version;
  const healthyNew = (versions.find((v) => v.version === version) || {}).healthy || 0;
  const byInstances = row.desired > 0 ? Math.min(1, healthyNew / row.desired) : 1;
  if (!r) {
    return { phase: "rolling out", fraction: byInstances, detail: `v${version}: ${healthyNew}/${row.desired} healthy` };
  }
  const parts = [`${words(r.strategy)} v${r.previous} → v${r.version}`];
  if (r.steps > 1) parts.push(`step ${r.step + 1}/${r.steps}`);
  const split = (r.weights || []).map((w) => `v${w.version} ${w.weight}%`).join(", ");
  if (split) parts.push(split);
  if (r.promoted) parts.push("promoted");
  if (r.failure) parts.push(r.failure.reason);
  let fraction;
  if (r.phase === "succeeded") fraction = 1;
  else if (r.phase === "failed" || r.phase === "rolled_back") fraction = null;
  else if ((r.weights || []).length) {
    const weight = (r.weights.find((w) => w.version === r.version) || {}).weight || 0;
    fraction = weight / 100;
  } else {
    fraction = byInstances;
    parts.push(`v${version} ${healthyNew}/${row.desired} healthy`);
  }
  return { phase: words(r.phase), fraction, detail: parts.join(" · ") };
}

/** The rollout of `row` as a badge, a progress bar labelled by `label`, and its detail. */
export function progressView(row, label) {
  const p = progressOf(row);
  if (!p) return h("span", { class: "muted" }, "no rollout");
  const bar = p.fraction === null
    ? null
    : h("progress", { max: 100, value: Math.round(p.fraction * 100), "aria-label": label },
      `${Math.round(p.fraction * 100)}%`);
  return h("div", { class: "rollout", "data-phase": p.phase },
    badge(p.phase), " ", bar, bar ? h("span", { class: "pct" }, ` ${Math.round(p.fraction * 100)}%`) : null,
    h("div", { class: "detail" }, p.detail));
}
