// nsbox dashboard: live updates over server-sent events (/stream) and the usage
// graphs (the vendored uPlot).  The page works without this script: the server
// renders it whole; this only keeps it current.
(function () {
  "use strict";
  const body = document.body;
  const page = body.dataset.page;
  const cid = body.dataset.cid || "";
  // Samples per graph: five minutes, the window the server keeps (views.History).
  const keep = Math.max(2, Math.round(300 / (parseFloat(body.dataset.interval) || 2)));
  const state = { samples: 0, events: 0, charts: {}, data: null };
  window.nsboxDashboard = state;  // for the browser tests and the curious

  function bytes(v) {
    if (v === null || v === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }
  const fmt = {
    cpu: (v) => (v === null || v === undefined ? "-" : v.toFixed(1)),
    mem: bytes, mem_limit: (v) => (v ? bytes(v) : "-"),
    pids: (v) => (v === null || v === undefined ? "-" : String(v)),
    pids_limit: (v) => (v ? String(v) : "-"),
  };

  function setFields(root, sample) {
    root.querySelectorAll("[data-field]").forEach((el) => {
      const f = el.dataset.field;
      if (f in fmt && f in sample) el.textContent = fmt[f](sample[f]);
    });
  }

  function makeCharts() {
    const node = document.getElementById("series");
    if (!node || typeof uPlot === "undefined") return;
    let cols;
    try { cols = JSON.parse(node.textContent); } catch (e) { cols = [[], [], [], []]; }
    state.data = { time: cols[0] || [], cpu: cols[1] || [], mem: cols[2] || [], pids: cols[3] || [] };
    const specs = [
      ["cpu", "CPU %", "#1565c0", (u, v) => v.map((x) => x.toFixed(0) + "%")],
      ["mem", "memory", "#2e7d32", (u, v) => v.map(bytes)],
      ["pids", "PIDs", "#6a1b9a", (u, v) => v.map((x) => x.toFixed(0))],
    ];
    for (const [key, label, color, values] of specs) {
      const el = document.getElementById("chart-" + key);
      if (!el) continue;
      const opts = {
        width: 380, height: 180, legend: { show: false },
        scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(hi * 1.1, key === "cpu" ? 10 : 1)] } },
        axes: [{}, { values: values, size: 84 }],
        series: [{}, { label: label, stroke: color, width: 2, fill: color + "22" }],
      };
      state.charts[key] = new uPlot(opts, [state.data.time, state.data[key]], el);
    }
  }

  function addSample(t, sample) {
    const d = state.data;
    if (!d) return;
    // Not twice: the stream's first sample may be the history's last point.
    if (d.time.length && t <= d.time[d.time.length - 1]) return;
    d.time.push(t); d.cpu.push(sample.cpu); d.mem.push(sample.mem); d.pids.push(sample.pids);
    if (d.time.length > keep) for (const k of Object.keys(d)) d[k].shift();
    for (const key of Object.keys(state.charts)) state.charts[key].setData([d.time, d[key]]);
  }

  // What a container event says about its state and health (samples carry only usage).
  const states = { start: "running", restart: "running", unpause: "running", die: "exited",
                   stop: "exited", pause: "paused", destroy: "removed" };

  // A container the first page does not list yet (or one removed or renamed):
  // the server renders the list again, once the burst of events is over.
  let reloadTimer = null;
  function reloadSoon() {
    if (reloadTimer) clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => window.location.reload(), 700);
  }

  function applyEvent(e) {
    if (e.type !== "container") return;
    const scope = page === "container" ? (e.id === cid ? document : null)
      : document.querySelector('tr[data-cid="' + e.id + '"]');
    if (page === "index" && (!scope || e.action === "destroy" || e.action === "rename")) {
      if (["create", "start", "destroy", "rename"].includes(e.action)) reloadSoon();
    }
    if (!scope) return;
    const status = states[e.action];
    if (status) scope.querySelectorAll("[data-field=status]").forEach((el) => { el.textContent = status; });
    if (e.action.startsWith("health_status: ")) {
      const health = e.action.slice("health_status: ".length);
      scope.querySelectorAll("[data-field=health]").forEach((el) => { el.textContent = health; });
    }
  }

  // Events the page already shows (rendered, or replayed after a reconnect).
  const seen = new Set(Array.from(document.querySelectorAll("#events li[data-key]"),
                                  (li) => li.dataset.key));

  function addEvent(e) {
    const key = e.timeNano + "|" + e.id + "|" + e.action;
    if (seen.has(key)) return;
    seen.add(key);
    applyEvent(e);
    if (page === "container" && e.id !== cid) return;
    const list = document.getElementById("events");
    if (!list) return;
    const none = list.querySelector(".none");
    if (none) none.remove();
    const li = document.createElement("li");
    li.dataset.key = key;
    const time = document.createElement("time");
    time.textContent = e.time;
    const type = document.createElement("span");
    type.className = "etype";
    type.textContent = e.type;
    const action = document.createElement("b");
    action.textContent = e.action;
    li.append(time, " ", type, " ", action, " " + (e.name || e.id.slice(0, 12)));
    list.prepend(li);
    state.events++;
  }

  function connect() {
    if (typeof EventSource === "undefined") return;
    const live = document.getElementById("live");
    const source = new EventSource("/stream?since=" + (body.dataset.seq || "0"));
    source.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
    source.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
    source.addEventListener("sample", (msg) => {
      const data = JSON.parse(msg.data);
      state.samples++;
      state.last = data;
      if (page === "container") {
        const sample = data.containers[cid];
        if (sample) { setFields(document, sample); addSample(data.time, sample); }
      } else {
        document.querySelectorAll("tr[data-cid]").forEach((row) => {
          const sample = data.containers[row.dataset.cid];
          if (sample) setFields(row, sample);
        });
      }
    });
    source.addEventListener("engine", (msg) => addEvent(JSON.parse(msg.data)));
  }

  makeCharts();
  connect();
})();
