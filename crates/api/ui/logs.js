// The logs page. The API has no log stream yet (issue 23, "Logs"): agents keep each instance's
// output on their node, where `meridian logs` reads it. The page says so rather than pretend.

import { h } from "./dom.js";

/** The page. */
export const logs = {
  name: "logs",
  title: "Logs",
  interval: 0,
  load: async () => null,
  render() {
    return [
      h("h1", null, "Logs"),
      h("p", { class: "notice", id: "logs-unavailable", role: "note" },
        "A live log tail is not available yet: this installation's API has no log stream."),
      h("p", null, "Agents keep each instance's standard output and error on their node, rotated at 10 MiB. ",
        "On a node, ", h("code", null, "meridian logs SERVICE --app APP"),
        " prints the last lines of each instance's output there (",
        h("code", null, "--dev-dir"), " reads every agent of a ", h("code", null, "meridian dev"), ")."),
    ];
  },
};
