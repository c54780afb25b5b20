// Reading the gateway's Prometheus text (/metrics) into numbers the overview draws: counters
// summed over their labels, histogram buckets, and quantiles the way Prometheus computes
// histogram_quantile (linear inside the bucket).

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

// text -> Map(name -> [{ labels, value }])
export function parse(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(LABEL)) labels[k] = v.replace(/\\(.)/g, "$1");
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: Number(m[3]) });
  }
  return out;
}

export function sum(samples, name, keep = () => true) {
  return (samples.get(name) || []).filter((s) => keep(s.labels)).reduce((a, s) => a + s.value, 0);
}

// A histogram's cumulative bucket counts summed over its other labels: [[le, count], ...] by le.
export function buckets(samples, name) {
  const byLe = new Map();
  for (const s of samples.get(`${name}_bucket`) || []) {
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

// The buckets of the observations between two readings.
export function delta(newer, older) {
  const before = new Map(older || []);
  return newer.map(([le, count]) => [le, Math.max(0, count - (before.get(le) || 0))]);
}

// histogram_quantile(q) over cumulative buckets; null without observations.
export function quantile(q, cumulative) {
  if (!cumulative.length) return null;
  const total = cumulative[cumulative.length - 1][1];
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of cumulative) {
    if (count >= rank) {
      if (le === Infinity) return prevLe; // above the largest bound: its lower edge, as Prometheus
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le;
    prevCount = count;
  }
  return prevLe;
}

// One reading of /metrics, reduced to what the overview shows.
export function reading(text, at) {
  const s = parse(text);
  const status = (l) => Number(l.status);
  return {
    at,
    requests: sum(s, "stratus_requests_total"),
    clientErrors: sum(s, "stratus_requests_total", (l) => status(l) >= 400 && status(l) < 500),
    serverErrors: sum(s, "stratus_requests_total", (l) => status(l) >= 500),
    promptTokens: sum(s, "stratus_prompt_tokens_total"),
    completionTokens: sum(s, "stratus_generation_tokens_total"),
    running: sum(s, "stratus_requests_running"),
    waiting: sum(s, "stratus_requests_waiting"),
    ttft: buckets(s, "stratus_time_to_first_token_seconds"),
    tpot: buckets(s, "stratus_time_per_output_token_seconds"),
  };
}

// Per second between two readings; a counter that went down (a restart) counts from zero.
export function rate(newer, older, field) {
  const seconds = newer.at - older.at;
  if (seconds <= 0) return null;
  const d = newer[field] - older[field];
  return (d >= 0 ? d : newer[field]) / seconds;
}
