// The sign-in form: the user pastes an API token (an org's or the installation's admin token);
// it is checked with `GET /v1/whoami` and kept for this tab only.

import { ApiError, forget, get, remember } from "./api.js";
import { h } from "./dom.js";

/** The form; `done(who)` is called once a token is accepted. `reason` says why it is shown. */
export function signIn(done, reason) {
  const error = h("p", { id: "signin-error", class: "error", role: "alert" }, reason || "");
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, "aria-describedby": "token-help signin-error",
  });
  const form = h("form", {
    class: "signin", "aria-labelledby": "signin-title", novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const secret = input.value.trim();
      if (!secret) {
        error.textContent = "Enter a token.";
        input.focus();
        return;
      }
      error.textContent = "";
      remember(secret);
      try {
        done(await get("/v1/whoami"));
      } catch (e) {
        forget();
        error.textContent = e instanceof ApiError && e.status === 401
          ? `This token was refused: ${e.message}.`
          : `Could not sign in: ${e.message}.`;
        input.select();
        input.focus();
      }
    },
  },
  h("h1", { id: "signin-title" }, "Sign in"),
  h("label", { for: "token" }, "API token"),
  h("p", { id: "token-help", class: "help" },
    "An org's token shows that org's services; the installation's admin token shows every org. ",
    "The token stays in this tab (sessionStorage) and is sent only to this server's API."),
  input,
  h("button", { type: "submit" }, "Sign in"),
  error);
  return form;
}
