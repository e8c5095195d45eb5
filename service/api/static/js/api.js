// The JSON API, with errors turned into words tied to the field they name. The session is the
// HttpOnly cookie set by POST /api/login: this code never sees or stores the token.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    // The API names the field: "title: String should have at most 200 characters"; several
    // problems are joined by "; ".
    this.fields = {};
    const general = [];
    for (const part of String(detail).split("; ")) {
      const named = /^([a-z_]+)(?:\.\d+)?: (.+)$/s.exec(part);
      if (named) (this.fields[named[1]] ??= []).push(sentence(named[2]));
      else general.push(sentence(part));
    }
    this.general = general.join(" ");
  }
}

function sentence(text) {
  const t = text.trim();
  return t && t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

const WORDS = {
  0: "The server cannot be reached. Check your connection and try again.",
  401: "Your session has ended. Sign in again.",
  403: "Only the owner can change this item.",
  404: "This item no longer exists.",
  412: "Someone changed this item meanwhile: review it and save again.",
  413: "That is too large.",
  429: "Too many attempts. Wait a moment and try again.",
  503: "The service is busy. Try again in a moment.",
};

export async function request(method, path, body, headers = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", ...headers },
    credentials: "same-origin",
  };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, WORDS[0]);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : "";
    throw new ApiError(
      response.status,
      detail || WORDS[response.status] || `Error ${response.status}.`,
    );
  }
  return data;
}

// The whole error in words, for a place that has no field to put it next to.
export function explain(error) {
  if (!(error instanceof ApiError)) return String(error);
  if (error.status === 412) return WORDS[412];
  return error.general || Object.values(error.fields).flat().join(" ") || WORDS[error.status];
}

export const api = {
  me: () => request("GET", "/api/me"),
  register: (username, password) => request("POST", "/api/register", { username, password }),
  login: (username, password) => request("POST", "/api/login", { username, password }),
  logout: () => request("POST", "/api/logout"),
  items: (params) => request("GET", `/api/items?${new URLSearchParams(params)}`),
  create: (fields) => request("POST", "/api/items", fields),
  // With `version`, the change applies only to that version (If-Match; 412 otherwise).
  update: (id, fields, version) =>
    request("PATCH", `/api/items/${id}`, fields, version ? { "If-Match": `"${version}"` } : {}),
  remove: (id) => request("DELETE", `/api/items/${id}`),
  stats: () => request("GET", "/api/stats"),
  upload: (file) => {
    const form = new FormData();
    form.append("file", file);
    return request("POST", "/api/upload", form);
  },
};
