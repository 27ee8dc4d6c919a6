// The Roadside console's own script: local times, the traffic chart, the live event list.
// No inline scripts anywhere (the Content-Security-Policy forbids them).
(function () {
  "use strict";
  var timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit"
  });

  function ago(when) {
    var s = Math.max(0, Math.round((Date.now() - when.getTime()) / 1000));
    if (s < 90) { return s + " s ago"; }
    if (s < 5400) { return Math.round(s / 60) + " min ago"; }
    return timeFormat.format(when);
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when)) { return; }
      el.title = el.getAttribute("datetime");
      el.textContent = el.hasAttribute("data-relative") ? ago(when) : timeFormat.format(when);
    });
    document.querySelectorAll("[data-tz]").forEach(function (el) {
      el.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    });
  }

  function drawChart() {
    var target = document.getElementById("chart");
    var source = document.getElementById("chart-data");
    if (!target || !source || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var xs = data.t.map(function (iso) { return Date.parse(iso) / 1000; });
    var width = Math.max(280, target.clientWidth);
    var opts = {
      width: width, height: 260,
      series: [{}, { label: "crossings", stroke: "#0b5cad", fill: "rgba(11,92,173,0.12)", width: 2,
                     paths: uPlot.paths.stepped({ align: 1 }) }],
      axes: [{}, { label: "per bucket" }],
      scales: { x: { time: true, range: [Date.parse(data.from) / 1000, Date.parse(data.to) / 1000] } }
    };
    var plot = new uPlot(opts, [xs, data.n], target);
    target.dataset.points = String(xs.length);
    target.dataset.total = String(data.n.reduce(function (a, b) { return a + b; }, 0));
    window.addEventListener("resize", function () { plot.setSize({ width: Math.max(280, target.clientWidth), height: 260 }); });
  }

  // The device page: one small chart per health quantity (their units differ), gaps where a report lacks one.
  function drawHealth() {
    var target = document.getElementById("health-charts");
    var source = document.getElementById("health-data");
    if (!target || !source || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(source.textContent);
    var xs = data.t.map(function (iso) { return Date.parse(iso) / 1000; });
    var range = [Date.parse(data.from) / 1000, Date.parse(data.to) / 1000];
    var plots = [];
    var reported = function (s) { return s.values.some(function (v) { return v != null; }); };
    // Quantities the device reports first; the ones it cannot read (no chart) after them.
    data.series.filter(reported).concat(data.series.filter(function (s) { return !reported(s); })).forEach(function (s) {
      var box = document.createElement("figure");
      box.className = "small-chart";
      var caption = document.createElement("figcaption");
      var known = s.values.filter(function (v) { return v != null; });
      caption.textContent = s.label + " (" + s.unit + ")" +
        (known.length ? ": latest " + Number(known[known.length - 1].toPrecision(4)) : ": not reported");
      box.setAttribute("role", "img");
      box.setAttribute("aria-label", caption.textContent);
      box.appendChild(caption);
      target.appendChild(box);
      if (!known.length) { return; }
      var opts = {
        width: Math.max(260, box.clientWidth), height: 140, legend: { show: false },
        series: [{}, { label: s.label, stroke: "#0b5cad", width: 2, spanGaps: false }],
        axes: [{}, { size: 50 }],
        scales: { x: { time: true, range: range } }
      };
      plots.push([box, new uPlot(opts, [xs, s.values], box)]);
    });
    target.dataset.charts = String(plots.length);
    window.addEventListener("resize", function () {
      plots.forEach(function (p) { p[1].setSize({ width: Math.max(260, p[0].clientWidth), height: 140 }); });
    });
  }

  function cell(text) { var td = document.createElement("td"); td.textContent = text == null ? "" : String(text); return td; }

  function liveEvents() {
    var state = document.getElementById("live-state");
    var table = document.getElementById("events");
    if (!state || !table || typeof EventSource === "undefined") { return; }
    var body = table.tBodies[0];
    var source = new EventSource(state.dataset.stream);
    source.onopen = function () { state.textContent = "Live: new events appear at the top as they arrive."; };
    source.onerror = function () { state.textContent = "Live updates paused; reconnecting…"; };
    source.onmessage = function (message) {
      var e = JSON.parse(message.data);
      var row = document.createElement("tr");
      row.className = "fresh";
      var time = document.createElement("time");
      time.setAttribute("datetime", e.ts);
      var first = document.createElement("td");
      first.appendChild(time);
      row.appendChild(first);
      [e.type, e.device, e.site, e.cls, e.line, e.direction,
       e.speed_kmh == null ? "" : Math.round(e.speed_kmh),
       e.confidence == null ? "" : e.confidence.toFixed(2)].forEach(function (v) { row.appendChild(cell(v)); });
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > 500) { body.deleteRow(body.rows.length - 1); }
      var none = document.getElementById("no-events");
      if (none) { none.remove(); }
      localTimes(row);
    };
  }

  // The signal page: each channel's call as the hub sends it (SSE "call" events, the API's stream).
  function liveCalls() {
    var state = document.getElementById("calls-state");
    var table = document.getElementById("channels");
    if (!state || !table || typeof EventSource === "undefined") { return; }
    var source = new EventSource(state.dataset.stream);
    source.onopen = function () { state.textContent = "Live: calls appear as the hub sends them."; };
    source.onerror = function () { state.textContent = "Live calls paused; reconnecting…"; };
    source.addEventListener("call", function (message) {
      var c = JSON.parse(message.data);
      var row = table.querySelector('tr[data-channel="' + c.channel + '"]');
      if (!row) { return; }
      var call = row.querySelector(".call");
      call.textContent = (c.called ? "called" : "no call") + " (" + c.state + ")";
      call.className = "call " + (c.called ? "called" : "idle");
      var time = document.createElement("time");
      time.setAttribute("datetime", c.captured_at);
      time.setAttribute("data-relative", "");
      var when = row.querySelector(".when");
      when.textContent = "";
      when.appendChild(time);
      localTimes(row);
      row.dataset.calls = String(Number(row.dataset.calls || 0) + 1);
    });
    source.addEventListener("phases", function (message) { showPhases(JSON.parse(message.data)); });
  }

  // Every phase's interval, as the signal's stream sends them when they change.
  function showPhases(phases) {
    var box = document.getElementById("phases");
    if (!box) { return; }
    box.textContent = "";
    if (!phases.length) {
      var none = document.createElement("p");
      none.className = "empty";
      none.textContent = "No phase events in the last 10 minutes.";
      box.appendChild(none);
      return;
    }
    var wrap = document.createElement("div");
    wrap.className = "scroll";
    wrap.tabIndex = 0;
    var table = document.createElement("table");
    table.id = "phase-table";
    var head = table.createTHead().insertRow();
    ["Phase", "Interval", "Since", "Call registered"].forEach(function (label) {
      var th = document.createElement("th");
      th.scope = "col";
      th.textContent = label;
      head.appendChild(th);
    });
    var body = table.createTBody();
    phases.forEach(function (p) {
      var row = body.insertRow();
      row.dataset.phase = String(p.phase);
      row.insertCell().textContent = String(p.phase);
      var light = document.createElement("span");
      light.className = "signal-light " + p.interval.replace(/ /g, "-");
      light.textContent = p.interval;
      row.insertCell().appendChild(light);
      var time = document.createElement("time");
      time.setAttribute("datetime", p.since);
      row.insertCell().appendChild(time);
      row.insertCell().textContent = p.called ? "yes" : "no";
    });
    wrap.appendChild(table);
    box.appendChild(wrap);
    localTimes(box);
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    drawChart();
    drawHealth();
    liveEvents();
    liveCalls();
    document.body.dataset.ready = "true";
  });
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
})();
