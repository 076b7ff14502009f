// turnbench per-turn viewer: starts the wasm query engine from the bytes carried in a classic
// script, loads the data scripts' column chunks into it, and keeps the controls, the URL hash,
// the table and the plotly chart in step. Every string from the data is written with
// textContent (never innerHTML); strings handed to plotly are entity-escaped.
(function () {
  "use strict";
  var timings = { start_ms: performance.now() };
  var api = { timings: timings };
  window.TURNBENCH_VIEWER = api;

  var $ = function (id) { return document.getElementById(id); };
  var statusEl = $("viewer-status");
  var SINGLE = ["metric", "agg", "group", "series", "chart", "error"];
  var MULTI = ["run", "gpu", "cache_mode", "concurrency", "finish_reason"];
  var RANGES = ["traj", "turn"];
  var NUMERIC_DIMS = { turn: 1, concurrency: 1, traj: 1, t_send: 1 };

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.className = isError ? "error" : "";
  }

  function bytesOfBase64(b64) {
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function errorText(e) {
    return e && e.message ? e.message : String(e);
  }

  var viewer, options;
  try {
    wasm_bindgen.initSync({ module: bytesOfBase64(window.TURNBENCH_VIEWER_WASM) });
    window.TURNBENCH_VIEWER_WASM = null;
    var loader = new wasm_bindgen.ViewerLoader(window.TURNBENCH_VIEWER_META);
    var chunks = window.TURNBENCH_VIEWER_CHUNKS || [];
    for (var i = 0; i < chunks.length; i++) {
      loader.add_chunk(chunks[i][0], chunks[i][1], chunks[i][2]);
      chunks[i] = null;
    }
    window.TURNBENCH_VIEWER_CHUNKS = null;
    viewer = loader.finish();
    options = JSON.parse(viewer.options());
  } catch (e) {
    setStatus("The viewer could not start: " + errorText(e), true);
    return;
  }
  timings.ready_ms = performance.now();
  api.viewer = viewer;

  // ---- controls -------------------------------------------------------------------------

  function fillSelect(select, choices, withNone) {
    if (withNone) select.appendChild(new Option("(none)", ""));
    choices.forEach(function (c) {
      var opt = new Option(c.label, c.key);
      select.appendChild(opt);
    });
  }
  fillSelect($("ctl-metric"), options.metrics);
  fillSelect($("ctl-agg"), options.aggs);
  fillSelect($("ctl-group"), options.dims);
  fillSelect($("ctl-series"), options.dims, true);
  fillSelect($("ctl-chart"), options.charts);
  MULTI.forEach(function (key) { fillSelect($("ctl-" + key), options[key]); });
  $("viewer-controls").hidden = false;

  var LANDING = "metric=ttft&agg=p50&group=turn&series=cache_mode";
  // Of one run where the site has several (the page names which).
  var landingRun = $("viewer-controls").getAttribute("data-landing-run");
  if (landingRun !== null) LANDING += "&" + new URLSearchParams({ run: landingRun }).toString();
  var DEFAULTS = { metric: "ttft", agg: "p50", group: "turn", series: "", chart: "line", error: "" };

  // Controls → hash (form-encoded, the record's own field names and raw values).
  function hashOfControls() {
    var p = new URLSearchParams();
    SINGLE.forEach(function (key) {
      var v = $("ctl-" + key).value;
      // metric, aggregate and group always; the others only when not their default.
      if (["metric", "agg", "group"].indexOf(key) >= 0 || v !== DEFAULTS[key]) p.append(key, v);
    });
    MULTI.forEach(function (key) {
      Array.prototype.forEach.call($("ctl-" + key).options, function (o) {
        if (o.selected) p.append(key, o.value);
      });
    });
    RANGES.forEach(function (key) {
      $("ctl-" + key).value.split(",").forEach(function (r) {
        r = r.trim();
        if (r !== "") p.append(key, r);
      });
    });
    return p.toString();
  }

  // Hash → controls.
  function syncControls(hash) {
    var p = new URLSearchParams(hash);
    SINGLE.forEach(function (key) {
      var el = $("ctl-" + key);
      // The last of a repeated key, as the engine reads it (`Query::parse`).
      el.value = p.has(key) ? p.getAll(key).pop() : DEFAULTS[key];
      if (el.selectedIndex < 0) el.value = DEFAULTS[key];
    });
    // A series equal to the grouping is no split (`Query::parse` drops it).
    if ($("ctl-series").value === $("ctl-group").value) $("ctl-series").value = "";
    // Filter values of the link that the data does not have (they match nothing).
    var unknown = [];
    MULTI.forEach(function (key) {
      var want = p.getAll(key);
      var have = [];
      Array.prototype.forEach.call($("ctl-" + key).options, function (o) {
        o.selected = want.indexOf(o.value) >= 0;
        have.push(o.value);
      });
      want.forEach(function (v) { if (have.indexOf(v) < 0) unknown.push(key + "=" + v); });
    });
    RANGES.forEach(function (key) { $("ctl-" + key).value = p.getAll(key).join(", "); });
    return unknown;
  }

  function currentHash() {
    return location.hash.replace(/^#/, "");
  }

  $("viewer-controls").addEventListener("change", function () {
    var hash = hashOfControls();
    if (hash === currentHash()) render();
    else location.hash = hash;
  });
  $("viewer-controls").addEventListener("submit", function (e) { e.preventDefault(); });

  // ---- rendering ------------------------------------------------------------------------

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (Number.isInteger(v)) return String(v);
    return String(Number(v.toPrecision(5)));
  }

  // Plotly reads a subset of HTML in labels: escape what comes from the data.
  function plotlyText(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function cell(tr, text, attrs) {
    var td = document.createElement("td");
    td.textContent = text;
    if (attrs) Object.keys(attrs).forEach(function (k) { td.setAttribute(k, attrs[k]); });
    tr.appendChild(td);
    return td;
  }

  function headerRow(table, names) {
    var thead = document.createElement("thead");
    var tr = document.createElement("tr");
    names.forEach(function (n) {
      var th = document.createElement("th");
      th.textContent = n;
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    table.appendChild(thead);
  }

  // The table shows this many rows at most (thousands of <tr> would freeze the page); the
  // chart and the CSV keep every row.
  var TABLE_ROWS = 1000;

  function tableNote() {
    var note = $("view-table-note");
    if (!note) {
      note = document.createElement("p");
      note.id = "view-table-note";
      note.className = "note";
      $("view-table").parentNode.insertBefore(note, $("view-table"));
    }
    return note;
  }

  // "p50 of TTFT (s)"; a count has no unit: "count of TTFT".
  function aggLabel(view) {
    var metric = view.agg === "count" ? view.metric_label.replace(/ \([^()]*\)$/, "") : view.metric_label;
    return view.agg + " of " + metric;
  }

  function renderTable(view) {
    var table = $("view-table");
    table.textContent = "";
    var names = [view.group_label];
    if (view.series) names.push(view.series_label);
    names.push(aggLabel(view), "records used", "skipped");
    headerRow(table, names);
    var tbody = document.createElement("tbody");
    var shown = Math.min(view.length, TABLE_ROWS);
    for (var i = 0; i < shown; i++) {
      var r = view.row(i);
      var tr = document.createElement("tr");
      tr.setAttribute("data-group", r.group);
      if (view.series) tr.setAttribute("data-series", r.series);
      tr.setAttribute("data-row", String(i));
      cell(tr, r.group_label, { "class": "text" });
      if (view.series) cell(tr, r.series_label, { "class": "text" });
      cell(tr, fmt(r.value), { "data-value": r.value === null ? "" : String(r.value), "class": "value" });
      cell(tr, String(r.n), { "data-col": "n" });
      cell(tr, String(r.skipped), { "data-col": "skipped" });
      tbody.appendChild(tr);
    }
    tbody.addEventListener("click", function (e) {
      var tr = e.target.closest("tr[data-row]");
      if (tr) showRow(view, Number(tr.getAttribute("data-row")));
    });
    table.appendChild(tbody);
    var note = tableNote();
    note.hidden = shown === view.length;
    note.textContent = note.hidden ? "" : "The table shows the first " + shown + " of " + view.length +
      " rows; the chart and the CSV download have all of them.";
    note.setAttribute("data-rows", String(view.length));
    var skipped = view.skipped_error + view.skipped_missing;
    $("view-skipped").textContent = skipped + " skipped (" + view.skipped_error + " failed, " +
      view.skipped_missing + " without " + view.metric + ") of " + view.matched +
      " matching records; " + view.used + " aggregated.";
    if (view.matched === 0) {
      $("view-skipped").textContent = "No records match these filters.";
    }
    $("view-skipped").setAttribute("data-skipped", String(skipped));
  }

  // The row indices of each series, in order of first appearance (by series code), read
  // from the view's columns (no row objects: a view can have tens of thousands of rows).
  function seriesOf(view) {
    var order = [], by = {}, sk = view.cols.series, n = view.length;
    for (var i = 0; i < n; i++) {
      var key = view.series ? sk[i] : 0;
      var s = by[key];
      if (s === undefined) {
        var r = view.row(i);
        s = by[key] = { key: view.series ? r.series : "", label: view.series ? r.series_label : view.metric_label, index: [] };
        order.push(key);
      }
      s.index.push(i);
    }
    return order.map(function (k) { return by[k]; });
  }

  function showRow(view, i) {
    if (!(i >= 0 && i < view.length)) return;
    var r = view.row(i);
    showRecords(r.group, view.series ? r.series : null, r.group_label, r.series_label);
  }

  var MARKER_LIMIT = 1000;
  // Group dimensions whose values are whole numbers.
  var INTEGER_DIMS = { concurrency: 1, turn: 1, traj: 1 };

  // The x values of `traces` as ticks, for a whole-number dimension with at most 20 of them.
  function integerTicks(dim, traces) {
    if (!INTEGER_DIMS[dim]) return undefined;
    var seen = {};
    traces.forEach(function (t) { (t.x || []).forEach(function (x) { seen[x] = Number(x); }); });
    var xs = Object.keys(seen).map(function (k) { return seen[k]; }).filter(function (x) { return isFinite(x); });
    if (xs.length === 0 || xs.length > 20) return undefined;
    return xs.sort(function (a, b) { return a - b; });
  }
  // A trace per series: beyond this many, plotly takes minutes (and a shared link would
  // freeze whoever opens it), so the chart gives way to the table and the CSV.
  // (A property of the page's API, so tests can lower it.)
  api.seriesLimit = 50;

  function chartMessage(text) {
    var el = $("view-chart");
    if (typeof Plotly !== "undefined" && el.data) Plotly.purge(el);
    el.textContent = text;
  }

  function renderChart(view) {
    if (view.length === 0) {
      chartMessage("No records match these filters.");
      return;
    }
    var series = seriesOf(view);
    if (series.length > api.seriesLimit) {
      chartMessage("Not drawn: " + series.length + " series (at most " + api.seriesLimit +
        " are drawn). Split by fewer values, or filter; the table and the CSV have every row.");
      return;
    }
    var numeric = NUMERIC_DIMS[view.group] === 1;
    var step = view.group_codes.step;
    var c = view.cols, g = c.g;
    var xOf = function (i) { return numeric ? c.group[i] * step : plotlyText(g.label(c.group[i])); };
    var valueOf = function (i) { var v = c.value[i]; return v !== v ? null : v; };
    // Box statistics of row i: min, q1, median, q3, max at dist[5i …] (NaN: none).
    var d = c.dist;
    var hasDist = function (i) { return d.length > 0 && d[5 * i] === d[5 * i]; };
    var traces = [];
    // plotly's default colours, so a series' box and its median marker share one.
    var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
    if (!$("view-chart").data) $("view-chart").textContent = "";
    series.forEach(function (s, si) {
      var color = palette[si % palette.length];
      var name = plotlyText(s.label);
      // A point's customdata is its row's index in the view.
      if (view.chart === "box") {
        var rows = s.index.filter(hasDist);
        traces.push({
          type: "bar", name: name + " (p25–p75)", legendgroup: name, offsetgroup: s.key,
          x: rows.map(xOf), base: rows.map(function (i) { return d[5 * i + 1]; }),
          y: rows.map(function (i) { return d[5 * i + 3] - d[5 * i + 1]; }),
          customdata: rows,
          marker: { color: color }, opacity: 0.5
        });
        traces.push({
          type: "scatter", mode: "markers", name: name + " (median, min–max)", legendgroup: name, offsetgroup: s.key,
          x: rows.map(xOf), y: rows.map(function (i) { return d[5 * i + 2]; }), marker: { color: color },
          error_y: { type: "data", symmetric: false,
            array: rows.map(function (i) { return d[5 * i + 4] - d[5 * i + 2]; }),
            arrayminus: rows.map(function (i) { return d[5 * i + 2] - d[5 * i]; }), color: color },
          customdata: rows
        });
      } else {
        traces.push({
          type: view.chart === "bar" ? "bar" : "scatter",
          // Thousands of SVG markers are slow to draw; the line alone carries the shape. Named
          // groups (GPU, cache mode, run…) have no order between them: points, no line.
          mode: !numeric ? "markers" : s.index.length > MARKER_LIMIT ? "lines" : "lines+markers", name: name,
          x: s.index.map(xOf), y: s.index.map(valueOf),
          marker: { color: color }, line: { color: color },
          customdata: s.index
        });
      }
    });
    var layout = {
      margin: { t: 30, r: 20, b: 50, l: 70 },
      barmode: "group",
      // Side by side for box and bar charts only: lines keep each point at its true x.
      scattermode: view.chart === "box" ? "group" : "overlay",
      xaxis: {
        title: { text: plotlyText(view.group_label) }, type: numeric ? "linear" : "category",
        // Whole-number dimensions (concurrency, turn index) are ticked at their values, not
        // at plotly's fractions between them (when there are few enough to label).
        tickvals: integerTicks(view.group, traces)
      },
      yaxis: { title: { text: plotlyText(view.chart === "box" ? view.metric_label : aggLabel(view)) } },
      showlegend: traces.length > 1,
      hovermode: "closest"
    };
    var el = $("view-chart");
    if (typeof Plotly === "undefined") {
      el.textContent = "plotly.js did not load; the table below has the numbers.";
      return;
    }
    Plotly.react(el, traces, layout, { displaylogo: false, responsive: true });
    if (!el.dataset.clickBound) {
      el.on("plotly_click", function (ev) {
        var d = ev.points && ev.points[0] && ev.points[0].customdata;
        if (typeof d === "number" && api.view) showRow(api.view, d);
      });
      el.dataset.clickBound = "1";
    }
  }

  var RECORD_COLUMNS = ["run", "gpu", "cache_mode", "concurrency", "traj", "traj_id", "turn", "t_send",
    "ttft", "server_ttft", "e2e", "itl_mean", "itl_p99", "prompt_tokens", "cached_tokens", "completion_tokens",
    "think_time", "retractions", "finish_reason", "error"];
  var TEXT_COLUMNS = { run: 1, gpu: 1, cache_mode: 1, traj_id: 1, finish_reason: 1, error: 1 };

  function showRecords(group, series, groupLabel, seriesLabel) {
    var res;
    try {
      res = JSON.parse(viewer.records(currentHash(), group, series, 100));
    } catch (e) {
      setStatus(errorText(e), true);
      return;
    }
    $("records").hidden = false;
    $("records-point").textContent = groupLabel + (series !== null && series !== undefined ? " · " + seriesLabel : "");
    $("records-note").textContent = "Showing " + res.rows.length + " of " + res.total + " records (filters applied, failed turns included).";
    var table = $("records-table");
    table.textContent = "";
    headerRow(table, RECORD_COLUMNS);
    var tbody = document.createElement("tbody");
    res.rows.forEach(function (rec) {
      var tr = document.createElement("tr");
      RECORD_COLUMNS.forEach(function (c) {
        var v = rec[c];
        var text = v === null || v === undefined ? "—" : (typeof v === "number" ? fmt(v) : String(v));
        var td = cell(tr, text, TEXT_COLUMNS[c] ? { "class": "text", title: text } : null);
        if (typeof v === "number") td.setAttribute("data-value", String(v));
      });
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
  }

  // Raw value and label of each code of a dimension: numbers (`code × step`; time buckets
  // labelled with their span) or the engine's dictionary.
  function codeText(dim, codes, bucketS) {
    if (codes.step === null) {
      return {
        raw: function (k) { return codes.dict[k][0]; },
        label: function (k) { return codes.dict[k][1]; }
      };
    }
    var raw = function (k) { return String(k * codes.step); };
    return {
      raw: raw,
      label: dim === "t_send" ? function (k) { return raw(k) + "–" + (k * codes.step + bucketS) + " s"; } : raw
    };
  }

  // Run the query of `hash` in the engine: its header as JSON, its per-group numbers as typed
  // arrays, turned into the rows the table and the chart read.
  function runQuery(hash) {
    var cols = viewer.query_columns(hash);
    var view, group, series, value, n, skipped, dist;
    try {
      view = JSON.parse(cols.header());
      group = cols.group();
      series = cols.series();
      value = cols.value();
      n = cols.n();
      skipped = cols.skipped();
      dist = cols.dist();
    } finally {
      cols.free();
    }
    var g = codeText(view.group, view.group_codes, view.bucket_s);
    var s = view.series ? codeText(view.series, view.series_codes, view.bucket_s) : null;
    // A row holds its index only: its numbers are read from the typed arrays and its strings
    // made when read; rows are only made for what the table shows and for clicked points.
    function Row(i) {
      this.index = i;
    }
    Object.defineProperties(Row.prototype, {
      gk: { get: function () { return group[this.index]; } },
      sk: { get: function () { return series[this.index]; } },
      value: { get: function () { var v = value[this.index]; return v !== v ? null : v; } },
      n: { get: function () { return n[this.index]; } },
      skipped: { get: function () { return skipped[this.index]; } },
      dist: {
        get: function () {
          var j = 5 * this.index;
          if (!dist.length || dist[j] !== dist[j]) return undefined;
          return { min: dist[j], q1: dist[j + 1], median: dist[j + 2], q3: dist[j + 3], max: dist[j + 4] };
        }
      },
      group: { get: function () { return g.raw(this.gk); } },
      group_label: { get: function () { return g.label(this.gk); } },
      series: { get: function () { return s ? s.raw(this.sk) : undefined; } },
      series_label: { get: function () { return s ? s.label(this.sk) : undefined; } }
    });
    // Rows are made when read: the table reads its first rows, the chart reads the columns.
    view.cols = { group: group, series: series, value: value, dist: dist, g: g };
    view.length = group.length;
    view.row = function (i) { return new Row(i); };
    var all = null;
    Object.defineProperty(view, "rows", {
      get: function () {
        if (all === null) {
          all = new Array(group.length);
          for (var i = 0; i < group.length; i++) all[i] = new Row(i);
        }
        return all;
      }
    });
    return view;
  }
  api.runQuery = runQuery;

  // What every point of the view mixes that it neither groups nor splits by.
  function renderPooled(view) {
    var p = $("view-pooled");
    var pooled = view && view.matched > 0 ? view.pooled : [];
    p.hidden = pooled.length === 0;
    p.className = view && view.pools_simulated_and_real ? "warning" : "note";
    p.textContent = pooled.length === 0 ? "" : "Each point pools " + pooled.join("; ") + "." +
      (view.pools_simulated_and_real ? " That mixes simulated and real runs." : "") +
      " Filter, group or split by one of them to tell them apart.";
    p.setAttribute("data-pooled", String(pooled.length));
  }

  function render() {
    var hash = currentHash();
    var unknown = syncControls(hash);
    // The records listed belong to a point of the previous view: a new view drops them.
    if (api.renderedHash !== undefined && hash !== api.renderedHash) $("records").hidden = true;
    var t = performance.now();
    var view;
    try {
      view = runQuery(hash);
    } catch (e) {
      setStatus("This view link does not work: " + errorText(e), true);
      // Nothing of the previous view stays on screen under the new controls.
      api.view = null;
      $("view-table").textContent = "";
      tableNote().hidden = true;
      renderPooled(null);
      $("view-skipped").textContent = "";
      chartMessage("");
      $("download-csv").disabled = true;
      return;
    }
    timings.last_query_ms = performance.now() - t;
    api.view = view;
    if (unknown.length > 0) {
      setStatus(options.rows + " records loaded. This link filters on values the data does not have: " +
        unknown.join(", ") + ".", true);
    } else {
      setStatus(options.rows + " records loaded.", false);
    }
    renderPooled(view);
    renderTable(view);
    renderChart(view);
    $("download-csv").disabled = view.length === 0;
    if (timings.first_chart_ms === undefined) timings.first_chart_ms = performance.now();
    api.renderedHash = hash;
  }

  $("download-csv").addEventListener("click", function () {
    var csv;
    try {
      csv = viewer.csv(currentHash());
    } catch (e) {
      setStatus(errorText(e), true);
      return;
    }
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
    a.download = "turnbench-view.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 0);
  });

  // For the benchmark page and tests: time one query of `hash` (the engine, the typed arrays
  // across the boundary and the rows built from them), and one whole render of it (query,
  // table, chart).
  api.timeQuery = function (hash) {
    var t = performance.now();
    runQuery(hash);
    return performance.now() - t;
  };
  api.timeRender = function (hash) {
    var t = performance.now();
    history.replaceState(null, "", "#" + hash);
    render();
    return performance.now() - t;
  };

  window.addEventListener("hashchange", render);
  // A link without a view lands on median TTFT by turn index, a line per cache mode: how KV
  // reuse holds TTFT flat while the prompt grows; of one run where there are several, since
  // runs may differ in workload. (A link's own view is kept as it is.)
  if (currentHash() === "") {
    history.replaceState(null, "", "#" + LANDING);
  }
  render();
})();
