// The services page: every service the token sees, with its health in each of its regions (the
// state, healthy instances against those wanted), from `GET /v1/services` and each service's
// `…/status`.

import { each, get, servicePath } from "./api.js";
import { h, table } from "./dom.js";
import { badge, dateTime } from "./format.js";

/** Most services whose status a page asks for (one request each); the rest are counted. */
export const STATUS_LIMIT = 100;

/** Every visible service (`/v1/services`) with the status of the first STATUS_LIMIT of them. */
export async function loadServices() {
  const all = await get("/v1/services");
  const shown = all.slice(0, STATUS_LIMIT);
  const statuses = await each(shown, (s) => get(`${servicePath(s)}/status`));
  return {
    total: all.length,
    services: shown.map((service, i) => ({ service, status: statuses[i].value, error: statuses[i].error })),
  };
}

/** The page's link to a service. */
export function serviceHref(s) {
  return `#/services/${encodeURIComponent(s.org)}/${encodeURIComponent(s.app)}/${encodeURIComponent(s.name)}`;
}

/** A service's regions as a list: each region's state and healthy instances against those wanted. */
export function healthList(entry) {
  if (entry.error) return h("span", { class: "error" }, `status unavailable: ${entry.error.message}`);
  return h("ul", { class: "health" }, entry.status.regions.map((r) => h("li", {
    "data-region": r.region, "data-state": r.state,
    "data-healthy": r.healthy ?? "", "data-desired": r.desired,
  },
  h("span", { class: "region" }, r.region), " ", badge(r.state), " ",
  h("span", { class: "count" }, `${r.healthy ?? "?"}/${r.desired} healthy`))));
}

/** A note when more services exist than the page asked the status of. */
export function limitNote(data) {
  return data.total > data.services.length
    ? h("p", { class: "note" }, `Showing the first ${data.services.length} of ${data.total} services.`)
    : null;
}

/** What the filter field holds, kept across refreshes. */
let filter = "";

function applyFilter(rows) {
  const words = filter.trim().toLowerCase();
  for (const row of rows) row.hidden = words !== "" && !row.dataset.service.includes(words);
}

/** The page. */
export const services = {
  name: "services",
  title: "Services",
  interval: 5000,
  load: () => loadServices(),
  render(data) {
    const rows = data.services.map((entry) => {
      const s = entry.service;
      const key = `${s.org}/${s.app}/${s.name}`;
      return {
        attrs: { "data-service": key },
        cells: [
          h("a", { href: serviceHref(s), id: `link-${key.replace(/\//g, "-")}` }, s.name),
          s.app, s.org, { value: `v${s.version}`, attrs: { "data-field": "version" } },
          healthList(entry), dateTime(s.updated_at),
        ],
      };
    });
    const tableNode = table(`${data.total} service${data.total === 1 ? "" : "s"}, with their health by region`,
      [{ label: "Service" }, { label: "App" }, { label: "Org" }, { label: "Version" },
        { label: "Health by region" }, { label: "Last change" }],
      rows, { id: "services-table" });
    const trs = tableNode.querySelectorAll("tbody tr");
    applyFilter(trs);
    const field = h("input", {
      id: "service-filter", type: "search", value: filter, autocomplete: "off",
      oninput: (e) => {
        filter = e.target.value;
        applyFilter(trs);
      },
    });
    return [
      h("h1", null, "Services"),
      data.total === 0
        ? h("p", { class: "empty-state" }, "No services are visible to this token.")
        : [h("div", { class: "filter" }, h("label", { for: "service-filter" }, "Filter by org, app or name"), field),
          limitNote(data), tableNode],
    ];
  },
};
