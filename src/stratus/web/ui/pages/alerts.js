// Lockouts, alerts and suspended keys (audit.read to see; security.manage, admins, to lift a
// lockout, reinstate a key or acknowledge an alert), refreshed every 5 s.
import { del, get, post } from "../api.js";
import { button, h, refusal, replace, table, time } from "../dom.js";

export async function render(root, page) {
  const status = h("div");
  const lockouts = h("div");
  const suspended = h("div");
  const alerts = h("div");
  root.append(
    status,
    h("h2", { text: "Lockouts in force" }),
    lockouts,
    h("h2", { text: "Suspended keys" }),
    suspended,
    h("h2", { text: "Recent alerts" }),
    alerts,
  );

  async function act(fn) {
    try {
      await fn();
      replace(status);
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  }

  async function refresh() {
    let found;
    let suspensions;
    try {
      [found, suspensions] = await Promise.all([get("/admin/alerts"), get("/admin/suspensions")]);
    } catch (error) {
      replace(lockouts, refusal(error));
      replace(suspended);
      replace(alerts);
      return;
    }
    replace(
      lockouts,
      table(
        [
          { label: "Source", value: (l) => h("code", { text: l.source }) },
          { label: "Until", value: (l) => time(l.until) },
          { label: "Seconds left", value: (l) => l.seconds_left },
          { label: "", value: (l) => button("Lift", () => act(() => del(`/admin/lockouts/${encodeURIComponent(l.source)}`))) },
        ],
        found.lockouts,
        { empty: "No lockouts.", rowAttrs: (l) => ({ "data-source": l.source }) },
      ),
    );
    replace(
      suspended,
      table(
        [
          { label: "Key", value: (s) => h("code", { text: s.key_id }) },
          { label: "Since", value: (s) => time(s.suspended_at) },
          { label: "Why", value: (s) => s.reason || "" },
          { label: "", value: (s) => button("Reinstate", () => act(() => post(`/admin/keys/${encodeURIComponent(s.key_id)}/reinstate`))) },
        ],
        suspensions.data,
        { empty: "No suspended keys.", rowAttrs: (s) => ({ "data-key-id": s.key_id }) },
      ),
    );
    replace(
      alerts,
      table(
        [
          { label: "Time", value: (a) => time(a.at) },
          { label: "Kind", value: (a) => h("span", { class: "badge bad", text: a.kind }) },
          { label: "Source", value: (a) => h("code", { text: a.source }) },
          { label: "Detail", value: (a) => JSON.stringify(a.detail) },
          {
            label: "Acknowledged",
            value: (a) =>
              a.acknowledged
                ? `by ${a.acknowledged.by} at ${time(a.acknowledged.at)}`
                : button("Acknowledge", () => act(() => post("/admin/alerts/ack", { kind: a.kind, source: a.source, at: a.at }))),
          },
        ],
        found.alerts,
        {
          empty: "No alerts since this gateway started.",
          rowAttrs: (a) => ({ "data-alert": `${a.kind} ${a.source}`, "data-acknowledged": a.acknowledged ? "yes" : "no" }),
        },
      ),
    );
  }

  page.every(5000, refresh);
}
