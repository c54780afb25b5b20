// Models and their replicas from /admin/cluster every 2 s: state, health, breaker, load,
// learned capacity, retries and stream migrations. A replica that leaves (a worker that stopped
// answering its heartbeats and a probe is removed) stays listed as "gone" while the page is open.
// Models served by Ray actors (--ray-address) show their actors' nodes and can be scaled
// (POST /admin/cluster/scale: admins). Where the credential may manage models (/admin/models:
// admins), each model shows what it serves and can be removed, and a form adds one.
import { del, get, post } from "../api.js";
import { button, h, number, refusal, replace, table, time } from "../dom.js";

// The scale form of a Ray model, made once and kept across refreshes (what is typed survives).
function scaleForm(model, current) {
  const count = h("input", { name: "replicas", type: "number", min: "0", value: String(current), "aria-label": `replicas of ${model}` });
  const status = h("span", { class: "form-status", role: "status" });
  const el = h("form", { class: "inline scale", "data-scale": model }, h("label", {}, "Replicas", count), h("button", { type: "submit", text: "Scale" }), status);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    replace(status, "…");
    try {
      const r = await post("/admin/cluster/scale", { model, replicas: Number(count.value), wait: false });
      replace(status, `scaling to ${r.requested} (now ${r.replicas})`);
    } catch (error) {
      replace(status, refusal(error));
    }
  });
  return el;
}

function rayPanel(info, forms) {
  if (!forms.has(info.model)) forms.set(info.model, scaleForm(info.model, info.replicas));
  const bounds = info.autoscaled ? ` · autoscaled ${info.min_replicas}–${info.max_replicas}` : "";
  return h(
    "div",
    { class: "ray", "data-ray-model": info.model },
    h("h3", { text: `Ray: ${info.replicas} actors · resources ${JSON.stringify(info.resources)}${bounds}` }),
    table(
      [
        { label: "Actor", value: (a) => a.id },
        { label: "Node", value: (a) => h("code", { text: a.node_id || "" }) },
        { label: "In flight", value: (a) => number(a.in_flight) },
      ],
      info.actors,
      { empty: "No actors.", rowAttrs: (a) => ({ "data-actor": a.id }) },
    ),
    forms.get(info.model),
  );
}

// The add-a-model form: a name and a checkpoint path or Hugging Face name on the gateway.
function addForm(refresh) {
  const status = h("div", { class: "form-status", role: "status" });
  const el = h(
    "form",
    { class: "inline", id: "add-model" },
    h("label", {}, "Name", h("input", { name: "name", required: true, autocomplete: "off", placeholder: "qwen" })),
    h("label", {}, "Checkpoint or Hugging Face name", h("input", { name: "model", required: true, autocomplete: "off", class: "wide-input", placeholder: "/models/qwen2.5-0.5b or Qwen/Qwen2.5-0.5B-Instruct" })),
    h("label", {}, "Task", h("select", { name: "task" }, ["generate", "embed"].map((t) => h("option", { value: t, text: t })))),
    h("button", { type: "submit", text: "Add model" }),
  );
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    const v = Object.fromEntries(new FormData(el).entries());
    try {
      const r = await post("/admin/models", { name: v.name, model: v.model, task: v.task });
      replace(status, `${r.name}: ${r.state}`);
      el.reset();
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  });
  return h("section", { class: "add-model" }, h("h2", { text: "Add a model" }), el, status);
}

// What a managed model serves, and its Remove button.
function managedLine(m, onRemove) {
  const parts = [`${m.task}`, m.source ? `from ${m.source}` : null, m.max_model_len ? `context ${m.max_model_len}` : null];
  if (m.quantization) parts.push(m.quantization);
  if (m.added_by) parts.push(`added by ${m.added_by}`);
  if (m.state === "downloading" && m.progress !== null) parts.push(`downloading ${m.progress}%`);
  return h(
    "div",
    { class: "managed" },
    h("span", { class: "meta", text: parts.filter(Boolean).join(" · ") }),
    m.error ? h("p", { class: "error", text: m.error }) : null,
    button("Remove", onRemove, { class: "danger" }),
  );
}

