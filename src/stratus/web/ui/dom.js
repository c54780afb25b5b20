// Building the page from data: elements are created, text is set as text (never parsed as
// HTML), so nothing the API returns can run as script.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "text") {
      el.textContent = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

// columns: [{ label, value: (row) => text | Node }]
export function table(columns, rows, { empty = "Nothing yet.", rowAttrs } = {}) {
  if (!rows.length) return h("p", { class: "empty", text: empty });
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", text: c.label })))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h(
          "tr",
          rowAttrs ? rowAttrs(row) : {},
          columns.map((c) => {
            const v = c.value(row);
            return h("td", {}, v === undefined || v === null ? "" : v);
          }),
        ),
      ),
    ),
  );
}

// What the API said when it refused: its status and its message, as the page's content.
export function refusal(error) {
  const status = error && error.status ? error.status : "";
  const why =
    status === 403
      ? "Your credential's role does not allow this."
      : status === 404
        ? "Not found, or not visible to your credential."
        : "The request failed.";
  return h(
    "div",
    { class: "refusal", role: "alert", "data-status": status },
    h("strong", { text: `${status ? status + ": " : ""}${why}` }),
    h("p", { text: error && error.message ? error.message : String(error) }),
  );
}

export function time(unix) {
  if (unix === null || unix === undefined) return "";
  return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19);
}

export function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function form(fields, submitLabel, onSubmit) {
  // fields: [{ name, label, type?, options?, placeholder?, required? }]
  const el = h(
    "form",
    { class: "inline" },
    fields.map((f) =>
      h(
        "label",
        {},
        f.label,
        f.options
          ? h(
              "select",
              { name: f.name },
              f.options.map((o) => h("option", { value: o, text: o })),
            )
          : h("input", {
              name: f.name,
              type: f.type || "text",
              placeholder: f.placeholder,
              required: f.required,
              autocomplete: "off",
            }),
      ),
    ),
    h("button", { type: "submit", text: submitLabel }),
  );
  const status = h("p", { class: "form-status", role: "status" });
  el.append(status);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(el).entries());
    replace(status);
    try {
      await onSubmit(values, el);
    } catch (error) {
      replace(status, refusal(error));
    }
  });
  return el;
}

export function button(label, onClick, attrs = {}) {
  return h("button", { type: "button", ...attrs, onclick: onClick, text: label });
}
