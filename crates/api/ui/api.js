// The dashboard's API client: the token the user gave, kept in sessionStorage (gone when the tab
// closes), sent as `Authorization: Bearer` on every request to this origin's public API.

const TOKEN_KEY = "meridian.token";

/** Most requests the dashboard has in flight at once. */
const PARALLEL = 6;

/** An error answer of the API (or no answer: `status` 0), with its message and field. */
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field || null;
  }
}

/** The token of this tab's session, or null. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `secret` as this tab's token. */
export function remember(secret) {
  sessionStorage.setItem(TOKEN_KEY, secret);
}

/** Forgets this tab's token. */
export function forget() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** `GET path` of the API with the session's token: its JSON body, or an ApiError. */
export async function get(path) {
  const secret = token();
  if (!secret) throw new ApiError(401, "not signed in");
  let answer;
  try {
    answer = await fetch(path, {
      headers: { Authorization: `Bearer ${secret}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, `the API did not answer (${e.message})`);
  }
  const text = await answer.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(answer.status, `the API answered ${answer.status} with something other than JSON`);
  }
  if (!answer.ok) {
    const error = body && body.error;
    throw new ApiError(answer.status,
      error && error.message ? error.message : `the API answered ${answer.status}`,
      error && error.field);
  }
  return body;
}

/**
 * `GET path` of the API's JSON-lines answer (a log stream), read as it comes: `onEvent` gets
 * each object; resolves when the answer ends, rejects with an ApiError on an error answer.
 * `signal` aborts it.
 */
export async function streamLines(path, onEvent, signal) {
  const secret = token();
  if (!secret) throw new ApiError(401, "not signed in");
  let answer;
  try {
    answer = await fetch(path, {
      headers: { Authorization: `Bearer ${secret}`, Accept: "application/x-ndjson" },
      cache: "no-store",
      credentials: "omit",
      signal,
    });
  } catch (e) {
    throw new ApiError(0, `the API did not answer (${e.message})`);
  }
  if (!answer.ok) {
    let error = null;
    try {
      error = (await answer.json()).error;
    } catch {
      // Not the API's JSON error: the status says enough.
    }
    throw new ApiError(answer.status, error && error.message ? error.message : `the API answered ${answer.status}`,
      error && error.field);
  }
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    let end;
    while ((end = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, end);
      pending = pending.slice(end + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
}

/** The API path of a service (`{org, app, name}`), to which `…/status` and the like are added. */
export function servicePath(service) {
  const part = encodeURIComponent;
  return `/v1/orgs/${part(service.org)}/apps/${part(service.app)}/services/${part(service.name)}`;
}

/**
 * `task(item)` for each of `items`, at most a few at once; each result in order, a failed one as
 * `{error}` (an ApiError) so that one failure does not hide the rest.
 */
export async function each(items, task) {
  const results = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const at = next++;
      try {
        results[at] = { value: await task(items[at]) };
      } catch (error) {
        results[at] = { error };
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, items.length) }, worker));
  return results;
}
