// Requests/s, tokens/s, TTFT and TPOT percentiles and errors over time, read from /metrics
// every 2 s (status.read: admins, auditors, viewers). Rates are between consecutive readings;
// percentiles are over the last 30 s of observations (histogram buckets, as Prometheus does).
import { request } from "../api.js";
import { timeChart } from "../chart.js";
import { h, number, refusal, replace } from "../dom.js";
import { delta, quantile, rate, reading } from "../metrics.js";

const EVERY_MS = 2000;
const KEEP = 180; // readings: 6 minutes
const WINDOW_S = 30;

export async function render(root, page) {
  const tiles = h("div", { class: "tiles" });
  const charts = h("div", { class: "charts" });
  const ready = h("p", { class: "ready" });
  root.append(ready, tiles, charts);
  const c = {
    requests: timeChart(charts, "Requests per second", ["requests/s", "4xx/s", "5xx/s"]),
    tokens: timeChart(charts, "Tokens per second", ["prompt", "completion"]),
    ttft: timeChart(charts, `Time to first token (last ${WINDOW_S} s)`, ["p50", "p95", "p99"], { unit: " ms" }),
    tpot: timeChart(charts, `Time per output token (last ${WINDOW_S} s)`, ["p50", "p95", "p99"], { unit: " ms" }),
  };
  const readings = [];
  const points = { t: [], req: [], e4: [], e5: [], pt: [], ct: [], ttft: [[], [], []], tpot: [[], [], []] };

  page.every(EVERY_MS, async () => {
    let text;
    try {
      text = await (await request("GET", "/metrics")).text();
    } catch (error) {
      replace(tiles, refusal(error));
      return;
    }
    const now = Date.now() / 1000;
    const r = reading(text, now);
    readings.push(r);
    if (readings.length > KEEP) readings.shift();
    if (readings.length < 2) {
      replace(tiles, h("p", { class: "empty", text: "Measuring… (the first rates after two readings)" }));
      return;
    }
    const prev = readings[readings.length - 2];
    const old = readings.find((x) => x.at >= now - WINDOW_S - 0.5) || readings[0];
    const ttft = delta(r.ttft, old.ttft);
    const tpot = delta(r.tpot, old.tpot);
    const ms = (v) => (v === null ? null : v * 1000);
    const row = {
      req: rate(r, prev, "requests"),
      e4: rate(r, prev, "clientErrors"),
      e5: rate(r, prev, "serverErrors"),
      pt: rate(r, prev, "promptTokens"),
      ct: rate(r, prev, "completionTokens"),
      ttft: [0.5, 0.95, 0.99].map((q) => ms(quantile(q, ttft))),
      tpot: [0.5, 0.95, 0.99].map((q) => ms(quantile(q, tpot))),
    };
    points.t.push(now);
    for (const k of ["req", "e4", "e5", "pt", "ct"]) points[k].push(row[k]);
    row.ttft.forEach((v, i) => points.ttft[i].push(v));
    row.tpot.forEach((v, i) => points.tpot[i].push(v));
    if (points.t.length > KEEP) {
      points.t.shift();
      for (const k of ["req", "e4", "e5", "pt", "ct"]) points[k].shift();
      points.ttft.forEach((s) => s.shift());
      points.tpot.forEach((s) => s.shift());
    }
    c.requests.update(points.t, [points.req, points.e4, points.e5]);
    c.tokens.update(points.t, [points.pt, points.ct]);
    c.ttft.update(points.t, points.ttft);
    c.tpot.update(points.t, points.tpot);
    const tile = (label, value, name) => h("div", { class: "tile", "data-tile": name }, h("span", { text: label }), h("strong", { text: value }));
    const msText = (v) => (v === null ? "–" : `${number(v, v < 10 ? 1 : 0)} ms`);
    replace(
      tiles,
      tile("Requests/s", number(row.req, 2), "requests"),
      tile("Tokens/s", number(row.pt + row.ct, 1), "tokens"),
      tile("Errors/s (4xx · 5xx)", `${number(row.e4, 2)} · ${number(row.e5, 2)}`, "errors"),
      tile("TTFT p50 · p95", `${msText(row.ttft[0])} · ${msText(row.ttft[1])}`, "ttft"),
      tile("TPOT p50 · p95", `${msText(row.tpot[0])} · ${msText(row.tpot[1])}`, "tpot"),
      tile("Running · waiting", `${number(r.running)} · ${number(r.waiting)}`, "queue"),
      tile("Requests (total)", number(r.requests), "total"),
    );
  });

  page.every(5000, async () => {
    const response = await fetch("/ready", { cache: "no-store" });
    const body = await response.json();
    replace(ready, `Gateway: ${body.status}`);
    ready.dataset.status = body.status;
  });
}
