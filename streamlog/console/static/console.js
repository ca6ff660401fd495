// streamlog console: plain JavaScript, no build step, no external resources.
// Everything shown is put in the page with textContent / setAttribute (never innerHTML),
// so message keys, values and headers (user data) are always shown as text.
"use strict";

(function () {
  const main = document.getElementById("main");
  const statusBar = document.getElementById("status");
  let overviewCache = null;
  let refreshTimer = null;
  let renderSeq = 0;

  // --- DOM helpers ----------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "onclick" || k === "onsubmit" || k === "onchange") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  function table(headers, rows, numeric) {
    const num = new Set(numeric || []);
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", { class: num.has(i) ? "num" : null }, h)))),
      el("tbody", {}, rows.map(r => el("tr", {}, r.map((c, i) => el("td", { class: num.has(i) ? "num" : null }, c))))));
  }
  function show(v) { return v === null || v === undefined ? "–" : String(v); }
  function list(v) { return Array.isArray(v) && v.length ? v.join(", ") : "–"; }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0; let x = n;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return (i ? x.toFixed(1) : String(x)) + " " + units[i];
  }
  function when(ms) { return ms === null || ms === undefined ? "–" : new Date(ms).toISOString(); }
  function partitionList(entries) {
    if (!entries || !entries.length) return "–";
    return entries.map(e => e.topic + " [" + e.partitions.join(", ") + "]").join("; ");
  }
  let keepStatus = false;  // an admin action's outcome outlives the navigation that follows it
  function setStatus(text, kind) {
    statusBar.textContent = text || "";
    statusBar.className = text ? kind || "info" : "";
  }
  function done(text) { setStatus(text, "info"); keepStatus = true; }
  function card(key, value, cls) {
    return el("div", { class: "card" }, el("div", { class: "v " + (cls || "") }, show(value)), el("div", { class: "k" }, key));
  }
  function pretty(value) {
    if (typeof value === "string") {
      const t = value.trim();
      if ((t.startsWith("{") && t.endsWith("}")) || (t.startsWith("[") && t.endsWith("]"))) {
        try { return JSON.stringify(JSON.parse(t), null, 2); } catch (e) { /* shown as it is */ }
      }
      return value;
    }
    return JSON.stringify(value, null, 2);
  }

  // --- the API --------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, error) { super(error.message || error.code); this.status = status; this.error = error; }
  }
  async function api(method, path, body) {
    const init = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") init.headers["X-Streamlog-Console"] = "1";
    if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const response = await fetch("/api/" + path, init);
    const answer = await response.json();
    if (!response.ok) throw new ApiError(response.status, answer.error || { code: "HTTP_" + response.status });
    return answer;
  }
  function enc(s) { return encodeURIComponent(s); }
  function failed(e) {
    const code = e.error ? e.error.code + ": " : "";
    setStatus(code + e.message, "error");
  }

  // --- pages -----------------------------------------------------------------------------
  async function overviewPage() {
    const o = await api("GET", "overview");
    overviewCache = o;
    const controller = o.controller === null ? "none" : "node " + o.controller;
    return [
      el("h2", {}, "Cluster"),
      el("div", { class: "cards" },
        card("nodes up", o.nodes_up + " / " + o.nodes.length, o.nodes_up === o.nodes.length ? "up" : "down"),
        card("controller", controller),
        card("topics", o.topics),
        card("partitions", o.partitions),
        card("under-replicated", o.under_replicated_partitions, o.under_replicated_partitions ? "warn" : ""),
        card("offline", o.offline_partitions, o.offline_partitions ? "down" : "")),
      el("p", { class: "muted" }, o.alone ? "A node running alone (a cluster of one)." :
        "Cluster " + show(o.cluster_id) + "; controller in-sync voters: " + list(o.controller_isr) + "."),
      el("h2", {}, "Nodes"),
      table(["node", "address", "state", "role"], o.nodes.map(n => [
        String(n.node_id), show(n.address),
        el("span", { class: n.up ? "up" : "down" }, n.up ? "up" : "down"),
        n.controller ? "controller" : ""]), [0]),
    ];
  }

  async function topicsPage() {
    const t = await api("GET", "topics");
    const admin = overviewCache && overviewCache.admin;
    const rows = t.topics.map(topic => [
      el("a", { href: "#/topics/" + enc(topic.topic) }, topic.topic),
      topic.internal ? "internal" : "",
      String(topic.partitions.length), show(topic.replication_factor),
      show(topic.messages), bytes(topic.size_bytes),
      String(topic.partitions.filter(p => p.under_replicated).length),
    ]);
    const parts = [el("h2", {}, "Topics"),
      t.topics.length ? table(["topic", "", "partitions", "replicas", "messages", "size here", "under-replicated"], rows, [2, 3, 4, 5, 6])
        : el("p", { class: "muted" }, "No topics yet.")];
    if (admin) parts.push(el("h2", {}, "Create a topic"), createTopicForm());
    else parts.push(el("p", { class: "muted" }, "Read-only console: start the node with --console-admin to create and delete topics here."));
    return parts;
  }

  function createTopicForm() {
    const name = el("input", { name: "topic", required: true, pattern: "[A-Za-z0-9._\\-]+", maxlength: 249 });
    const partitions = el("input", { name: "partitions", type: "number", min: 1, value: 1 });
    const rf = el("input", { name: "replication_factor", type: "number", min: 1, placeholder: "default" });
    return el("form", { id: "create-topic", onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { topic: name.value, partitions: Number(partitions.value) };
      if (rf.value) body.replication_factor = Number(rf.value);
      try {
        await api("POST", "topics", body);
        done("Created topic " + body.topic + ".");
        location.hash = "#/topics/" + enc(body.topic);
      } catch (e) { failed(e); }
    } },
    el("label", {}, "name", name), el("label", {}, "partitions", partitions),
    el("label", {}, "replication factor", rf), el("button", { type: "submit" }, "Create topic"));
  }

  async function topicPage(name) {
    const t = await api("GET", "topics/" + enc(name));
    const admin = overviewCache && overviewCache.admin;
    const rows = t.partitions.map(p => [
      String(p.partition), show(p.leader), list(p.replicas),
      el("span", { class: p.under_replicated ? "warn" : "" }, list(p.isr)),
      show(p.log_start_offset), show(p.high_watermark), show(p.log_end_offset), show(p.messages),
      bytes(p.size_bytes),
      el("a", { href: "#/messages?topic=" + enc(t.topic) + "&partition=" + p.partition }, "browse"),
    ]);
    const parts = [
      el("h2", {}, "Topic ", el("code", {}, t.topic), t.internal ? " (internal)" : ""),
      el("p", { class: "muted" }, "Topic id " + show(t.topic_id) + "; " + show(t.messages) + " messages; config " +
        JSON.stringify(t.config || {})),
      table(["partition", "leader", "replicas", "in sync", "log start", "high watermark", "log end", "messages", "size here", ""],
        rows, [0, 4, 5, 6, 7, 8]),
    ];
    if (admin && !t.internal) parts.push(deleteTopicBox(t.topic));
    return parts;
  }

  function deleteTopicBox(name) {
    const box = el("div", { id: "delete-topic" });
    const start = el("button", { class: "danger", type: "button", onclick: () => {
      const typed = el("input", { name: "confirm-name", placeholder: name });
      const form = el("form", { class: "plan", onsubmit: async (ev) => {
        ev.preventDefault();
        if (typed.value !== name) { setStatus("Type the topic's name to confirm.", "error"); return; }
        try {
          await api("DELETE", "topics/" + enc(name));
          done("Deleted topic " + name + ".");
          location.hash = "#/topics";
        } catch (e) { failed(e); }
      } }, el("span", {}, "Delete topic ", el("code", {}, name), " and all its messages? Type its name to confirm: "),
      typed, el("button", { class: "danger", type: "submit" }, "Delete for good"),
      el("button", { class: "plain", type: "button", onclick: () => form.remove() }, "Cancel"));
      box.appendChild(form);
    } }, "Delete topic…");
    box.appendChild(start);
    return box;
  }

  async function messagesPage(params) {
    const topics = (await api("GET", "topics")).topics;
    const topic = params.get("topic") || (topics.find(t => !t.internal) || topics[0] || {}).topic || "";
    const form = el("form", { id: "browse" });
    const topicSel = el("select", { name: "topic" }, topics.map(t => el("option", { value: t.topic, selected: t.topic === topic }, t.topic)));
    const partition = el("input", { name: "partition", type: "number", min: 0, value: params.get("partition") || 0 });
    const from = el("select", { name: "from" }, ["latest", "earliest", "offset", "timestamp"].map(
      f => el("option", { value: f, selected: (params.get("offset") !== null ? "offset" : params.get("timestamp") !== null ? "timestamp" : params.get("from") || "latest") === f }, f)));
    const at = el("input", { name: "at", placeholder: "offset, or time (ms or ISO)", value: params.get("offset") || params.get("timestamp") || "" });
    const limit = el("input", { name: "limit", type: "number", min: 1, value: params.get("limit") || 50 });
    form.append(el("label", {}, "topic", topicSel), el("label", {}, "partition", partition), el("label", {}, "from", from),
      el("label", {}, "offset / time", at), el("label", {}, "limit", limit), el("button", { type: "submit" }, "Read"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams({ topic: topicSel.value, partition: partition.value, limit: limit.value });
      if (from.value === "offset") q.set("offset", at.value.trim());
      else if (from.value === "timestamp") {
        const v = at.value.trim();
        q.set("timestamp", /^\d+$/.test(v) ? v : String(Date.parse(v)));
      } else q.set("from", from.value);
      location.hash = "#/messages?" + q.toString();
    });
    const parts = [el("h2", {}, "Messages"), form];
    if (!topic) { parts.push(el("p", { class: "muted" }, "No topics yet.")); return parts; }
    const q = new URLSearchParams({ limit: limit.value });
    for (const k of ["offset", "timestamp", "from"]) if (params.get(k) !== null) q.set(k, params.get(k));
    const page = await api("GET", "topics/" + enc(topic) + "/partitions/" + enc(partition.value) + "/messages?" + q.toString());
    parts.push(el("p", { class: "muted", id: "browse-summary" },
      topic + " / " + page.partition + ": " + page.messages.length + " message(s); log start " + page.log_start_offset +
      ", high watermark " + page.high_watermark + "."));
    if (page.messages.length) {
      parts.push(table(["offset", "timestamp", "key", "headers", "value"], page.messages.map(m => [
        String(m.offset), when(m.timestamp), m.key === null ? el("span", { class: "muted" }, "null") : el("code", {}, m.key),
        Object.keys(m.headers || {}).length ? el("pre", { class: "value" }, JSON.stringify(m.headers, null, 1)) : "–",
        el("pre", { class: "value" }, pretty(m.value)),
      ]), [0]));
    }
    if (page.next_offset < page.high_watermark) {
      const next = new URLSearchParams({ topic, partition: String(page.partition), offset: String(page.next_offset), limit: limit.value });
      parts.push(el("a", { href: "#/messages?" + next.toString(), id: "next-page" }, "Next messages →"));
    }
    return parts;
  }

  async function groupsPage() {
    const g = await api("GET", "groups");
    const parts = [el("h2", {}, "Consumer groups")];
    if (g.unreachable.length) parts.push(el("p", { class: "warn" }, "Nodes that did not answer (their groups are missing): " + g.unreachable.join(", ")));
    parts.push(g.groups.length ? table(["group", "state", "members"], g.groups.map(x => [
      el("a", { href: "#/groups/" + enc(x.group) }, x.group), x.state, String(x.members)]), [2])
      : el("p", { class: "muted" }, "No consumer groups."));
    return parts;
  }

  async function groupPage(name) {
    const g = await api("GET", "groups/" + enc(name));
    const admin = overviewCache && overviewCache.admin;
    const parts = [
      el("h2", {}, "Group ", el("code", {}, g.group)),
      el("div", { class: "cards" }, card("state", g.state), card("generation", g.generation), card("members", g.members.length),
        card("total lag", g.lag, g.lag ? "warn" : ""), card("assignor", g.assignor)),
      el("h2", {}, "Members"),
      g.members.length ? table(["member", "instance", "topics", "holds", "moving to", "last heartbeat"], g.members.map(m => [
        el("code", {}, m.member_id), show(m.group_instance_id), list(m.topics), partitionList(m.assignment),
        partitionList(m.target), show(m.last_heartbeat_ms_ago) + " ms ago"]))
        : el("p", { class: "muted" }, "No members (offsets may be reset)."),
      el("h2", {}, "Offsets and lag"),
      table(["topic", "partition", "committed", "high watermark", "lag", "held by"], g.offsets.map(o => [
        o.topic, String(o.partition), show(o.offset), show(o.high_watermark), show(o.lag),
        o.member_id ? el("code", {}, o.member_id) : "–"]), [1, 2, 3, 4]),
    ];
    if (admin) parts.push(el("h2", {}, "Reset offsets"), resetForm(g));
    return parts;
  }

  function resetForm(g) {
    const topics = [...new Set(g.offsets.map(o => o.topic))];
    const topic = el("input", { name: "topic", list: "group-topics", value: topics[0] || "", required: true });
    const options = el("datalist", { id: "group-topics" }, topics.map(t => el("option", { value: t })));
    const partitions = el("input", { name: "partitions", placeholder: "all, or 0,2,5" });
    const to = el("select", { name: "to" }, ["earliest", "latest", "offset", "shift", "timestamp"].map(v => el("option", { value: v }, v)));
    const n = el("input", { name: "n", placeholder: "n (offset, shift, ms)" });
    const result = el("div", { id: "reset-plan" });
    function request() {
      const body = { topic: topic.value };
      if (partitions.value.trim()) body.partitions = partitions.value.split(",").map(s => Number(s.trim()));
      body.to = to.value === "earliest" || to.value === "latest" ? to.value : { [to.value]: Number(n.value) };
      return body;
    }
    const form = el("form", { id: "reset-offsets", onsubmit: async (ev) => {
      ev.preventDefault();
      result.replaceChildren();
      const body = request();
      try {
        const plan = await api("POST", "groups/" + enc(g.group) + "/reset-offsets", { ...body, dry_run: true });
        const confirm = plan.offsets.map(o => ({ topic: o.topic, partition: o.partition, offset: o.offset }));
        result.append(el("div", { class: "plan" },
          el("p", {}, "Dry run: the committed offsets would become"),
          table(["topic", "partition", "now", "after"], plan.offsets.map(o => [o.topic, String(o.partition), show(o.previous), String(o.offset)]), [1, 2, 3]),
          el("button", { class: "danger", type: "button", id: "confirm-reset", onclick: async () => {
            try {
              await api("POST", "groups/" + enc(g.group) + "/reset-offsets", { ...body, dry_run: false, confirm });
              done("Reset the offsets of " + g.group + ".");
              render();
            } catch (e) { failed(e); }
          } }, "Confirm reset"),
          el("button", { class: "plain", type: "button", onclick: () => result.replaceChildren() }, "Cancel")));
      } catch (e) { failed(e); }
    } }, el("label", {}, "topic", topic, options), el("label", {}, "partitions", partitions), el("label", {}, "to", to),
    el("label", {}, "n", n), el("button", { type: "submit" }, "Dry run"));
    return el("div", {}, form, result);
  }

  // --- charts ------------------------------------------------------------------------------
  const COLORS = ["#2456c8", "#c0362c", "#1a7f37", "#9a6700", "#7b3fc4", "#00838f", "#ad1457", "#5d4037"];

  function lineChart(id, times, series) {
    const W = 760, H = 200, L = 56, R = 12, T = 10, B = 24;
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "chart"); svg.setAttribute("id", id);
    svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    const names = Object.keys(series);
    const values = names.flatMap(k => series[k].filter(v => v !== null));
    const max = Math.max(1, ...values);
    const t0 = times[0] || 0, t1 = times[times.length - 1] || 1;
    const x = t => L + (t1 === t0 ? 0 : (t - t0) / (t1 - t0) * (W - L - R));
    const y = v => T + (1 - v / max) * (H - T - B);
    function text(tx, ty, s, anchor) {
      const n = document.createElementNS(NS, "text");
      n.setAttribute("x", tx); n.setAttribute("y", ty); n.setAttribute("text-anchor", anchor || "end");
      n.textContent = s; svg.appendChild(n);
    }
    for (const f of [0, 0.5, 1]) {
      const line = document.createElementNS(NS, "line");
      line.setAttribute("x1", L); line.setAttribute("x2", W - R); line.setAttribute("y1", y(max * f)); line.setAttribute("y2", y(max * f));
      line.setAttribute("stroke", "#e4e8ef"); svg.appendChild(line);
      text(L - 6, y(max * f) + 4, String(Math.round(max * f * 10) / 10));
    }
    if (times.length) {
      text(L, H - 6, new Date(t0).toLocaleTimeString(), "start");
      text(W - R, H - 6, new Date(t1).toLocaleTimeString(), "end");
    }
    names.forEach((k, i) => {
      let d = ""; let pen = false;
      series[k].forEach((v, j) => {
        if (v === null) { pen = false; return; }
        d += (pen ? "L" : "M") + x(times[j]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = true;
      });
      const path = document.createElementNS(NS, "path");
      path.setAttribute("d", d.trim()); path.setAttribute("fill", "none");
      path.setAttribute("stroke", COLORS[i % COLORS.length]); path.setAttribute("stroke-width", "2");
      path.setAttribute("data-series", k);
      svg.appendChild(path);
    });
    const legend = el("div", { class: "legend" }, names.map((k, i) => {
      const swatch = el("i", {}); swatch.style.background = COLORS[i % COLORS.length];
      return el("span", {}, swatch, k);
    }));
    return [svg, legend];
  }

  async function chartsPage() {
    const s = await api("GET", "samples");
    const parts = [el("h2", {}, "Throughput (messages/s, per topic)")];
    if (!s.interval_s) parts.push(el("p", { class: "muted" }, "Sampling is off on this node (--console-sample-interval 0)."));
    parts.push(...lineChart("throughput-chart", s.times_ms, s.topics));
    parts.push(el("h2", {}, "Consumer lag (messages, per group)"));
    parts.push(...lineChart("lag-chart", s.times_ms, s.groups));
    parts.push(el("p", { class: "muted" }, s.times_ms.length + " samples, one every " + s.interval_s + " s; updated live."));
    schedule(Math.max(1, s.interval_s || 5));
    return parts;
  }

  // --- routing -----------------------------------------------------------------------------
  function schedule(seconds) {
    if (refreshTimer) clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => render(true), seconds * 1000);
  }

  async function render(quiet) {
    if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; }
    const seq = ++renderSeq;
    const hash = location.hash.replace(/^#\/?/, "") || "overview";
    const [path, query] = hash.split("?");
    const segs = path.split("/").map(decodeURIComponent);
    const page = segs[0];
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
    if (!quiet && !keepStatus) setStatus("");
    keepStatus = false;
    try {
      if (!overviewCache) await overviewPage();
      let parts;
      if (page === "topics" && segs[1]) parts = await topicPage(segs[1]);
      else if (page === "topics") parts = await topicsPage();
      else if (page === "messages") parts = await messagesPage(new URLSearchParams(query || ""));
      else if (page === "groups" && segs[1]) parts = await groupPage(segs[1]);
      else if (page === "groups") parts = await groupsPage();
      else if (page === "charts") parts = await chartsPage();
      else parts = await overviewPage();
      if (seq !== renderSeq) return;  // a newer navigation won
      main.replaceChildren(...parts);
      main.dataset.page = page;
      const o = overviewCache;
      document.getElementById("node").textContent = "node " + o.node_id + " · streamlog " + o.version + " · " + (o.admin ? "admin" : "read-only");
    } catch (e) {
      if (seq !== renderSeq) return;
      if (e instanceof ApiError) failed(e); else setStatus(String(e), "error");
    }
  }

  window.addEventListener("hashchange", () => render());
  render();
})();
