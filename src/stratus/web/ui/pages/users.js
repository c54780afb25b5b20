// Users and teams the credential may see (admins, auditors: all; team admins: their teams):
// create users and teams, change a user's role, disable or enable them, add team members, grant
// and withdraw models (admins: grants.manage).
import { del, get, patch, post, put } from "../api.js";
import { button, form, h, refusal, replace, table, time } from "../dom.js";

const ROLES = ["member", "viewer", "auditor", "admin"];
const path = (kind, name, model) =>
  `/admin/${kind === "team" ? "teams" : "users"}/${encodeURIComponent(name)}/models/${encodeURIComponent(model)}`;

export async function render(root, page) {
  const users = h("div");
  const teams = h("div");
  const status = h("div");
  root.append(
    status,
    h("h2", { text: "Users" }),
    form(
      [
        { name: "name", label: "Name", required: true },
        { name: "role", label: "Role", options: ROLES },
        { name: "team", label: "Team" },
      ],
      "Create user",
      async (v, el) => {
        await post("/admin/users", { name: v.name, role: v.role, team: v.team || undefined });
        el.reset();
        await refresh();
      },
    ),
    users,
    h("h2", { text: "Teams" }),
    form([{ name: "name", label: "Name", required: true }], "Create team", async (v, el) => {
      await post("/admin/teams", { name: v.name });
      el.reset();
      await refresh();
    }),
    form(
      [
        { name: "team", label: "Team", required: true },
        { name: "user", label: "User", required: true },
        { name: "role", label: "Role in team", options: ["member", "team_admin"] },
      ],
      "Add to team",
      async (v) => {
        await put(`/admin/teams/${encodeURIComponent(v.team)}/members/${encodeURIComponent(v.user)}`, { role: v.role });
        await refresh();
      },
    ),
    teams,
    h("h2", { text: "Model grants" }),
    form(
      [
        { name: "kind", label: "Grant to", options: ["user", "team"] },
        { name: "name", label: "User or team", required: true },
        { name: "model", label: "Model", required: true },
      ],
      "Grant model",
      async (v, el) => {
        await put(path(v.kind, v.name, v.model));
        el.reset();
        await refresh();
      },
    ),
  );

  // A subject's models, each with a button that withdraws it.
  function grants(kind, subject) {
    return h(
      "span",
      { class: "grants" },
      subject.models.map((m) =>
        h(
          "span",
          { class: "chip", "data-grant": m },
          m,
          button("×", () => withdraw(kind, subject.name, m), { "aria-label": `withdraw ${m} from ${subject.name}`, class: "chip-x" }),
        ),
      ),
    );
  }

  async function withdraw(kind, name, model) {
    try {
      await del(path(kind, name, model));
      replace(status);
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  }

  async function change(user, body) {
    try {
      await patch(`/admin/users/${encodeURIComponent(user.name)}`, body);
      replace(status);
    } catch (error) {
      replace(status, refusal(error));
    }
    await refresh();
  }

  async function refresh() {
    try {
      const [u, t] = await Promise.all([get("/admin/users"), get("/admin/teams")]);
      replace(
        users,
        table(
          [
            { label: "Name", value: (x) => x.name },
            { label: "Kind", value: (x) => x.kind },
            {
              label: "Role",
              value: (x) => {
                const select = h("select", { "aria-label": `role of ${x.name}` }, ROLES.map((r) => h("option", { value: r, text: r, selected: r === x.role })));
                select.addEventListener("change", () => change(x, { role: select.value }));
                return select;
              },
            },
            { label: "Teams", value: (x) => Object.entries(x.teams).map(([n, r]) => `${n} (${r})`).join(", ") },
            { label: "Models", value: (x) => grants("user", x) },
            { label: "Created", value: (x) => time(x.created_at) },
            { label: "Status", value: (x) => h("span", { class: `badge ${x.disabled ? "bad" : "ok"}`, text: x.disabled ? "disabled" : "active" }) },
            { label: "", value: (x) => button(x.disabled ? "Enable" : "Disable", () => change(x, { disabled: !x.disabled })) },
          ],
          u.data,
          { rowAttrs: (x) => ({ "data-user": x.name }) },
        ),
      );
      replace(
        teams,
        table(
          [
            { label: "Team", value: (x) => x.name },
            { label: "Members", value: (x) => x.members.map((m) => `${m.user}${m.role === "team_admin" ? " (admin)" : ""}`).join(", ") },
            { label: "Models", value: (x) => grants("team", x) },
            { label: "Created", value: (x) => time(x.created_at) },
          ],
          t.data,
          { empty: "No teams.", rowAttrs: (x) => ({ "data-team": x.name }) },
        ),
      );
    } catch (error) {
      replace(users, refusal(error));
      replace(teams);
    }
  }

  page.every(15000, refresh);
}
