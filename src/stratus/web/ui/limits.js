// Limits (rate, tokens, concurrency, budget) of keys, users, teams and models: the rules the
// credential may see (GET /admin/limits), set or replace one (PUT), remove one (DELETE). Who may
// set what is the API's: admins everywhere, team admins inside their team.
import { del, get, put, query } from "./api.js";
import { button, h, number, refusal, replace, table } from "./dom.js";

const FIELDS = [
  ["rpm", "requests/min"],
  ["tpm", "tokens/min"],
  ["concurrent", "concurrent"],
  ["tokens_per_day", "tokens/day"],
  ["tokens_per_month", "tokens/month"],
  ["budget_usd_per_month", "USD/month"],
];

// A section with the rules and a form; returns { element, edit(scope, subject, label), refresh() }.
export function limitsSection(describe = (rule) => rule.subject) {
  const status = h("div");
  const rules = h("div");
  const scope = h("select", { name: "scope" }, ["key", "user", "team", "model"].map((s) => h("option", { value: s, text: s })));
  const subject = h("input", { name: "subject", required: true, autocomplete: "off", placeholder: "key id, user, team or model" });
  const model = h("input", { name: "model", autocomplete: "off", placeholder: "every model" });
  const inputs = FIELDS.map(([name, label]) =>
    h("label", {}, label, h("input", { name, type: "number", min: "0", step: name === "budget_usd_per_month" ? "any" : "1" })),
  );
  const editing = h("span", { class: "meta" });
  const el = h(
    "form",
    { class: "inline", id: "limit-form" },
    h("label", {}, "Scope", scope),
    h("label", {}, "Subject", subject),
    h("label", {}, "Model", model),
    inputs,
    h("button", { type: "submit", text: "Set limits" }),
    editing,
  );

  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(el).entries());
    const body = { scope: values.scope, subject: values.subject, model: values.model || null };
    for (const [name] of FIELDS) {
      if (values[name] !== "") body[name] = Number(values[name]);
    }
    try {
      await put("/admin/limits", body);
      replace(status);
      el.reset();
      replace(editing);
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  });

  async function remove(rule) {
    try {
      await del(`/admin/limits${query({ scope: rule.scope, subject: rule.subject, model: rule.model })}`);
      replace(status);
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  }

  async function refresh() {
    try {
      const found = (await get("/admin/limits")).data;
      replace(
        rules,
        table(
          [
            { label: "Scope", value: (r) => r.scope },
            { label: "Subject", value: (r) => describe(r) },
            { label: "Model", value: (r) => r.model || "every model" },
            ...FIELDS.map(([name, label]) => ({ label, value: (r) => (r[name] === null || r[name] === undefined ? "" : number(r[name], name === "budget_usd_per_month" ? 2 : 0)) })),
            { label: "", value: (r) => button("Remove", () => remove(r)) },
          ],
          found,
          { empty: "No limits are set that this credential may see.", rowAttrs: (r) => ({ "data-limit": `${r.scope}:${r.subject}` }) },
        ),
      );
    } catch (error) {
      replace(rules, refusal(error));
    }
  }

  return {
    element: h("div", { class: "limits" }, el, status, rules),
    refresh,
    edit(kind, id, label) {
      scope.value = kind;
      subject.value = id;
      replace(editing, `editing the limits of ${kind} ${label}`);
      inputs[0].querySelector("input").focus();
    },
  };
}
