// API keys the credential may see (its own; a team's for team admins; all for admins): create
// one (its secret is shown once, here, and never again), rotate, revoke, and set its limits.
import { get, post, query } from "../api.js";
import { button, form, h, refusal, replace, table, time } from "../dom.js";
import { limitsSection } from "../limits.js";

function list(text) {
  const items = (text || "").split(",").map((s) => s.trim()).filter(Boolean);
  return items.length ? items : undefined;
}

// The secret, once: it is in this response only; the page keeps no copy once dismissed.
function secretPanel(where, title, result) {
  const panel = h(
    "div",
    { class: "secret", role: "alert", "data-key-id": result.key.id },
    h("strong", { text: title }),
    h("p", { text: "Copy it now: it is shown this once and cannot be shown again." }),
    h("code", { class: "secret-value", text: result.secret }),
    button("Copy", () => navigator.clipboard && navigator.clipboard.writeText(result.secret)),
    button("I have stored it", () => panel.remove(), { class: "dismiss" }),
  );
  replace(where, panel);
}

export async function render(root, page, me) {
  const secret = h("div", { class: "secret-slot" });
  const listing = h("div");
  const showRevoked = h("input", { type: "checkbox", checked: true });
  const names = new Map(); // key id -> "name (prefix)", for the limits table
  const limits = limitsSection((r) => (r.scope === "key" && names.has(r.subject) ? names.get(r.subject) : r.subject));
  root.append(
    h("h2", { text: "New key" }),
    form(
      [
        { name: "name", label: "Name", required: true, placeholder: "ci-pipeline" },
        { name: "user", label: "Owner", placeholder: me.user },
        { name: "team", label: "Team", placeholder: me.team || "" },
        { name: "models", label: "Models", placeholder: "all (comma-separated)" },
        { name: "expires_in_days", label: "Expires in (days)", type: "number", placeholder: "never" },
      ],
      "Create key",
      async (v, el) => {
        const body = { name: v.name, user: v.user || undefined, team: v.team || undefined, models: list(v.models) };
        if (v.expires_in_days) body.expires_in = Number(v.expires_in_days) * 86400;
        const result = await post("/admin/keys", body);
        el.reset();
        secretPanel(secret, `Key "${result.key.name}" created`, result);
        await refresh();
      },
    ),
    secret,
    h("h2", {}, "Keys ", h("label", { class: "toggle" }, showRevoked, " show revoked and expired")),
    listing,
    h("h2", { text: "Limits" }),
    limits.element,
  );

  async function act(key, what) {
    try {
      if (what === "revoke") {
        if (!confirm(`Revoke key "${key.name}" (${key.prefix})? Every request with it is refused from now on.`)) return;
        await post(`/admin/keys/${encodeURIComponent(key.id)}/revoke`);
      } else {
        const result = await post(`/admin/keys/${encodeURIComponent(key.id)}/rotate`, { grace_seconds: 0 });
        secretPanel(secret, `Key "${result.key.name}" rotated: the old secret no longer works`, result);
      }
    } catch (error) {
      replace(secret, refusal(error));
    }
    await refresh();
  }

  async function refresh() {
    let keys;
    try {
      keys = (await get(`/admin/keys${query({ include_revoked: showRevoked.checked })}`)).data;
    } catch (error) {
      replace(listing, refusal(error));
      return;
    }
    keys.forEach((k) => names.set(k.id, `${k.name} (${k.prefix})`));
    replace(
      listing,
      table(
        [
          { label: "Name", value: (k) => k.name },
          { label: "Prefix", value: (k) => h("code", { text: k.prefix || "" }) },
          { label: "Owner", value: (k) => k.owner },
          { label: "Team", value: (k) => k.team || "" },
          { label: "Models", value: (k) => (k.models ? k.models.join(", ") : "all") },
          { label: "Status", value: (k) => h("span", { class: `badge ${k.status === "active" ? "ok" : "bad"}`, text: k.status }) },
          { label: "Created", value: (k) => time(k.created_at) },
          { label: "Expires", value: (k) => (k.expires_at ? time(k.expires_at) : "never") },
          { label: "Last used", value: (k) => time(k.last_used_at) },
          {
            label: "",
            value: (k) =>
              k.status === "active"
                ? h(
                    "span",
                    {},
                    button("Limits", () => limits.edit("key", k.id, `${k.name} (${k.prefix})`)),
                    button("Rotate", () => act(k, "rotate")),
                    button("Revoke", () => act(k, "revoke"), { class: "danger" }),
                  )
                : "",
          },
        ],
        keys,
        { empty: "No keys.", rowAttrs: (k) => ({ "data-key-id": k.id, "data-key-name": k.name }) },
      ),
    );
  }

  showRevoked.addEventListener("change", refresh);
  page.every(10000, async () => {
    await refresh();
    await limits.refresh();
  });
}
