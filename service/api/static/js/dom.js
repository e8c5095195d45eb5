// Small DOM helpers. Text always goes in as text nodes (never innerHTML): titles and
// descriptions are other people's input.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === false || value == null) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c != null && c !== false));
  return el;
}

let nextId = 0;
export const uid = (prefix) => `${prefix}-${++nextId}`;

// A labelled input with a place for its error, tied by aria-describedby so that the message
// is read out with the field (and is the field's accessible description).
export function field(label, input, { hint = null, className = "field" } = {}) {
  input.id ||= uid("f");
  const error = h("p", { class: "field-error", id: `${input.id}-error`, hidden: true });
  const hintEl = hint && h("p", { class: "hint", id: `${input.id}-hint` }, hint);
  input.setAttribute("aria-describedby", [hintEl?.id, error.id].filter(Boolean).join(" "));
  const wrap = h(
    "div",
    { class: className },
    h("label", { for: input.id }, label),
    input,
    hintEl,
    error,
  );
  return { wrap, input, error };
}

export function setError(f, message) {
  f.error.textContent = message || "";
  f.error.hidden = !message;
  if (message) f.input.setAttribute("aria-invalid", "true");
  else f.input.removeAttribute("aria-invalid");
}

// Puts an ApiError's messages next to the fields it names; the rest goes to `general`.
export function showApiError(error, fields, general, explain) {
  let placed = false;
  for (const [name, f] of Object.entries(fields)) {
    const messages = error.fields?.[name];
    setError(f, messages ? messages.join(" ") : "");
    if (messages && !placed) {
      f.input.focus();
      placed = true;
    }
  }
  const rest = placed ? error.general : explain(error);
  general.textContent = rest || "";
  general.hidden = !rest;
}

export function clearErrors(fields, general) {
  for (const f of Object.values(fields)) setError(f, "");
  general.textContent = "";
  general.hidden = true;
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function ago(iso) {
  const seconds = (Date.parse(iso) - Date.now()) / 1000;
  const steps = [
    [60, "second"],
    [60, "minute"],
    [24, "hour"],
    [7, "day"],
  ];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size)
      return Math.abs(seconds) < 10 ? "just now" : relative.format(Math.round(value), unit);
    value /= size;
  }
  return absolute.format(new Date(iso));
}

export const when = (iso) => absolute.format(new Date(iso));
