// The API from the browser apps: same origin, the HttpOnly session cookie travels by
// itself (page script never sees a token), writes carry the session's CSRF token.
// A 401 triggers one refresh of the session (POST /auth/web/refresh) and one retry; if
// that fails the app goes back to sign-in ("itsur:signed-out" event on window).

let csrfToken = null;

/** Called by the session module after sign-in or on page load. */
export function setCsrfToken(token) {
  csrfToken = token;
}

/** An error answer of the API (problem+json). */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

let refreshing = null;

/** Rotates the session cookies once for every caller waiting on a 401. */
export function refreshSession() {
  if (!refreshing) {
    refreshing = fetch('/auth/web/refresh', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
    })
      .then(async (res) => {
        if (!res.ok) return false;
        const body = await res.json();
        setCsrfToken(body.data.csrfToken);
        return true;
      })
      .catch(() => false)
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

async function send(method, path, body, headers) {
  const h = { Accept: 'application/json', ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && csrfToken) h['X-CSRF-Token'] = csrfToken;
  return fetch(path, {
    method,
    credentials: 'same-origin',
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

/**
 * api('GET', '/orders?status=placed') → parsed JSON body (or null for 204).
 * Options: {headers: {'If-Match': '"3"'}, retryAuth: true (refresh once on 401),
 *   announce: true (a final 401 fires "itsur:signed-out": the app shows sign-in)}.
 * Throws ApiError for 4xx/5xx answers.
 */
export async function api(method, path, body, options = {}) {
  let res = await send(method, path, body, options.headers || {});
  if (res.status === 401 && options.retryAuth !== false) {
    if (await refreshSession()) {
      res = await send(method, path, body, options.headers || {});
    }
    if (res.status === 401 && options.announce !== false) {
      window.dispatchEvent(new CustomEvent('itsur:signed-out'));
    }
  }
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') || '';
  const parsed = type.includes('json') ? await res.json() : null;
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}
