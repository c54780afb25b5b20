// Time-series charts with uPlot (vendored; it draws on a canvas, so the strict CSP holds).
import uPlot from "/ui/vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04"];

// A chart of series over time: update([times (unix s)], [[values of series 0], ...]).
export function timeChart(parent, title, labels, { unit = "", width = 460, height = 180 } = {}) {
  const box = h("figure", { class: "chart" }, h("figcaption", { text: title }));
  parent.append(box);
  const opts = {
    width,
    height,
    series: [
      {},
      ...labels.map((label, i) => ({
        label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? "–" : `${v.toFixed(v < 10 ? 2 : 0)}${unit}`),
      })),
    ],
    axes: [{}, { values: (u, ticks) => ticks.map((v) => `${v}${unit}`), size: 60 }],
    scales: { y: { range: (u, min, max) => [0, Math.max(max || 0, 1e-9) * 1.1] } },
    legend: { live: true },
  };
  const plot = new uPlot(opts, [[], ...labels.map(() => [])], box);
  return {
    update(times, series) {
      plot.setData([times, ...series]);
    },
    element: box,
  };
}

// Labelled series over categories (days): a line per group.
export function categoryChart(parent, title, categories, series, { unit = "" } = {}) {
  const box = h("figure", { class: "chart" }, h("figcaption", { text: title }));
  parent.append(box);
  const xs = categories.map((_, i) => i);
  const opts = {
    width: 620,
    height: 220,
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] } },
    axes: [
      { values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? categories[t] || "" : "")) },
      { values: (u, ticks) => ticks.map((v) => `${v}${unit}`), size: 70 },
    ],
    series: [
      { label: "day", value: (u, v) => categories[v] || "" },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        points: { show: true, size: 6 },
      })),
    ],
  };
  new uPlot(opts, [xs, ...series.map((s) => s.values)], box);
  return box;
}
