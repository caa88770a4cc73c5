// The deployments page: each service's current version in each of its regions, with the
// progress of the rollout there (phase, step, the new version's share of requests or of healthy
// instances, and why it failed when a gate failed).

import { h, table } from "./dom.js";
import { badge, dateTime } from "./format.js";
import { progressOf, progressView } from "./rollout.js";
import { limitNote, loadServices, serviceHref } from "./services.js";

/** The page. */
export const deployments = {
  name: "deployments",
  title: "Deployments",
  interval: 5000,
  load: () => loadServices(),
  render(data) {
    const rows = [];
    let underWay = 0;
    for (const entry of data.services) {
      const s = entry.service;
      const key = `${s.org}/${s.app}/${s.name}`;
      const regions = entry.status ? entry.status.regions : [];
      if (entry.error) {
        rows.push({
          attrs: { "data-service": key },
          cells: [h("a", { href: serviceHref(s) }, key), `v${s.version}`, "–", "–",
            h("span", { class: "error" }, entry.error.message), dateTime(s.updated_at)],
        });
      }
      for (const r of regions) {
        const progress = progressOf(r);
        if (progress && progress.fraction !== 1 && progress.fraction !== null) underWay += 1;
        rows.push({
          attrs: { "data-service": key, "data-region": r.region },
          cells: [h("a", { href: serviceHref(s) }, key), `v${r.version}`, r.region, badge(r.state),
            progressView(r, `Rollout of ${key} in ${r.region}`), dateTime(s.updated_at)],
        });
      }
    }
    return [
      h("h1", null, "Deployments and rollouts"),
      h("p", { class: "summary", id: "rollouts-under-way" },
        underWay === 0 ? "No rollout under way." : `${underWay} rollout${underWay === 1 ? "" : "s"} under way.`),
      limitNote(data),
      data.total === 0
        ? h("p", { class: "empty-state" }, "No services are visible to this token.")
        : table("Current version of each service in each region",
          [{ label: "Service" }, { label: "Version" }, { label: "Region" }, { label: "State" },
            { label: "Rollout" }, { label: "Last change" }],
          rows, { id: "deployments-table" }),
    ];
  },
};
