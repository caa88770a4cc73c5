// The regions page: each region with its state, on a map drawn from the regions' coordinates and
// in a table. An admin token sees what each region's control plane last reported (its nodes,
// capacity, gateway and services); an org token sees the regions through its own services'
// status (whether the region reports, and its services' instances there).

import { ApiError, each, get } from "./api.js";
import { h, table } from "./dom.js";
import { badge, duration } from "./format.js";
import { regionMap } from "./map.js";
import { limitNote, loadServices } from "./services.js";

/** A region's report older than this says nothing about now (as the API's status says). */
const STALE_SECONDS = 10;

/** An admin's view: each region's last report (`null` when it has not reported). */
async function loadReports(regions) {
  const reports = await each(regions, (r) => get(`/v1/regions/${encodeURIComponent(r.name)}/report`));
  return reports.map((answer) => {
    if (answer.error instanceof ApiError && answer.error.status === 404) return null;
    if (answer.error) throw answer.error;
    return answer.value;
  });
}

/** The state of a region from its last report (admin). */
function reportedState(report) {
  if (!report) return "no report";
  if (report.age_seconds > STALE_SECONDS) return "silent";
  if (report.report.nodes === 0) return "no nodes";
  return "reporting";
}

/** The state of a region from the status rows of the org's services there. */
function statusState(rows) {
  if (rows.length === 0) return "no services of yours";
  const ages = rows.map((r) => r.report_age_seconds).filter((a) => a !== null && a !== undefined);
  if (ages.length === 0) return "no report";
  return Math.min(...ages) > STALE_SECONDS ? "silent" : "reporting";
}

function adminRows(data) {
  return data.regions.map((region, i) => {
    const report = data.reports[i];
    const services = report ? report.report.services : [];
    const placed = services.reduce((n, s) => n + s.placed, 0);
    const healthy = services.reduce((n, s) => n + s.healthy, 0);
    return {
      state: reportedState(report),
      cells: [
        { value: report ? report.report.nodes : "–", attrs: { "data-field": "nodes" } },
        report ? report.report.capacity : "–",
        report && report.report.gateway ? report.report.gateway : "–",
        services.length,
        { value: `${healthy}/${placed}`, attrs: { "data-field": "instances" } },
        report ? `${duration(report.age_seconds)} ago` : "never (since the control plane started)",
      ],
    };
  });
}

function orgRows(data) {
  const statuses = data.services.services.filter((e) => e.status).map((e) => e.status);
  return data.regions.map((region) => {
    const rows = statuses.flatMap((s) => s.regions.filter((r) => r.region === region.name));
    const placed = rows.reduce((n, r) => n + (r.placed || 0), 0);
    const healthy = rows.reduce((n, r) => n + (r.healthy || 0), 0);
    const ages = rows.map((r) => r.report_age_seconds).filter((a) => a !== null && a !== undefined);
    return {
      state: statusState(rows),
      cells: [
        rows.length,
        { value: `${healthy}/${placed}`, attrs: { "data-field": "instances" } },
        ages.length ? `${duration(Math.min(...ages))} ago` : "–",
      ],
    };
  });
}

/** The page. */
export const regions = {
  name: "regions",
  title: "Regions",
  interval: 5000,
  async load(_params, ctx) {
    const list = await get("/v1/regions");
    if (ctx.who.admin) return { admin: true, regions: list, reports: await loadReports(list) };
    return { admin: false, regions: list, services: await loadServices() };
  },
  render(data) {
    const rows = data.admin ? adminRows(data) : orgRows(data);
    const columns = [{ label: "Region" }, { label: "State" }, { label: "Latitude", numeric: true },
      { label: "Longitude", numeric: true }].concat(data.admin
      ? [{ label: "Nodes", numeric: true }, { label: "Capacity", numeric: true }, { label: "Gateway" },
        { label: "Services", numeric: true }, { label: "Healthy / placed", numeric: true },
        { label: "Last report" }]
      : [{ label: "Your services", numeric: true }, { label: "Healthy / placed", numeric: true },
        { label: "Last report" }]);
    const tableRows = data.regions.map((region, i) => ({
      attrs: { "data-region": region.name, "data-state": rows[i].state },
      cells: [region.name, badge(rows[i].state), region.lat, region.lon].concat(rows[i].cells),
    }));
    const mapped = data.regions.map((r, i) => ({ ...r, state: rows[i].state }));
    return [
      h("h1", null, "Regions"),
      data.regions.length === 0
        ? h("p", { class: "empty-state" }, "No regions yet (`meridian region add`).")
        : [
          regionMap(mapped, `${data.regions.length} region${data.regions.length === 1 ? "" : "s"} by their coordinates`),
          data.admin ? null : [
            h("p", { class: "help" }, "With an org's token, a region's state is what your services' status says of it; the installation's admin token shows its nodes and capacity."),
            limitNote(data.services),
          ],
          table("Regions and their state", columns, tableRows, { id: "regions-table" }),
        ],
    ];
  },
};
