// Usage from /admin/usage: tokens per day by model, key, user or team (a chart), the totals (a
// table) and a CSV export. Members see their own usage, team admins their teams', admins and
// auditors everyone's: the API filters.
import { get, query, request } from "../api.js";
import { categoryChart } from "../chart.js";
import { h, number, refusal, replace, table } from "../dom.js";

const GROUPS = ["model", "key", "user", "team"];
const SPANS = { "24 hours": 1, "7 days": 7, "30 days": 30, "90 days": 90 };

// Every UTC day from `start` to `end` (unix s), as the ledger names them (YYYY-MM-DD).
function everyDay(start, end) {
  const days = [];
  for (let t = Math.floor(start / 86400) * 86400; t <= end; t += 86400) {
    days.push(new Date(t * 1000).toISOString().slice(0, 10));
  }
  return days;
}

export async function render(root, page) {
  const by = h("select", { name: "by", "aria-label": "group by" }, GROUPS.map((g) => h("option", { value: g, text: `by ${g}` })));
  const span = h("select", { name: "span", "aria-label": "period" }, Object.keys(SPANS).map((s) => h("option", { value: s, text: s, selected: s === "30 days" })));
  const exportButton = h("button", { type: "button", text: "Export CSV" });
  const chart = h("div", { class: "charts" });
  const totals = h("div");
  root.append(h("div", { class: "controls" }, by, span, exportButton), chart, totals);

  const since = () => Math.floor(Date.now() / 1000 - SPANS[span.value] * 86400);

  async function refresh() {
    let daily;
    let sums;
    try {
      [daily, sums] = await Promise.all([
        get(`/admin/usage${query({ by: `day,${by.value}`, since: since() })}`),
        get(`/admin/usage${query({ by: by.value, since: since() })}`),
      ]);
    } catch (error) {
      replace(totals, refusal(error));
      replace(chart);
      return;
    }
    const days = everyDay(since(), Date.now() / 1000);
    const names = [...new Set(daily.data.map((r) => r[by.value] ?? "(none)"))].sort();
    const series = names.map((name) => ({
      label: name,
      values: days.map((d) => {
        const row = daily.data.find((r) => r.day === d && (r[by.value] ?? "(none)") === name);
        return row ? row.total_tokens : 0;
      }),
    }));
    replace(chart);
    if (daily.data.length) categoryChart(chart, `Tokens per day, by ${by.value}`, days, series);
    replace(
      totals,
      table(
        [
          { label: by.value[0].toUpperCase() + by.value.slice(1), value: (r) => r[by.value] ?? "(none)" },
          { label: "Requests", value: (r) => number(r.requests) },
          { label: "Refused", value: (r) => number(r.refused) },
          { label: "Prompt tokens", value: (r) => number(r.prompt_tokens) },
          { label: "Completion tokens", value: (r) => number(r.completion_tokens) },
          { label: "Total tokens", value: (r) => number(r.total_tokens) },
          { label: "Cost (USD)", value: (r) => number(r.cost_usd, 4) },
        ],
        sums.data,
        { empty: "No usage in this period.", rowAttrs: (r) => ({ "data-group": r[by.value] ?? "" }) },
      ),
    );
  }

  exportButton.addEventListener("click", async () => {
    try {
      const response = await request("GET", `/admin/usage${query({ by: `day,${by.value}`, since: since(), format: "csv" })}`);
      const blob = await response.blob();
      const link = h("a", { href: URL.createObjectURL(blob), download: `stratus-usage-by-${by.value}.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      replace(totals, refusal(error));
    }
  });
  by.addEventListener("change", refresh);
  span.addEventListener("change", refresh);
  page.every(5000, refresh);
}
