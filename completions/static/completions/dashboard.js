// The live dashboard: asks /dashboard/state.json every poll and redraws every line.
// No library: the DOM is built with textContent (names come from the registry and from client
// keys, so nothing is inserted as HTML), the charts are SVG drawn here.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#417690", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50", "#16a085", "#b7950b"];

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, v);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function s(tag, attrs) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    return el;
  }

  function seconds(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1) return `${Math.round(v * 1000)} ms`;
    if (v < 120) return `${v.toFixed(1)} s`;
    return `${Math.round(v / 60)} min`;
  }

  function num(v) {
    if (v === null || v === undefined) return "–";
    if (Math.abs(v) >= 10000) return `${(v / 1000).toFixed(0)}k`;
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // Money comes as a decimal string (US dollars): shown to a cent, or to four places below it.
  function dollars(v) {
    if (v === null || v === undefined) return "–";
    const x = Number(v);
    return x >= 1 || x === 0 ? `$${x.toFixed(2)}` : `$${x.toFixed(4)}`;
  }

  function percent(v) {
    return v === null || v === undefined ? "–" : `${v.toFixed(0)} %`;
  }

  function figure(key, label, value, title) {
    return h("div", { class: "dash-figure", title: title || null },
      h("span", { class: "dash-label" }, label),
      h("span", { class: "dash-value", "data-figure": key }, value));
  }

  function buckets(state) {
    const out = h("div", { class: "dash-buckets" });
    const list = Object.entries(state.buckets || {});
    if (!list.length) return h("span", { class: "dash-muted" }, "unlimited");
    for (const [name, b] of list) {
      const full = b.capacity ? Math.max(0, Math.min(1, b.level / b.capacity)) : 0;
      const bar = h("span", { class: "dash-bar" }, h("span", { class: "dash-fill" }));
      bar.firstChild.style.width = `${(full * 100).toFixed(1)}%`;
      out.append(h("div", { class: "dash-bucket", "data-bucket": name },
        h("span", { class: "dash-bucket-name" }, name.replace("_", " ")), bar,
        h("span", { class: "dash-bucket-level", title: b.size && b.size !== b.capacity ? `runs at ${num(b.capacity)} (margins)` : null }, `${num(b.level)} / ${num(b.size || b.capacity)}`)));
    }
    return out;
  }

  function inFlight(state) {
    const conc = state.limits && state.limits.max_concurrency;
    return conc ? `${state.in_flight} / ${conc}` : String(state.in_flight);
  }

  function limitsText(state) {
    const lim = state.limits_in_force_per_minute || {};
    const parts = [];
    if (lim.requests) parts.push(`${num(lim.requests)} rpm`);
    if (lim.tokens) parts.push(`${num(lim.tokens)} tpm`);
    if (lim.input_tokens) parts.push(`${num(lim.input_tokens)} itpm`);
    if (lim.output_tokens) parts.push(`${num(lim.output_tokens)} otpm`);
    return parts.length ? parts.join(", ") : "–";
  }

  function cooldown(state) {
    const c = state.cooldown;
    if (!c || !c.seconds_left) return h("span", { class: "dash-ok" }, "available");
    return h("span", { class: "dash-cooling", title: `${c.failures_in_a_row} failures in a row` },
      `cooling ${seconds(c.seconds_left)} (${c.last_fault || "fault"})`);
  }

  // A chart of the last hour, a line per series ({name, chart: {unit, values}}): utilisation of
  // the limits (%) or, where some have no limit, upstream calls per minute.
  const DASHES = ["none", "6 3", "2 3", "8 3 2 3"];

  function chart(series) {
    const W = 600, H = 120, L = 34, B = 16, T = 6;
    const byUse = series.length > 0 && series.every((x) => x.chart.unit === "utilisation");
    const values = series.map((x) => x.chart.values);
    const top = byUse
      ? Math.max(100, ...values.flat().filter((v) => v !== null))
      : Math.max(1, ...values.flat());
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "dash-chart", role: "img" });
    const title = s("title");
    title.textContent = byUse ? "Utilisation of the limits, each minute of the last hour" : "Upstream calls, each minute of the last hour";
    svg.append(title);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const x = (i) => L + ((W - L - 4) * i) / 59;
    for (const tick of byUse ? [0, 50, 100] : [0, top]) {
      svg.append(s("line", { x1: L, x2: W - 4, y1: y(tick), y2: y(tick), class: tick === 100 && byUse ? "dash-limit" : "dash-grid" }));
      const label = s("text", { x: L - 4, y: y(tick) + 4, "text-anchor": "end", class: "dash-axis" });
      label.textContent = byUse ? `${tick}%` : num(tick);
      svg.append(label);
    }
    for (const [at, text] of [[0, "−60 min"], [30, "−30"], [59, "now"]]) {
      const label = s("text", { x: x(at), y: H - 3, "text-anchor": at === 0 ? "start" : at === 59 ? "end" : "middle", class: "dash-axis" });
      label.textContent = text;
      svg.append(label);
    }
    values.forEach((vals, n) => {
      let d = "";
      vals.forEach((v, i) => {
        if (v === null) return;
        d += `${d && vals[i - 1] !== null ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      });
      // Each line dashed its own way, so one lying on another still shows.
      if (d) svg.append(s("path", { d, class: "dash-series", stroke: COLOURS[n % COLOURS.length], "stroke-dasharray": DASHES[n % DASHES.length] }));
    });
    const legend = h("div", { class: "dash-legend" },
      h("span", { class: "dash-muted" }, byUse ? "utilisation of the limits per minute:" : "upstream calls per minute:"),
      series.map((x, n) => {
        const key = h("span", { class: "dash-key" });
        key.style.background = COLOURS[n % COLOURS.length];
        return h("span", {}, key, x.name);
      }));
    return h("div", { class: "dash-chart-box" }, svg, legend);
  }

  function lineFigures(state, kind) {
    return h("div", { class: "dash-figures" },
      figure("waiting", "waiting in line", state.waiting, "Requests in the line, waiting for capacity"),
      figure("queued", "queued / running", `${state.rows.queued} / ${state.rows.running}`, `Requests by their rows, queued and running: counted in the database every few seconds (these ${rowsAge} s ago)`),
      figure("broker", "broker messages", state.broker_messages, "Messages in this line's Celery queue (tasks and wake-ups)"),
      figure("in-flight", "in flight", kind === "group" ? state.in_flight : inFlight(state), "Upstream calls running now"),
      figure("grants-per-minute", "grants, last min", grants(state.grants_per_minute), "Requests the line let start in the last 60 s (the limiter's own count, read while this page is open: over a shorter time, its seconds are said)"),
      figure("calls-per-minute", "calls / min", num(state.calls_per_minute), "Upstream calls that ended in the last 60 s"),
      figure("spend-per-minute", "spend / min", dollars(state.spend_per_minute), "US dollars spent in the last 60 s, at the deployments' prices"),
      figure("cheap-calls", "flex + batch (1 h)", state.cheap_calls_last_hour, "Calls of the last hour sent in a cheaper tier: flex processing or a provider batch"),
      figure("saved", "saved (1 h)", dollars(state.saved_last_hour), "US dollars the cheaper tiers saved in the last hour: those calls at standard prices, less what they cost"),
      figure("utilisation", "utilisation", percent(state.utilisation_percent), `The larger of what the line used of its limits over the last 60 s and what of its capacity is taken now (buckets, calls at once: ${percent(state.in_use_percent)})`),
      figure("wait-p50", "wait p50", seconds(state.queue_wait_p50_seconds), "Queue wait before the first attempt, last 5 min"),
      figure("wait-p99", "wait p99", seconds(state.queue_wait_p99_seconds), "Queue wait before the first attempt, last 5 min"),
      figure("estimated-wait", "est. wait (new)", seconds(state.estimated_wait_seconds), "Estimated wait of a new request"),
      figure("rate-limited", "429s (1 h)", state.rate_limited_last_hour, "Upstream 429 answers in the last hour"),
      figure("errors", "errors (1 h)", state.errors_last_hour, "Other upstream errors and no-answers in the last hour"));
  }

  function deploymentTable(group) {
    const head = ["deployment", "weight", "in flight", "buckets (level / size)", "limits in force", "grants, last min", "calls / min", "utilisation", "latency", "429s (1 h)", "errors (1 h)", "state"];
    return h("table", { class: "dash-table" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, group.deployments.map((d) => h("tr", { "data-deployment": d.name },
        h("td", {}, d.name), h("td", {}, d.weight),
        h("td", { "data-figure": "in-flight" }, inFlight(d)), h("td", {}, buckets(d)),
        h("td", {}, limitsText(d)),
        h("td", { "data-figure": "grants-per-minute" }, grants(d.grants_per_minute)),
        h("td", { "data-figure": "calls-per-minute" }, num(d.calls_per_minute)),
        h("td", {}, percent(d.utilisation_percent)), h("td", {}, seconds(d.latency_seconds)),
        h("td", {}, d.rate_limited_last_hour), h("td", {}, d.errors_last_hour),
        h("td", {}, cooldown(d))))));
  }

  function flowTable(group) {
    if (!group.flows.length) return h("p", { class: "dash-muted" }, "No client key has waited here in the last minute.");
    const head = ["client key", "waiting", "share of tokens (1 min)", "grants (1 min)", "wait p50", "wait max"];
    return h("table", { class: "dash-table dash-flows" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, group.flows.map((f) => h("tr", { "data-flow": f.name },
        h("td", {}, f.name), h("td", { "data-figure": "flow-waiting" }, f.waiting),
        h("td", {}, `${(100 * f.share_last_minute).toFixed(0)} %`), h("td", {}, f.granted_last_minute),
        h("td", {}, seconds(f.queue_wait_p50_seconds)), h("td", {}, seconds(f.queue_wait_max_seconds))))));
  }

  function groupCard(g) {
    return h("section", { class: `dash-line module${alarming(g) ? " dash-alert" : ""}`, "data-line": `group:${g.name}` },
      h("h3", {}, historyLink({ group: g.name }, g.name), h("small", {}, ` group · ${g.policy} · ${g.scheduling} · queue ${g.queue}`)),
      h("div", { class: "dash-top" },
        lineFigures(g, "group"),
        h("div", {},
          chart(g.deployments.map((d) => ({ name: d.name, chart: d.chart }))),
          depthSpark(g.depth_key, true))),
      deploymentTable(g),
      g.scheduling === "fair" || g.flows.length ? h("div", {}, h("h4", {}, "Client keys (flows)"), flowTable(g)) : null);
  }

  // A small chart of one series, for a table cell.
  // `axis`: the top value written in the corner, and the baseline drawn.
  function sparkline(values, top, title, W = 120, H = 24, cls = "dash-spark", axis = true) {
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: cls, role: "img", preserveAspectRatio: "none" });
    const t = s("title");
    t.textContent = title;
    svg.append(t);
    if (axis) {
      svg.append(s("line", { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: "dash-grid" }));
      const label = s("text", { x: 1, y: 8, class: "dash-axis dash-spark-top" });
      label.textContent = num(top);
      svg.append(label);
    }
    let d = "";
    values.forEach((v, i) => {
      if (v === null) return;
      const x = (W * i) / Math.max(1, values.length - 1), y = H - 1 - ((H - 2) * Math.min(v, top)) / top;
      d += `${d && values[i - 1] !== null ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (d) svg.append(s("path", { d, class: "dash-series", stroke: COLOURS[0] }));
    return svg;
  }

  // A line is idle when nothing waits, runs or ran in the last hour; a model without limits has
  // no line to watch. Both are hidden until asked for.
  let showAll = false;

  function quiet(m) {
    const idle = !m.waiting && !m.in_flight && !m.calls_last_hour && !m.rows.queued && !m.rows.running;
    return idle || (!m.limits && !m.waiting && !m.rows.queued);
  }

  // Red: upstream 429s in the last hour (a limit set above the provider's), errors on more than
  // one call in twenty, or requests that waited past their deadline.
  function alarming(line) {
    const calls = line.calls_last_hour || 0;
    return line.rate_limited_last_hour > 0 || line.errors_last_hour > Math.max(1, calls / 20) || (line.counters && line.counters.expired > 0);
  }

  function historyLink(params, text) {
    return h("a", { href: `/admin/completions/completionrequest/?${new URLSearchParams(params)}`, title: "Its requests in the admin" }, text);
  }

  function modelTable(models) {
    const head = ["model", "waiting", "waiting, live", "queued / running", "in flight", "buckets (level / size)", "limits in force", "grants, last min", "calls / min", "spend / min", "utilisation", "wait p50 / p99", "429s (1 h)", "errors (1 h)", "last hour"];
    const shown = showAll ? models : models.filter((m) => !quiet(m));
    const hidden = models.length - shown.length;
    const toggle = hidden || showAll
      ? h("p", { class: "dash-muted" }, h("a", { href: "#", "data-action": "show-all" }, showAll ? "Hide idle and unlimited models" : `Show ${hidden} idle or unlimited model(s)`))
      : null;
    if (toggle) toggle.firstChild.addEventListener("click", (e) => { e.preventDefault(); showAll = !showAll; redraw(); });
    const table = h("table", { class: "dash-table dash-models" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, shown.map((m) => {
        const spark = m.chart.unit === "utilisation"
          ? sparkline(m.chart.values, 100, "Utilisation of the limits per minute, last hour (0–100 %)", 120, 24, "dash-spark", true)
          : sparkline(m.chart.values, Math.max(1, ...m.chart.values), "Upstream calls per minute, last hour", 120, 24, "dash-spark", true);
        const [provider, model] = m.name.split("/");
        return h("tr", { "data-line": `model:${m.name}`, class: alarming(m) ? "dash-alert" : null },
          h("td", {}, historyLink({ provider, model }, m.name)),
          h("td", { "data-figure": "waiting" }, m.waiting),
          h("td", {}, depthSpark(m.depth_key)),
          h("td", { "data-figure": "queued" }, `${m.rows.queued} / ${m.rows.running}`),
          h("td", { "data-figure": "in-flight" }, inFlight(m)), h("td", {}, buckets(m)),
          h("td", {}, limitsText(m)),
          h("td", { "data-figure": "grants-per-minute" }, grants(m.grants_per_minute)),
          h("td", { "data-figure": "calls-per-minute" }, num(m.calls_per_minute)),
          h("td", { "data-figure": "spend-per-minute" }, dollars(m.spend_per_minute)),
          h("td", { "data-figure": "utilisation" }, percent(m.utilisation_percent)),
          h("td", { class: "dash-nowrap" }, `${seconds(m.queue_wait_p50_seconds)} / ${seconds(m.queue_wait_p99_seconds)}`),
          h("td", {}, m.rate_limited_last_hour), h("td", {}, m.errors_last_hour), h("td", {}, spark));
      })));
    return h("div", {}, shown.length ? table : h("p", { class: "dash-muted" }, "No model is busy now."), toggle);
  }

  function keyTable(keys) {
    if (!keys.length) return h("p", { class: "dash-muted" }, "No client key has a rate limit of its own.");
    const head = ["client key", "waiting in its line", "queued", "buckets (level / size)", "limits", "over the limit"];
    return h("table", { class: "dash-table dash-keys" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, keys.map((k) => h("tr", { "data-key": k.name },
        h("td", {}, k.name), h("td", { "data-figure": "waiting" }, k.waiting),
        h("td", { "data-figure": "queued" }, k.queued), h("td", {}, buckets(k)),
        h("td", {}, limitsText(k)), h("td", {}, k.fail_fast ? "refused (429)" : "waits")))));
  }

  function budgetTable(budgets) {
    if (!budgets.length) return h("p", { class: "dash-muted" }, "No client key or model group has a budget.");
    const head = ["budget of", "period", "spent", "reserved", "left", "limit", "soft threshold", "resets"];
    return h("table", { class: "dash-table dash-budgets" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))),
      h("tbody", {}, budgets.map((b) => h("tr", { "data-budget": b.owner, class: b.warning || b.spent_out ? "dash-alert" : null },
        h("td", {}, b.owner), h("td", {}, b.period),
        h("td", { "data-figure": "spent" }, dollars(b.spent)), h("td", {}, dollars(b.reserved)),
        h("td", { "data-figure": "left" }, b.spent_out ? "none: refused until it resets" : dollars(b.left)),
        h("td", {}, dollars(b.limit)),
        h("td", {}, b.warn_at === null ? "–" : `${dollars(b.warn_at)}${b.warning ? " (passed)" : ""}`),
        h("td", {}, new Date(b.reset).toLocaleString())))));
  }

  // Grants over the last minute from the limiter's running count of each line and deployment:
  // the page keeps the counts of its polls, and says how many grants it saw over what it saw of
  // the last 60 s — counted, never extrapolated (none for a model without limits: no line).
  const samples = new Map();

  function grantRate(key, granted, at) {
    let list = samples.get(key);
    if (!list) samples.set(key, (list = []));
    if (list.length && granted < list[list.length - 1][1]) list.length = 0; // the count started again
    list.push([at, granted]);
    while (list.length > 1 && at - list[1][0] >= 60000) list.shift();
    const [t0, g0] = list[0];
    return at - t0 < 1000 ? null : { count: granted - g0, window: (at - t0) / 1000 };
  }

  // Grants in the last minute, or in the part of it the page has seen (its seconds said).
  function grants(measured) {
    if (!measured) return "–";
    return measured.window < 59 ? `${measured.count} in ${Math.round(measured.window)} s` : String(measured.count);
  }

  // Requests waiting in each line at every poll of the last ten minutes the page has seen: the
  // queue filling and draining, live.
  const depths = new Map();
  const DEPTH_MS = 600000;

  function trackDepth(key, waiting, at) {
    let list = depths.get(key);
    if (!list) depths.set(key, (list = []));
    list.push([at, waiting]);
    while (list.length && at - list[0][0] > DEPTH_MS) list.shift();
  }

  function depthSpark(key, wide) {
    const values = (depths.get(key) || []).map((p) => p[1]);
    const top = Math.max(1, ...values);
    const title = `Requests waiting at each refresh, the last ${values.length} (up to ten minutes); top: ${top}`;
    const spark = wide ? sparkline(values, top, title, 560, 40, "dash-depth") : sparkline(values, top, title);
    spark.setAttribute("data-samples", String(values.length));
    if (!wide) return spark;
    return h("div", { class: "dash-depth-box" },
      h("span", { class: "dash-muted" }, `waiting in line at each refresh, since this page opened (up to 10 min; top ${top})`), spark);
  }

  // Each line's grant rate and queue depth, from this poll and the ones before it.
  function withSamples(state) {
    const at = Date.parse(state.now);
    const seen = new Set();
    const rate = (key, granted) => {
      seen.add(key);
      return grantRate(key, granted, at);
    };
    for (const g of state.groups) {
      g.depth_key = `group:${g.name}`;
      trackDepth(g.depth_key, g.waiting, at);
      g.grants_per_minute = rate(`group:${g.name}`, g.counters.granted);
      for (const d of g.deployments) d.grants_per_minute = rate(`group:${g.name}:${d.name}`, d.granted);
    }
    for (const m of state.models) {
      m.depth_key = `model:${m.name}`;
      trackDepth(m.depth_key, m.waiting, at);
      m.grants_per_minute = m.limits ? rate(`model:${m.name}`, m.counters.granted) : null;
    }
    for (const key of samples.keys()) if (!seen.has(key)) samples.delete(key);
    const lines = new Set([...state.groups.map((g) => g.depth_key), ...state.models.map((m) => m.depth_key)]);
    for (const key of depths.keys()) if (!lines.has(key)) depths.delete(key);
  }

  let rowsAge = 0;
  let lastDrawn = null;

  function redraw() {
    if (lastDrawn) draw(...lastDrawn, false);
  }

  function draw(root, state, sample = true) {
    lastDrawn = [root, state];
    rowsAge = state.rows_counted_seconds_ago;
    if (sample) withSamples(state);
    root.querySelector("[data-figure=workers]").textContent = state.workers;
    root.querySelector("[data-figure=default-queue]").textContent = state.default_queue_messages;
    const groups = root.querySelector("#dash-groups");
    groups.replaceChildren(...(state.groups.length ? state.groups.map(groupCard) : [h("p", { class: "dash-muted" }, "No model groups are configured.")]));
    root.querySelector("#dash-models").replaceChildren(modelTable(state.models));
    root.querySelector("#dash-keys").replaceChildren(keyTable(state.keys));
    root.querySelector("#dash-budgets").replaceChildren(budgetTable(state.budgets));
    const status = root.querySelector("#dash-status");
    status.textContent = `Updated ${new Date(state.now).toLocaleTimeString()}`;
    status.className = "";
  }

  function start() {
    const root = document.getElementById("dashboard");
    if (!root) return;
    const url = root.dataset.stateUrl;
    const poll = Number(root.dataset.pollMs) || 1500;
    const status = root.querySelector("#dash-status");
    async function tick() {
      try {
        const reply = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (reply.status === 403) {
          status.textContent = "Signed out: sign in again to see the figures.";
          status.className = "errornote";
        } else if (!reply.ok) {
          status.textContent = `The server answered ${reply.status}; retrying.`;
          status.className = "errornote";
        } else {
          draw(root, await reply.json());
        }
      } catch (err) {
        status.textContent = "Cannot reach the server; retrying.";
        status.className = "errornote";
      }
      setTimeout(tick, poll);
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
