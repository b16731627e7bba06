// The bridge's page: one WebSocket (api/live, relative to the page) brings a snapshot and then
// updates; everything is drawn with DOM calls (names are text, never markup). Times come as
// UTC and are shown in the browser's time zone, with "3 min ago" kept fresh.
"use strict";

(() => {
  const KEEP = 300; // recent sightings kept (the bridge sends at most as many)
  const SILENCE = 25000; // ms without a message after which the connection counts as lost
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#86bcb6"];
  const SINK_NAMES = { kafka: "Kafka", mqtt: "MQTT", webhook: "Webhook", file: "File" };
  const SOURCE_NAMES = { realtime: "Presence (/recognition)", logs: "History (/logs)" };

  const view = { bridge: null, cameras: {}, people: new Map(), sightings: new Map(), chart: null };
  const $ = (id) => document.getElementById(id);
  const byName = (a, b) => a.localeCompare(b, undefined, { numeric: true }); // Camera2 before Camera10
  const number = new Intl.NumberFormat();
  const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

  // -- time ------------------------------------------------------------------------------------

  function ago(iso) {
    const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 0) return "just now";
    if (seconds < 10) return "just now";
    if (seconds < 60) return `${seconds} s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h ago`;
    return `${Math.floor(hours / 24)} d ago`;
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  // <time> with the local time (and date unless today) and the full date as its title.
  function timeElement(iso) {
    const at = new Date(iso);
    const element = document.createElement("time");
    element.dateTime = iso;
    element.title = full.format(at);
    element.textContent = sameDay(at, new Date()) ? clock.format(at) : day.format(at);
    return element;
  }

  function agoElement(iso) {
    const element = document.createElement("span");
    element.className = "ago";
    element.dataset.ago = iso;
    element.textContent = ago(iso);
    return element;
  }

  function duration(seconds) {
    if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
  }

  function el(tag, props, ...children) {
    const element = document.createElement(tag);
    Object.assign(element, props || {});
    for (const child of children) {
      if (child !== null && child !== undefined) element.append(child);
    }
    return element;
  }

  // -- the connection --------------------------------------------------------------------------

  let socket = null;
  let attempt = 0;
  let silence = null;
  let lastMessage = null;

  function liveUrl() {
    const url = new URL("api/live", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function connect() {
    const ws = new WebSocket(liveUrl());
    socket = ws;
    ws.onmessage = (message) => {
      attempt = 0;
      lastMessage = new Date();
      linked(true);
      listen(ws);
      apply(JSON.parse(message.data));
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      clearTimeout(silence);
      linked(false);
      attempt += 1;
      setTimeout(connect, Math.min(5000, 500 * attempt));
    };
    ws.onerror = () => ws.close();
  }

  function listen(ws) {
    clearTimeout(silence);
    silence = setTimeout(() => ws.close(), SILENCE); // the bridge sends at least every 10 s
  }

  function linked(live) {
    const link = $("link");
    if (live) {
      link.dataset.link = "live";
      link.textContent = "Live";
      $("lost").hidden = true;
      $("main").classList.remove("stale");
      $("main").setAttribute("aria-busy", "false");
    } else if (lastMessage !== null) {
      link.dataset.link = "lost";
      link.textContent = "Reconnecting…";
      $("lost").hidden = false;
      $("lost-detail").textContent =
        `This page tries again by itself; what it shows is as of ${clock.format(lastMessage)}.`;
      $("main").classList.add("stale");
    }
  }

  // -- messages --------------------------------------------------------------------------------

  function apply(message) {
    if (message.type === "snapshot") {
      view.people.clear();
      view.sightings.clear();
    }
    if (message.bridge) {
      view.bridge = message.bridge;
      drawBridge();
    }
    if (message.cameras) {
      view.cameras = message.cameras;
      drawCameras();
    }
    if (message.forgotten) forget(new Set(message.forgotten)); // before people who came back
    if (message.people) {
      for (const person of message.people) view.people.set(person.name, person);
      drawPeople();
    }
    if (message.sightings) {
      for (const sighting of message.sightings) view.sightings.set(sighting.seq, sighting);
      drawSightings(message.type === "update" ? new Set(message.sightings.map((s) => s.seq)) : new Set());
    }
    if (message.chart) {
      view.chart = message.chart;
      drawChart();
    }
    if (message.cameras || message.people) drawFilters();
    $("updated").textContent = `Updated ${clock.format(new Date())}`;
  }

  // The bridge forgot these people (docs/privacy.md): gone from the people and the sightings
  // (the cameras' lists of who is in view come anew in the same update).
  function forget(gone) {
    for (const name of gone) view.people.delete(name);
    for (const [seq, sighting] of view.sightings) if (gone.has(sighting.person)) view.sightings.delete(seq);
    drawPeople();
    drawFilters(); // first: a person filter set to one of them shows everyone again
    drawSightings(new Set());
  }

  // -- the bridge ------------------------------------------------------------------------------

  function drawBridge() {
    const bridge = view.bridge;
    const state = $("state");
    state.dataset.state = bridge.state;
    $("state-word").textContent = bridge.state;
    state.title = `The bridge is ${bridge.state.toLowerCase()}`;

    const problems = $("problems");
    problems.dataset.state = bridge.state;
    problems.replaceChildren(
      ...bridge.problems.map((problem) =>
        el("li", {}, problem.text, problem.since ? el("span", { className: "since" }, " Since ", agoElement(problem.since), ".") : null),
      ),
    );
    $("all-well").hidden = !(bridge.problems.length === 0 && bridge.state === "RUNNING");

    drawBackfill(bridge.backfill);

    const facts = [];
    for (const [name, source] of Object.entries(bridge.api)) {
      const value = el("dd", {});
      if (source.state === "stopped") value.append("The API asks the bridge to wait: ", source.stop_reply || "");
      else if (source.last_poll) value.append("last good poll ", agoElement(source.last_poll));
      else value.append("no answer yet");
      if (source.last_error) {
        value.append(el("div", { className: "error" }, "last error ", agoElement(source.last_error_at), ": ", source.last_error));
      }
      facts.push(el("dt", {}, SOURCE_NAMES[name] || name), value);
    }
    $("api").replaceChildren(...facts);

    const rows = Object.entries(bridge.sinks).map(([name, sink]) => {
      const state = el("span", { className: "status-dot" }, sink.connected ? "Delivering" : "Not delivering");
      state.dataset.ok = String(sink.connected);
      const first = el("td", {}, el("strong", {}, SINK_NAMES[name] || name));
      if (sink.last_error) first.append(el("div", { className: "error" }, ago(sink.last_error_at), ": ", sink.last_error));
      return el(
        "tr",
        {},
        first,
        el("td", {}, state),
        el("td", { className: "num" }, number.format(sink.acknowledged)),
        el("td", { className: "num" }, number.format(sink.in_flight)),
        el("td", { className: "num" }, number.format(sink.failed)),
      );
    });
    $("sinks").tBodies[0].replaceChildren(...rows);
  }

  function drawBackfill(backfill) {
    const box = $("backfill");
    box.hidden = !backfill || backfill.done;
    if (box.hidden) return;
    const from = new Date(backfill.from);
    const to = new Date(backfill.to);
    $("backfill-range").textContent = `${day.format(from)} → ${day.format(to)}`;
    const bar = $("backfill-bar");
    bar.value = backfill.progress;
    const percent = `${Math.floor(backfill.progress * 100)} %`;
    bar.textContent = percent;
    const parts = [percent];
    parts.push(backfill.rate === null ? "measuring the rate…" : `${number.format(Math.round(backfill.rate))} events/s`);
    if (backfill.seconds_left !== null) parts.push(`about ${duration(backfill.seconds_left)} left`);
    $("backfill-pace").textContent = parts.join(" · ");
  }

  // -- cameras ---------------------------------------------------------------------------------

  function drawCameras() {
    const cards = Object.entries(view.cameras).sort(([a], [b]) => byName(a, b)).map(([name, camera]) => {
      const card = el("article", { className: "camera-card" });
      card.dataset.camera = name;
      card.append(el("h3", {}, name));
      const count = el("p", { className: "count" }, el("strong", { className: "last-hour" }, number.format(camera.last_hour)), "in the last hour");
      card.append(count);
      if (camera.in_view.length) {
        const chips = el("ul", { className: "chips" });
        chips.setAttribute("aria-label", `In view at ${name}`);
        chips.append(...camera.in_view.map((person) => el("li", {}, person)));
        card.append(chips);
      } else {
        card.append(el("p", { className: "nobody" }, "Nobody in view"));
      }
      const checkpoint = el("p", { className: "checkpoint" });
      if (camera.position) checkpoint.append("Checkpoint ", timeElement(camera.position));
      else checkpoint.append("No checkpoint yet");
      if (camera.lag_seconds !== null) checkpoint.append(` · lag ${duration(camera.lag_seconds)}`);
      card.append(checkpoint);
      return card;
    });
    $("camera-list").replaceChildren(...cards);
  }

  // -- people ----------------------------------------------------------------------------------

  function drawPeople() {
    const people = [...view.people.values()].sort(
      (a, b) => Number(b.home) - Number(a.home) || (b.seen_at || "").localeCompare(a.seen_at || "") || byName(a.name, b.name),
    );
    const rows = people.map((person) => {
      const where = el("span", { className: "where" }, person.home ? "Home" : "Away");
      where.dataset.home = String(person.home);
      const whereCell = el("td", {}, where);
      if (person.cameras.length) whereCell.append(el("div", { className: "muted small" }, `in view at ${person.cameras.join(", ")}`));
      const seen = el("td", {});
      if (person.seen_at) seen.append(person.camera, " · ", agoElement(person.seen_at));
      else seen.append(el("span", { className: "muted" }, "not seen yet"));
      const row = el("tr", {}, el("td", { className: "person-name" }, person.name), whereCell, seen);
      row.dataset.person = person.name;
      return row;
    });
    $("people-table").tBodies[0].replaceChildren(...rows);
    $("people-empty").hidden = rows.length > 0;
  }

  // -- recent sightings ------------------------------------------------------------------------

  function drawFilters() {
    const cameras = new Set(Object.keys(view.cameras));
    for (const sighting of view.sightings.values()) cameras.add(sighting.camera);
    const people = new Set(view.people.keys());
    for (const sighting of view.sightings.values()) people.add(sighting.person);
    fill($("filter-camera"), cameras, "All cameras");
    fill($("filter-person"), people, "Everyone");
  }

  function fill(select, names, everyone) {
    const chosen = select.value;
    const sorted = [...names].sort(byName);
    const now = [...select.options].slice(1).map((option) => option.value);
    if (now.length === sorted.length && now.every((name, i) => name === sorted[i])) return;
    select.replaceChildren(el("option", { value: "" }, everyone), ...sorted.map((name) => el("option", { value: name }, name)));
    select.value = sorted.includes(chosen) ? chosen : "";
  }

  function newestFirst(a, b) {
    return b.seen_at.localeCompare(a.seen_at) || b.seq - a.seq;
  }

  function drawSightings(fresh) {
    const all = [...view.sightings.values()].sort(newestFirst);
    for (const old of all.slice(KEEP)) view.sightings.delete(old.seq);
    const camera = $("filter-camera").value;
    const person = $("filter-person").value;
    const shown = all.slice(0, KEEP).filter((s) => (!camera || s.camera === camera) && (!person || s.person === person));
    const items = shown.map((sighting) => {
      const item = el(
        "li",
        { className: fresh.has(sighting.seq) ? "fresh" : "" },
        timeElement(sighting.seen_at),
        el("span", { className: "who" }, el("strong", { className: "person" }, sighting.person), " ", el("span", { className: "at" }, `at ${sighting.camera}`)),
        agoElement(sighting.seen_at),
      );
      item.dataset.camera = sighting.camera;
      item.dataset.person = sighting.person;
      item.dataset.seenAt = sighting.seen_at;
      return item;
    });
    $("sightings-list").replaceChildren(...items);
    const kept = Math.min(all.length, KEEP);
    $("sightings-count").textContent =
      camera || person ? `${shown.length} of the last ${kept} sightings` : `The last ${kept} sightings, newest first`;
  }

  // -- the chart -------------------------------------------------------------------------------

  let plot = null;
  let plotShape = ""; // cameras, width and theme of the drawn plot: another one is drawn anew

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function drawChart() {
    const chart = view.chart;
    const cameras = Object.keys(chart.cameras).sort(byName);
    const xs = chart.hours.map((hour) => Date.parse(hour) / 1000 + 1800); // bars at the hour's middle
    drawChartTable(chart, cameras);
    if (typeof uPlot === "undefined") return;
    // Stacked bars: each camera's bar is drawn as the running total up to it, the tallest first.
    const totals = [];
    let running = xs.map(() => 0);
    cameras.forEach((camera) => {
      running = running.map((sum, i) => sum + chart.cameras[camera][i]);
      totals.push(running);
    });
    const order = cameras.map((_, i) => cameras.length - 1 - i);
    const data = [xs, ...order.map((i) => totals[i])];
    const container = $("chart-plot");
    const width = Math.max(260, container.clientWidth);
    const grid = { stroke: cssVar("--line"), width: 1 };
    const axis = { stroke: cssVar("--muted"), grid, ticks: grid };
    const options = {
      width,
      height: 240,
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      legend: { live: true },
      scales: { x: { time: true, range: (u, min, max) => [min - 1800, max + 1800] }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      axes: [axis, { ...axis, size: 48 }],
      series: [
        { label: "Hour", value: (u, v) => (v === null ? "–" : day.format(new Date((v - 1800) * 1000))) },
        ...order.map((i) => ({
          label: cameras[i],
          stroke: PALETTE[i % PALETTE.length],
          fill: PALETTE[i % PALETTE.length],
          width: 0,
          points: { show: false },
          paths: uPlot.paths.bars({ size: [0.8, 60] }),
          value: (u, v, seriesIndex, index) => (index === null ? "–" : number.format(view.chart.cameras[cameras[i]][index])),
        })),
      ],
    };
    const shape = `${cameras.join("\u0000")}|${width}|${cssVar("--line")}`;
    if (plot && plotShape === shape) {
      plot.setData(data);
      return;
    }
    if (plot) plot.destroy();
    plot = new uPlot(options, data, container);
    plotShape = shape;
  }

  function drawChartTable(chart, cameras) {
    const table = $("chart-table");
    table.tHead.replaceChildren(el("tr", {}, el("th", { scope: "col" }, "Hour"), ...cameras.map((camera) => el("th", { scope: "col", className: "num" }, camera)), el("th", { scope: "col", className: "num" }, "All")));
    const rows = chart.hours.map((hour, index) => {
      const cells = cameras.map((camera) => {
        const cell = el("td", { className: "num" }, number.format(chart.cameras[camera][index]));
        cell.dataset.camera = camera;
        cell.dataset.count = chart.cameras[camera][index];
        return cell;
      });
      const sum = cameras.reduce((total, camera) => total + chart.cameras[camera][index], 0);
      const row = el("tr", {}, el("th", { scope: "row" }, timeElement(hour)), ...cells, el("td", { className: "num" }, number.format(sum)));
      row.dataset.hour = hour;
      return row;
    });
    table.tBodies[0].replaceChildren(...rows.reverse());
  }

  // -- start -----------------------------------------------------------------------------------

  $("filter-camera").addEventListener("change", () => drawSightings(new Set()));
  $("filter-person").addEventListener("change", () => drawSightings(new Set()));
  setInterval(() => {
    for (const element of document.querySelectorAll("[data-ago]")) element.textContent = ago(element.dataset.ago);
  }, 5000);
  let resizing = null;
  new ResizeObserver(() => {
    clearTimeout(resizing);
    resizing = setTimeout(() => view.chart && drawChart(), 150);
  }).observe($("chart"));
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => view.chart && drawChart());
  connect();
})();
