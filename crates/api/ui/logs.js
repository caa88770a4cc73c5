// The logs page (`#/logs`, `#/logs/ORG/APP/NAME`): a live tail of a service's instance output
// from every region (or one), through the API's log stream (`…/services/{service}/logs`, JSON
// lines read as they come), each line with its region, instance and stream. The page keeps the
// last MAX_LINES lines; a region or node that did not answer is listed, not hidden.

import { get, servicePath, streamLines } from "./api.js";
import { h } from "./dom.js";

/** Most lines the tail keeps on the page (the oldest go). */
const MAX_LINES = 1000;

/** The stream being read, if any: `{abort}`. */
let running = null;
/** The form's last values, kept across navigations. */
const form = { region: "", grep: "", since: "", follow: true };

function stop() {
  if (running) running.abort();
  running = null;
}

/** The service the address names, as `{org, app, name}`, or null. */
function chosen(params) {
  if (!params || params.length < 3) return null;
  return { org: params[0], app: params[1], name: params[2] };
}

/** `#/logs/ORG/APP/NAME`. */
function hrefOf(s) {
  return `#/logs/${encodeURIComponent(s.org)}/${encodeURIComponent(s.app)}/${encodeURIComponent(s.name)}`;
}

/** The query of the stream, from the form. */
function queryOf() {
  const query = new URLSearchParams();
  if (form.region.trim()) query.set("region", form.region.trim());
  if (form.grep) query.set("grep", form.grep);
  if (form.since.trim()) query.set("since", form.since.trim());
  if (form.follow) query.set("follow", "true");
  return query.toString();
}

/** One line of output as a row of the tail. */
function lineNode(line) {
  return h("div", {
    class: `log-line ${line.stream}`, "data-region": line.region, "data-node": line.node,
    "data-instance": line.instance, "data-stream": line.stream,
  },
  h("span", { class: "time" }, line.time.slice(11, 23)), " ",
  h("span", { class: "where" }, `${line.region} ${line.instance} ${line.stream}`), " ",
  h("span", { class: "text" }, line.text));
}

/** Reads the service's stream into `tail`, saying how it goes in `status` and listing notices. */
function start(service, tail, notices, status) {
  stop();
  const controller = new AbortController();
  running = controller;
  status.textContent = "Connecting…";
  let shown = 0;
  const onEvent = (event) => {
    if (event.type === "line") {
      tail.append(lineNode(event));
      shown += 1;
      while (tail.childElementCount > MAX_LINES) tail.firstElementChild.remove();
    } else if (event.type === "notice") {
      notices.append(h("li", { "data-kind": event.kind, "data-region": event.region || "" },
        `${event.kind}: ${event.text}`));
    } else if (event.type === "caught_up") {
      status.textContent = `Following: ${shown} earlier line${shown === 1 ? "" : "s"} shown, new ones appear below.`;
      status.dataset.state = "following";
    }
  };
  const path = `${servicePath(service)}/logs?${queryOf()}`;
  streamLines(path, onEvent, controller.signal).then(() => {
    if (running !== controller) return;
    running = null;
    status.textContent = form.follow ? "The stream ended." : `${shown} line${shown === 1 ? "" : "s"}.`;
    status.dataset.state = "ended";
  }, (error) => {
    if (controller.signal.aborted) return;
    running = null;
    status.textContent = `The stream failed: ${error.message}`;
    status.dataset.state = "failed";
  });
}

/** A labelled field of the form. */
function field(id, label, attrs) {
  return h("div", { class: "field" }, h("label", { for: id }, label), h("input", { id, ...attrs }));
}

/** The page. */
export const logs = {
  name: "logs",
  title: "Logs",
  interval: 0,
  load: async () => get("/v1/services"),
  leave: stop,
  render(services, ctx, params) {
    stop();
    const service = chosen(params);
    const key = service ? `${service.org}/${service.app}/${service.name}` : "";
    const picker = h("select", { id: "log-service" },
      h("option", { value: "" }, "Choose a service"),
      services.map((s) => {
        const value = `${s.org}/${s.app}/${s.name}`;
        return h("option", { value, selected: value === key }, value);
      }));
    const status = h("p", { id: "log-status", class: "muted", role: "status" },
      service ? "" : "Choose a service to see its instances' output.");
    const notices = h("ul", { id: "log-notices", class: "problems" });
    const tail = h("div", { id: "log-tail", class: "log-tail", role: "log", "aria-live": "polite",
      "aria-label": "Instance output", tabindex: "0" });
    const submit = (event) => {
      event.preventDefault();
      const [org, app, name] = picker.value.split("/");
      if (!name) return;
      form.region = event.target.elements.region.value;
      form.grep = event.target.elements.grep.value;
      form.since = event.target.elements.since.value;
      form.follow = event.target.elements.follow.checked;
      const href = hrefOf({ org, app, name });
      if (location.hash === href) {
        tail.replaceChildren();
        notices.replaceChildren();
        start({ org, app, name }, tail, notices, status);
      } else location.hash = href;
    };
    const controls = h("form", { class: "log-form", role: "search", "aria-label": "Which output", onsubmit: submit },
      h("div", { class: "field" }, h("label", { for: "log-service" }, "Service"), picker),
      field("log-region", "Region", { name: "region", value: form.region, placeholder: "every region", autocomplete: "off" }),
      field("log-grep", "Matching", { name: "grep", value: form.grep, placeholder: "regular expression", autocomplete: "off" }),
      field("log-since", "Since", { name: "since", value: form.since, placeholder: "10m, 1h or a time", autocomplete: "off" }),
      h("div", { class: "field check" },
        h("input", { id: "log-follow", name: "follow", type: "checkbox", checked: form.follow }),
        h("label", { for: "log-follow" }, "Follow new lines")),
      h("button", { type: "submit", id: "log-show" }, "Show"),
      h("button", { type: "button", id: "log-stop", onclick: () => {
        stop();
        status.textContent = "Stopped.";
        status.dataset.state = "stopped";
      } }, "Stop"));
    if (service) {
      ctx.setTitle(`Logs of ${service.name} (${service.org}/${service.app})`);
      start(service, tail, notices, status);
    }
    return [
      h("h1", null, "Logs", service ? [" ", h("span", { class: "subtitle" }, key)] : null),
      controls, status, notices, tail,
      h("p", { class: "help" }, "Agents keep each instance's standard output and error on their node (three files of 10 MiB per stream). ",
        "From a terminal: ", h("code", null, "meridian logs SERVICE --app APP -f"), "."),
    ];
  },
};
