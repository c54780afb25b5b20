// The audit log (audit.read: auditors and admins): filter, page back, verify the hash chain.
// "Follow" refreshes the first page every 5 s; off by default, since each refresh is itself an
// audited request that would appear at the top of the list it shows.
import { get, query } from "../api.js";
import { button, h, refusal, replace, table, time } from "../dom.js";

const OUTCOMES = ["", "ok", "error", "denied", "client_disconnect", "locked", "alert"];

export async function render(root, page) {
  const filters = h(
    "form",
    { class: "inline", id: "audit-filter" },
    h("label", {}, "Principal", h("input", { name: "principal", autocomplete: "off" })),
    h("label", {}, "Action", h("input", { name: "action", placeholder: "POST /v1/chat/completions", autocomplete: "off" })),
    h("label", {}, "Model", h("input", { name: "model", autocomplete: "off" })),
    h("label", {}, "Outcome", h("select", { name: "outcome" }, OUTCOMES.map((o) => h("option", { value: o, text: o || "any" })))),
    h("label", {}, "Last (hours)", h("input", { name: "hours", type: "number", min: "0", step: "any", placeholder: "all" })),
    h("button", { type: "submit", text: "Filter" }),
  );
  const verdict = h("div", { class: "verdict", role: "status" });
  const follow = h("input", { type: "checkbox", name: "follow" });
  const records = h("div");
  const more = h("div");
  root.append(
    h(
      "div",
      { class: "controls" },
      button("Verify chain", verify, { id: "verify-chain" }),
      verdict,
      h("label", { class: "toggle" }, follow, " follow new records (every 5 s)"),
    ),
    filters,
    records,
    more,
  );
  let shown = [];
  let live = true; // the first page follows new records; an older page stays put

  function params(extra = {}) {
    const v = Object.fromEntries(new FormData(filters).entries());
    return query({
      principal: v.principal,
      action: v.action,
      model: v.model,
      outcome: v.outcome,
      since: v.hours ? Date.now() / 1000 - Number(v.hours) * 3600 : undefined,
      limit: 50,
      ...extra,
    });
  }

  function draw(next) {
    replace(
      records,
      table(
        [
          { label: "Seq", value: (r) => r.seq },
          { label: "Time", value: (r) => time(r.at) },
          { label: "Principal", value: (r) => r.principal || "" },
          { label: "Key", value: (r) => (r.key_prefix ? h("code", { text: r.key_prefix }) : "") },
          { label: "Action", value: (r) => r.action },
          { label: "Model", value: (r) => r.model || "" },
          { label: "Outcome", value: (r) => h("span", { class: `badge ${r.outcome === "ok" ? "ok" : "bad"}`, text: r.outcome }) },
          { label: "Status", value: (r) => r.status ?? "" },
          { label: "Tokens", value: (r) => (r.prompt_tokens === null ? "" : `${r.prompt_tokens} + ${r.completion_tokens ?? 0}`) },
          { label: "Client", value: (r) => r.client || "" },
        ],
        shown,
        { empty: "No records match.", rowAttrs: (r) => ({ "data-seq": r.seq, "data-outcome": r.outcome }) },
      ),
    );
    replace(more, next ? button("Older records", () => load(next), { id: "audit-older" }) : null);
  }

  async function load(before) {
    try {
      const page = await get(`/admin/audit${params(before ? { before_id: before } : {})}`);
      shown = before ? shown.concat(page.data) : page.data;
      live = !before;
      draw(page.next_before_id);
    } catch (error) {
      replace(records, refusal(error));
      replace(more);
    }
  }

  async function verify() {
    replace(verdict, "Verifying…");
    try {
      const r = await get("/admin/audit/verify");
      const pinned = r.checkpoint_seq ? `, checkpoint seq ${r.checkpoint_seq}` : "";
      replace(
        verdict,
        r.ok
          ? h("span", { class: "badge ok", text: `Chain intact: ${r.records} records, head seq ${r.last_seq}${pinned}` })
          : h("div", {}, h("span", { class: "badge bad", text: "Chain TAMPERED" }), h("ul", {}, r.problems.map((p) => h("li", { text: p })))),
      );
    } catch (error) {
      replace(verdict, refusal(error));
    }
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
  page.every(5000, async () => {
    if (live && follow.checked) await load();
  });
}