export async function render(root, page) {
  const notice = h("div");
  const body = h("div");
  let managed = null; // name -> /admin/models entry; null: this credential may not manage models
  let mayManage = true; // until /admin/models refuses
  let adding = null;
  root.append(notice, body);

  async function remove(name) {
    if (!confirm(`Remove model "${name}"? New requests get 404 at once; running ones may finish.`)) return;
    try {
      await del(`/admin/models/${encodeURIComponent(name)}`);
      replace(notice);
    } catch (error) {
      replace(notice, refusal(error));
    }
    await refresh();
  }
  const seen = new Map(); // model -> Map(replica id -> last row seen)
  const forms = new Map(); // Ray model -> its scale form

  async function refresh() {
    let cluster;
    try {
      cluster = await get("/admin/cluster");
    } catch (error) {
      replace(body, refusal(error));
      return;
    }
    if (mayManage) {
      try {
        managed = new Map((await get("/admin/models")).data.map((m) => [m.name, m]));
      } catch (error) {
        if (error.status !== 403 && error.status !== 404) throw error;
        mayManage = false; // not this credential's (403), or not this gateway's (404)
        managed = null;
      }
    }
    if (managed && !adding) adding = addForm(refresh);
    if (!cluster.models.length) {
      replace(body, h("p", { class: "empty", text: "No models are served." }), managed ? adding : null);
      return;
    }
    const now = Date.now() / 1000;
    const ray = new Map(((cluster.ray && cluster.ray.models) || []).map((m) => [m.model, m]));
    replace(
      body,
      cluster.models.map((m) => {
        const known = seen.get(m.model) || new Map();
        seen.set(m.model, known);
        const live = new Set(m.replicas.map((r) => r.id));
        for (const r of m.replicas) known.set(r.id, { ...r, gone_at: null });
        for (const [id, r] of known) {
          if (!live.has(id) && r.gone_at === null) known.set(id, { ...r, state: "gone", gone_at: now });
        }
        const rows = [...known.values()];
        const up = m.replicas.filter((r) => r.state === "up").length;
        return h(
          "article",
          { class: "model", "data-model": m.model },
          h(
            "h2",
            {},
            m.model,
            h("span", { class: `badge ${m.available ? "ok" : "bad"}`, text: m.state }),
            h("span", { class: "meta", text: `${up} of ${m.replicas.length} replicas up · policy ${m.policy} · retries ${m.retries} · migrations ${m.migrations}` }),
          ),
          managed && managed.has(m.model) ? managedLine(managed.get(m.model), () => remove(m.model)) : null,
          table(
            [
              { label: "Replica", value: (r) => r.id },
              { label: "Kind", value: (r) => r.kind },
              {
                label: "State",
                value: (r) =>
                  h("span", { class: `badge ${r.state === "up" ? "ok" : "bad"}`, text: r.state === "gone" ? `gone (${time(r.gone_at)})` : r.state }),
              },
              { label: "Reachable", value: (r) => (r.state === "gone" ? "–" : r.reachable ? "yes" : "no") },
              { label: "Breaker", value: (r) => (r.breaker ? r.breaker.state : "") },
              { label: "Problem", value: (r) => r.problem || "" },
              { label: "In flight", value: (r) => number(r.inflight) },
              { label: "Running · waiting", value: (r) => `${number(r.running)} · ${number(r.waiting)}` },
              { label: "Tokens/s", value: (r) => number(r.tokens_per_second, 1) },
              { label: "Capacity", value: (r) => (r.capacity === undefined ? "" : number(r.capacity, 1)) },
              { label: "Served · failed", value: (r) => `${number(r.served)} · ${number(r.failed)}` },
            ],
            rows,
            { empty: "No replicas.", rowAttrs: (r) => ({ "data-replica": r.id, "data-state": r.state }) },
          ),
          ray.has(m.model) ? rayPanel(ray.get(m.model), forms) : null,
        );
      }),
      cluster.ray && cluster.ray.events.length
        ? [
            h("h2", { text: "Recent scaling" }),
            h(
              "ul",
              { class: "events" },
              cluster.ray.events
                .slice()
                .reverse()
                .map((e) => h("li", { text: `${e.model}: ${e.from} → ${e.to} replicas (${e.reason})` })),
            ),
          ]
        : null,
      managed ? adding : null,
    );
  }

  page.every(2000, refresh);
}
