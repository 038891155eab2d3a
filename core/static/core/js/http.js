// JSON requests to the HTTP API from the page, with the session cookie and
// Django's CSRF token (docs/protocol.md, the HTTP API).

export function csrfToken() {
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  if (input) return input.value;
  const match = /(?:^|;\s*)csrftoken=([^;]+)/.exec(document.cookie);
  return match ? decodeURIComponent(match[1]) : "";
}

/** The fetch ``api`` makes, resolving to the Response itself. */
export function request(method, url, body = undefined, { signal } = {}) {
  const headers = { Accept: "application/json", "X-CSRFToken": csrfToken() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(url, {
    method,
    credentials: "same-origin",
    cache: "no-store",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
}

/**
 * ``method`` ``url`` with an optional JSON ``body``; resolves to
 * ``{ok, status, data, retryAfter}`` (``data``: the JSON answer or null).
 * Network failures reject, as fetch does; so does an abort through ``signal``.
 */
export async function api(method, url, body = undefined, { signal } = {}) {
  const response = await request(method, url, body, { signal });
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  const retryAfter = Number(response.headers.get("Retry-After")) || null;
  return { ok: response.ok, status: response.status, data, retryAfter };
}

/** The first error an API answer gives: ``detail``, or a field's first. */
export function problem(result, fallback = "Something went wrong.") {
  const data = result.data;
  const errors = data?.errors;
  if (errors && typeof errors === "object") {
    for (const value of Object.values(errors)) {
      if (Array.isArray(value) && typeof value[0] === "string") return value[0];
    }
  }
  if (data && typeof data.detail === "string") return data.detail;
  return fallback;
}
