// A service's page: its health and rollout in each region, live charts of its requests, errors
// and latency per region (`…/metrics`), the figures over the window, its rollout history and its
// deployment versions.

import { get, servicePath } from "./api.js";
import { lineChart } from "./chart.js";
import { h, section, table } from "./dom.js";
import { badge, clock, dateTime, duration, ms, num, percent } from "./format.js";
import { progressView } from "./rollout.js";

/** The windows offered, each with a step that keeps a chart at 30 to 60 points. */
const WINDOWS = [
  { window: "5m", step: "10s", label: "Last 5 minutes" },
  { window: "15m", step: "30s", label: "Last 15 minutes" },
  { window: "1h", step: "60s", label: "Last hour" },
];

/** The window chosen (an index of WINDOWS), kept across refreshes and services. */
let chosen = 0;

function healthSection(status) {
  const rows = status.regions.map((r) => ({
    attrs: { "data-region": r.region },
    cells: [
      r.region,
      badge(r.state),
      { value: `${r.healthy ?? "?"}/${r.desired}`, attrs: { "data-field": "healthy" } },
      { value: r.placed ?? "?", attrs: { "data-field": "placed" } },
      `v${r.version}`,
      r.report_age_seconds === null || r.report_age_seconds === undefined
        ? "never" : `${duration(r.report_age_seconds)} ago`,
      progressView(r, `Rollout in ${r.region}`),
      (r.problems || []).length
        ? h("ul", { class: "problems" }, r.problems.map((p) => h("li", null, p)))
        : h("span", { class: "muted" }, "none"),
    ],
  }));
  return section("health", "Health by region",
    table(`${status.name} in ${status.regions.length} region${status.regions.length === 1 ? "" : "s"}`,
      [{ label: "Region" }, { label: "State" }, { label: "Healthy / wanted", numeric: true },
        { label: "Placed", numeric: true }, { label: "Version" }, { label: "Last report" },
        { label: "Rollout" }, { label: "Problems" }],
      rows, { id: "health-table" }));
}

/** The series of `pick(point)` per region. */
function seriesOf(metrics, pick) {
  return metrics.regions.map((r) => ({
    name: r.region,
    points: r.points.map((p) => ({ t: p.start + p.seconds, v: pick(p) })),
  }));
}

function instancesText(instances) {
  const parts = Object.entries(instances || {}).filter(([, n]) => n > 0).map(([state, n]) => `${n} ${state}`);
  return parts.length ? parts.join(", ") : "none";
}

function metricsSection(metrics, rerender) {
  const start = metrics.end - metrics.window_seconds;
  const common = { start, end: metrics.end };
  const select = h("select", {
    id: "metrics-window",
    onchange: (e) => {
      chosen = Number(e.target.value);
      rerender();
    },
  }, WINDOWS.map((w, i) => h("option", { value: i, selected: i === chosen }, w.label)));
  const charts = h("div", { class: "charts" },
    lineChart({
      ...common, id: "chart-rps", title: "Requests per second", format: (v) => num(v, 2),
      series: seriesOf(metrics, (p) => p.served.requests_per_second),
    }),
    lineChart({
      ...common, id: "chart-5xx", title: "Share answered 5xx", format: percent,
      series: seriesOf(metrics, (p) => (p.served.requests ? p.served.error_ratio_5xx : null)),
    }),
    lineChart({
      ...common, id: "chart-p99", title: "Latency p99", format: ms,
      series: seriesOf(metrics, (p) => (p.served.latency_ms ? p.served.latency_ms.p99 : null)),
    }));
  const cell = (field, value, text) => ({ value: text, attrs: { "data-field": field, "data-value": value ?? "" } });
  const rows = metrics.regions.map((r) => {
    const served = r.total.served;
    const latency = served.latency_ms || {};
    return {
      attrs: { "data-region": r.region },
      cells: [
        r.region,
        cell("requests", served.requests, String(served.requests)),
        cell("rps", served.requests_per_second, num(served.requests_per_second, 2)),
        cell("4xx", served.error_ratio_4xx, percent(served.error_ratio_4xx)),
        cell("5xx", served.error_ratio_5xx, percent(served.error_ratio_5xx)),
        cell("p50", latency.p50, ms(latency.p50)),
        cell("p90", latency.p90, ms(latency.p90)),
        cell("p99", latency.p99, ms(latency.p99)),
        cell("connections", r.total.open_connections, String(r.total.open_connections)),
        cell("instances", null, instancesText(r.instances)),
        cell("ingress-rps", r.total.ingress.requests_per_second, num(r.total.ingress.requests_per_second, 2)),
        cell("ingress-5xx", r.total.ingress.error_ratio_5xx, percent(r.total.ingress.error_ratio_5xx)),
      ],
    };
  });
  return section("metrics", "Requests",
    h("div", { class: "filter" }, h("label", { for: "metrics-window" }, "Window"), select),
    h("p", { class: "help" },
      `Counted by the node proxies in front of the instances, in steps of ${duration(metrics.step_seconds)}, `,
      `up to ${clock(metrics.end)} UTC (the regions' last window). Gateway figures include requests no instance could take.`),
    charts,
    table(`Over the window (${duration(metrics.window_seconds)})`,
      [{ label: "Region" }, { label: "Requests", numeric: true }, { label: "Req/s", numeric: true },
        { label: "4xx", numeric: true }, { label: "5xx", numeric: true }, { label: "p50", numeric: true },
        { label: "p90", numeric: true }, { label: "p99", numeric: true },
        { label: "Connections", numeric: true }, { label: "Instances" },
        { label: "Gateway req/s", numeric: true }, { label: "Gateway 5xx", numeric: true }],
      rows, { id: "metrics-table" }));
}

