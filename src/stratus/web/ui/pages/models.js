// Models and their replicas from /admin/cluster every 2 s: state, health, breaker, load,
// learned capacity, retries and stream migrations. A replica that leaves (a worker that stopped
// answering its heartbeats and a probe is removed) stays listed as "gone" while the page is open.
import { get } from "../api.js";
import { h, number, refusal, replace, table, time } from "../dom.js";

export async function render(root, page) {
  const body = h("div");
  root.append(body);
  const seen = new Map(); // model -> Map(replica id -> last row seen)

  page.every(2000, async () => {
    let cluster;
    try {
      cluster = await get("/admin/cluster");
    } catch (error) {
      replace(body, refusal(error));
      return;
    }
    if (!cluster.models.length) {
      replace(body, h("p", { class: "empty", text: "No models are served." }));
      return;
    }
    const now = Date.now() / 1000;
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
        );
      }),
      cluster.ray ? h("pre", { class: "ray", text: JSON.stringify(cluster.ray, null, 2) }) : null,
    );
  });
}
