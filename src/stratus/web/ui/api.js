// Calls to this gateway's API with the signed-in credential (a bearer token kept in
// sessionStorage: this tab only, gone when it closes). Errors carry the API's own message.

const STORE = "stratus.credential";
const listeners = [];

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function credential() {
  return sessionStorage.getItem(STORE);
}

export function signIn(token) {
  sessionStorage.setItem(STORE, token);
}

export function signOut() {
  sessionStorage.removeItem(STORE);
}

// Called with the error when the API says the credential is no good (401): sign in again.
export function onUnauthorized(fn) {
  listeners.push(fn);
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

// fetch() with the credential; the Response when it is 2xx, else an ApiError.
export async function request(method, path, { body, signal } = {}) {
  const token = credential();
  const headers = token ? { Authorization: `Bearer ${token}` } : {}; // none: an open gateway
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    signal,
  });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) listeners.forEach((fn) => fn(error));
    throw error;
  }
  return response;
}

export async function json(method, path, body) {
  const response = await request(method, path, { body });
  return response.json();
}

export const get = (path) => json("GET", path);
export const post = (path, body) => json("POST", path, body);
export const put = (path, body) => json("PUT", path, body);
export const patch = (path, body) => json("PATCH", path, body);
export const del = (path) => json("DELETE", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