function rolloutsSection(records) {
  const rows = records.map((rec) => {
    const r = rec.rollout;
    return {
      attrs: { "data-region": rec.region, "data-version": r.version },
      cells: [
        `v${r.version}`, rec.region, r.strategy.replace(/_/g, " "), badge(r.phase.replace(/_/g, " ")),
        dateTime(Math.floor(r.started_at / 1000)),
        duration((r.updated_at - r.started_at) / 1000),
        r.failure ? r.failure.reason : h("span", { class: "muted" }, "–"),
      ],
    };
  });
  return section("rollouts", "Rollout history",
    records.length === 0
      ? h("p", { class: "empty-state" }, "No rollout reported yet: a version's first deployment is not a rollout.")
      : table("Rollouts by region, newest version first",
        [{ label: "Version" }, { label: "Region" }, { label: "Strategy" }, { label: "Phase" },
          { label: "Started" }, { label: "Took" }, { label: "Why it failed" }],
        rows, { id: "rollouts-table" }));
}

function runtimeText(definition) {
  const runtime = definition.runtime || {};
  if (runtime.image) return `image ${runtime.image.ref}`;
  if (runtime.process) return `process ${runtime.process.command}`;
  return "–";
}

function deploymentsSection(deployments, current) {
  const rows = deployments.slice().reverse().map((d) => ({
    attrs: { "data-version": d.version },
    cells: [
      d.version === current ? [`v${d.version} `, h("span", { class: "badge ok" }, "current")] : `v${d.version}`,
      d.origin === "rollback" && d.rolled_back_from ? `rollback to v${d.rolled_back_from}` : d.origin,
      dateTime(d.created_at),
      d.definition.regions.join(", "),
      runtimeText(d.definition),
    ],
  }));
  return section("deployments", "Deployment versions",
    table("Versions, newest first",
      [{ label: "Version" }, { label: "Origin" }, { label: "Created" }, { label: "Regions" }, { label: "Runtime" }],
      rows, { id: "deployments-table" }));
}

/** The page of the service named by the route's `org`, `app` and `name`. */
export const service = {
  name: "service",
  title: "Service",
  interval: 10000,
  async load([org, app, name]) {
    const path = servicePath({ org, app, name });
    const { window, step } = WINDOWS[chosen];
    const [status, deployments, rollouts, metrics] = await Promise.all([
      get(`${path}/status`), get(`${path}/deployments`), get(`${path}/rollouts`),
      get(`${path}/metrics?window=${window}&step=${step}`),
    ]);
    return { status, deployments, rollouts, metrics };
  },
  render(data, ctx) {
    const s = data.status;
    ctx.setTitle(`${s.name} (${s.org}/${s.app})`);
    return [
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" },
        h("a", { href: "#/services" }, "Services"), ` / ${s.org} / ${s.app} /`),
      h("h1", null, s.name, " ", h("span", { class: "subtitle" }, `${s.org}/${s.app} · version ${s.version}`)),
      healthSection(s),
      metricsSection(data.metrics, ctx.refresh),
      rolloutsSection(data.rollouts),
      deploymentsSection(data.deployments, s.version),
      section("logs", "Logs",
        h("p", null, h("a", { href: `#/logs/${encodeURIComponent(s.org)}/${encodeURIComponent(s.app)}/${encodeURIComponent(s.name)}`, id: "logs-link" },
          "Live log tail"), " of this service's instances in every region.")),
    ];
  },
};
