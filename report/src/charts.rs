//! Chart specs: plotly figures as data (`data` traces + `layout`), built by pure functions from
//! aggregates. The page ships them as JSON and `site.js` hands each to `Plotly.newPlot`.
//! Only `scatter` and `bar` traces are used, so the basic plotly bundle suffices.

use crate::aggregate::{CellSeries, CellSpan, TelemetrySeries, TurnIndexStats};
use crate::legacy::LegacyRun;
use serde::Serialize;
use serde_json::{json, Value};
use turnbench_schema::CacheMode;

/// One chart: the container id on the page, a heading, and the plotly figure.
#[derive(Debug, Clone, Serialize)]
pub struct ChartSpec {
    pub id: String,
    pub title: String,
    /// Shown under the heading (e.g. what an axis really measures).
    pub note: String,
    pub data: Vec<Value>,
    pub layout: Value,
}

/// Plotly renders a subset of HTML in text; entities make labels literal.
pub fn plot_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The height of a one-row legend and its padding, as `site.js` measures it: most charts'
/// legends need no redraw.
const LEGEND_ROW: u32 = 28;

fn layout(x: &str, y: &str) -> Value {
    json!({
        "xaxis": {"title": {"text": x}, "zeroline": false},
        "yaxis": {"title": {"text": y}, "rangemode": "tozero"},
        // 50 px for the x axis' labels and title, then room for one row of legend.
        "margin": {"l": 60, "r": 20, "t": 10, "b": 50 + LEGEND_ROW},
        // Below the plot and its axis title; `site.js` resizes the bottom margin (and the
        // figure) to a legend of more rows, so many entries never cover the axis title nor
        // scroll.
        "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        "height": 360 + LEGEND_ROW,
        "hovermode": "closest",
    })
}

/// Rounds for compact JSON; charts need no more than 6 significant digits.
fn r(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = 10f64.powi(5 - v.abs().log10().floor() as i32);
    (v * mag).round() / mag
}

fn line(name: String, x: Vec<f64>, y: Vec<f64>) -> Value {
    json!({"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": y})
}

/// A numbered source of chart ids for one page.
#[derive(Default)]
pub struct Ids(usize);

impl Ids {
    pub fn next_id(&mut self) -> String {
        self.0 += 1;
        format!("chart-{}", self.0)
    }
}

/// The color of a cache mode on every chart that compares modes (plotly's first three).
pub fn mode_color(mode: CacheMode) -> &'static str {
    match mode {
        CacheMode::Prefix => PALETTE[0],
        CacheMode::Session => PALETTE[1],
        CacheMode::None => PALETTE[2],
    }
}

/// The color of physical limits.
pub const LIMIT_COLOR: &str = PALETTE[3];

/// Marker symbols that tell apart the groups (GPU · run) of a chart overlaying several.
const GROUP_SYMBOLS: [&str; 8] = [
    "circle",
    "square",
    "diamond",
    "triangle-up",
    "x",
    "star",
    "triangle-down",
    "cross",
];

/// Line styles that tell apart the groups along with their symbols: a marker is small next to
/// a line, so the second group's lines are dotted, the third's dash-dotted… and past the
/// symbols' count the style moves on by one, so no two groups of a chart look alike (up to
/// 32). None is plotly's "dash", which marks a physical limit.
const GROUP_DASHES: [&str; 4] = ["solid", "dot", "dashdot", "longdash"];

/// The line style of group `index` ([`GROUP_DASHES`]).
fn group_dash(index: usize) -> &'static str {
    GROUP_DASHES[(index + index / GROUP_SYMBOLS.len()) % GROUP_DASHES.len()]
}

/// Bar fill patterns that tell apart the groups of a bar chart ([`GROUP_SYMBOLS`]' twin).
const GROUP_PATTERNS: [&str; 8] = ["", "/", ".", "x", "\\", "+", "-", "|"];

/// A legend group: its title and index (which sets its marker symbol or bar pattern).
#[derive(Debug, Clone)]
pub struct Group {
    pub title: String,
    pub index: usize,
}

impl Group {
    /// Legend grouping and the hover label `title · name` (plotly shows only a trace's name).
    fn apply(&self, trace: &mut Value, name: &str) {
        let title = plot_text(&self.title);
        trace["legendgroup"] = json!(title);
        trace["legendgrouptitle"] = json!({ "text": title });
        // `meta` is inserted as text; a `%{…}` in a label cannot act as a template there.
        trace["meta"] = json!(format!("{title} · {name}"));
    }
}

/// A named series of (concurrency, tok/s) points.
pub struct ConcurrencyLine {
    pub name: String,
    pub points: Vec<(u32, f64)>,
    /// Drawn dashed: a physical limit, not a measurement.
    pub limit: bool,
    /// The line's color (a cache mode's, [`mode_color`]); physical limits are [`LIMIT_COLOR`].
    pub color: Option<&'static str>,
    /// Its legend group when the chart overlays several GPUs or runs.
    pub group: Option<Group>,
}

pub fn throughput_vs_concurrency(
    ids: &mut Ids,
    title: &str,
    lines: &[ConcurrencyLine],
) -> ChartSpec {
    let data = lines
        .iter()
        .map(|l| {
            let name = plot_text(&l.name);
            let mut t = line(
                name.clone(),
                l.points.iter().map(|p| f64::from(p.0)).collect(),
                l.points.iter().map(|p| r(p.1)).collect(),
            );
            t["hovertemplate"] =
                json!("%{fullData.name}<br>concurrency %{x}: %{y:,.1f} tok/s<extra></extra>");
            let color = if l.limit { Some(LIMIT_COLOR) } else { l.color };
            if let Some(c) = color {
                t["line"] = json!({ "color": c });
                t["marker"] = json!({ "color": c });
            }
            if l.limit {
                t["line"]["dash"] = json!("dash");
                t["mode"] = json!("lines");
                // Far above what a workload with think time and prefill reaches: drawn, it
                // would set the axis and flatten the measured lines; a click shows it.
                t["visible"] = json!("legendonly");
            }
            if let Some(g) = &l.group {
                g.apply(&mut t, &name);
                t["hovertemplate"] =
                    json!("%{meta}<br>concurrency %{x}: %{y:,.1f} tok/s<extra></extra>");
                let symbol = GROUP_SYMBOLS[g.index % GROUP_SYMBOLS.len()];
                // A limit is a dashed line with its group's open symbol at each point.
                t["marker"]["symbol"] = json!(if l.limit {
                    format!("{symbol}-open")
                } else {
                    symbol.to_string()
                });
                t["mode"] = json!("lines+markers");
                if !l.limit {
                    t["line"]["dash"] = json!(group_dash(g.index));
                }
            }
            t
        })
        .collect();
    let mut lay = layout("concurrency (trajectories in flight)", "output tokens/s");
    lay["xaxis"]["type"] = json!("log");
    // Ticks at the measured concurrencies only: plotly's own log ticks label the minor
    // decades (`9 1 … 9`), which reads as noise on a 1–64 axis.
    let mut ticks: Vec<u32> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .collect();
    ticks.sort_unstable();
    ticks.dedup();
    lay["xaxis"]["tickmode"] = json!("array");
    lay["xaxis"]["tickvals"] = json!(ticks);
    lay["xaxis"]["ticktext"] = json!(ticks.iter().map(u32::to_string).collect::<Vec<_>>());
    let note = if lines.iter().any(|l| l.limit) {
        "Physical limit (dashed, hidden until its legend entry is clicked): the run manifest's \
         cost-model roofline for pure decode, every sequence generating with no think time and \
         no prefill: a bound far above what a multi-turn workload reaches, not a measurement."
    } else {
        ""
    };
    ChartSpec {
        id: ids.next_id(),
        title: title.to_string(),
        note: note.into(),
        data,
        layout: lay,
    }
}

/// One line of a throughput–latency trade-off chart: a cache mode's cells, one point per
/// concurrency (`(concurrency, latency, tok/s)`).
pub struct TradeoffLine {
    pub mode: CacheMode,
    pub group: Option<Group>,
    pub points: Vec<(u32, f64, f64)>,
}

/// Output throughput against a latency, one point per concurrency labelled `c=N`, a line per
/// cache mode: the trade-off a concurrency buys.
pub fn throughput_vs_latency(
    ids: &mut Ids,
    title: &str,
    latency: &str,
    lines: &[TradeoffLine],
) -> ChartSpec {
    // The latency's unit, from its axis title ("TTFT p90 (ms)"), for the hover.
    let unit = latency
        .rsplit_once('(')
        .map_or("", |(_, u)| u.trim_end_matches(')'));
    let data = lines
        .iter()
        .map(|l| {
            let name = l.mode.to_string();
            let color = mode_color(l.mode);
            let mut t = json!({"type": "scatter", "mode": "lines+markers+text", "name": name,
                "x": l.points.iter().map(|p| r(p.1)).collect::<Vec<_>>(),
                "y": l.points.iter().map(|p| r(p.2)).collect::<Vec<_>>(),
                "text": l.points.iter().map(|p| format!("c={}", p.0)).collect::<Vec<_>>(),
                "textposition": "top center", "textfont": {"size": 10, "color": color},
                "line": {"color": color}, "marker": {"color": color},
                "hovertemplate": format!("{name} · %{{text}}<br>%{{x:,.1f}} {unit} · %{{y:,.1f}} tok/s<extra></extra>")});
            if let Some(g) = &l.group {
                // Several groups' `c=N` labels would overlap: hover names the point instead.
                g.apply(&mut t, &name);
                t["mode"] = json!("lines+markers");
                t["marker"]["symbol"] = json!(GROUP_SYMBOLS[g.index % GROUP_SYMBOLS.len()]);
                t["line"]["dash"] = json!(group_dash(g.index));
                t["hovertemplate"] = json!(format!(
                    "%{{meta}} · %{{text}}<br>%{{x:,.1f}} {unit} · %{{y:,.1f}} tok/s<extra></extra>"
                ));
            }
            t
        })
        .collect();
    ChartSpec {
        id: ids.next_id(),
        title: title.to_string(),
        note: format!("One point per concurrency{}, a line per cache mode. Up and to the left is better: pick the highest point left of your {latency} budget.",
            if lines.iter().any(|l| l.group.is_some()) { " (hover for its c=N)" } else { " (c=N)" }),
        data,
        layout: layout(latency, "output tokens/s"),
    }
}

/// Throughput over time for each concurrency of one cache mode: sliding window or cumulative.
pub fn throughput_over_time(
    ids: &mut Ids,
    mode: CacheMode,
    cells: &[&CellSeries],
    cumulative: bool,
) -> ChartSpec {
    let data = cells
        .iter()
        .map(|c| {
            let mut t = line(
                cell_label(&c.summary),
                c.throughput.iter().map(|p| r(p.t)).collect(),
                c.throughput
                    .iter()
                    .map(|p| r(if cumulative { p.cumulative } else { p.sliding }))
                    .collect(),
            );
            t["mode"] = json!("lines");
            t
        })
        .collect();
    let (title, note) = if cumulative {
        (
            "Throughput over time, cumulative",
            "Output tokens finished since the cell started ÷ elapsed time.",
        )
    } else {
        ("Throughput over time, sliding 10 s window", "Output tokens finished in the last 10 s ÷ 10 s (÷ elapsed time during the first 10 s).")
    };
    ChartSpec {
        id: ids.next_id(),
        title: format!("{title} ({mode})"),
        note: note.into(),
        data,
        layout: layout("time since cell start (s)", "output tokens/s"),
    }
}

/// p50 line with a p10–p90 band per concurrency, by turn index.
pub fn by_turn_band(
    ids: &mut Ids,
    mode: CacheMode,
    cells: &[&CellSeries],
    what: &str,
    pick: fn(&TurnIndexStats) -> Option<crate::aggregate::Band>,
) -> ChartSpec {
    let mut data = Vec::new();
    for (i, c) in cells.iter().enumerate() {
        let pts: Vec<(f64, crate::aggregate::Band)> = c
            .by_turn
            .iter()
            .filter_map(|t| pick(t).map(|b| (f64::from(t.turn), b)))
            .collect();
        let x: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let group = format!("c{}", c.summary.concurrency);
        let color = PALETTE[i % PALETTE.len()];
        data.push(json!({
            "type": "scatter", "mode": "lines", "x": x, "y": pts.iter().map(|p| r(p.1.p10 * 1e3)).collect::<Vec<_>>(),
            "line": {"width": 0, "color": color}, "legendgroup": group, "showlegend": false, "hoverinfo": "skip",
            "name": format!("{} p10", cell_label(&c.summary)),
        }));
        data.push(json!({
            "type": "scatter", "mode": "lines", "x": x, "y": pts.iter().map(|p| r(p.1.p90 * 1e3)).collect::<Vec<_>>(),
            "fill": "tonexty", "fillcolor": format!("{color}33"), "line": {"width": 0, "color": color},
            "legendgroup": group, "showlegend": false, "hoverinfo": "skip",
            "name": format!("{} p90", cell_label(&c.summary)),
        }));
        data.push(json!({
            "type": "scatter", "mode": "lines+markers", "x": x, "y": pts.iter().map(|p| r(p.1.p50 * 1e3)).collect::<Vec<_>>(),
            "line": {"color": color}, "legendgroup": group, "name": format!("{} p50", cell_label(&c.summary)),
        }));
    }
    ChartSpec {
        id: ids.next_id(),
        title: format!("{what} by turn index ({mode})"),
        note: "Line: median; band: p10–p90 over the successful turns at that index.".into(),
        data,
        layout: layout("turn index", &format!("{what} (ms)")),
    }
}

pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Mean prompt and cached tokens by turn index, and the cache-hit ratio on a second axis.
pub fn prompt_vs_cached(ids: &mut Ids, mode: CacheMode, cells: &[&CellSeries]) -> ChartSpec {
    let mut data = Vec::new();
    let n = cells.len();
    for (i, c) in cells.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let visible: Value = if i == 0 || i + 1 == n {
            json!(true)
        } else {
            json!("legendonly")
        };
        let x: Vec<f64> = c.by_turn.iter().map(|t| f64::from(t.turn)).collect();
        let conc = c.summary.concurrency;
        let series = |f: fn(&TurnIndexStats) -> Option<f64>| -> Vec<Value> {
            c.by_turn
                .iter()
                .map(|t| f(t).map_or(Value::Null, |v| json!(r(v))))
                .collect()
        };
        data.push(json!({"type": "scatter", "mode": "lines", "name": format!("prompt c={conc}"), "x": x,
            "y": series(|t| t.prompt_tokens_mean), "line": {"color": color}, "legendgroup": format!("c{conc}"), "visible": visible}));
        data.push(json!({"type": "scatter", "mode": "lines", "name": format!("cached c={conc}"), "x": x,
            "y": series(|t| t.cached_tokens_mean), "line": {"color": color, "dash": "dash"}, "legendgroup": format!("c{conc}"), "visible": visible}));
        data.push(json!({"type": "scatter", "mode": "lines", "name": format!("hit ratio c={conc}"), "x": x,
            "y": series(|t| t.cache_hit_ratio), "yaxis": "y2", "line": {"color": color, "dash": "dot"}, "legendgroup": format!("c{conc}"), "visible": visible}));
    }
    let mut lay = layout("turn index", "tokens per turn (mean)");
    // Its own ticks (0–100 % by 20) and no grid: ticks synced to the left axis' grid read
    // as 0.133, 0.266, ….
    lay["yaxis2"] = json!({"title": {"text": "cache-hit ratio"}, "overlaying": "y", "side": "right", "range": [0, 1.05],
        "tickmode": "linear", "tick0": 0, "dtick": 0.2, "tickformat": ".0%", "showgrid": false});
    lay["margin"]["r"] = json!(60);
    ChartSpec {
        id: ids.next_id(),
        title: format!("Prompt vs cached tokens by turn index ({mode})"),
        note: "Solid: prompt tokens; dashed: tokens served from the prefix cache; dotted (right axis): cached ÷ prompt. Server-reported counts.".into(),
        data,
        layout: lay,
    }
}

pub fn in_flight(ids: &mut Ids, mode: CacheMode, cells: &[&CellSeries]) -> ChartSpec {
    let data = cells
        .iter()
        .map(|c| {
            json!({"type": "scatter", "mode": "lines", "line": {"shape": "hv"},
                "name": cell_label(&c.summary),
                "x": c.in_flight.iter().map(|p| r(p.0)).collect::<Vec<_>>(),
                "y": c.in_flight.iter().map(|p| p.1).collect::<Vec<_>>()})
        })
        .collect();
    ChartSpec {
        id: ids.next_id(),
        title: format!("Trajectories in flight over time ({mode})"),
        note:
            "A trajectory counts from its first request to its last response (think time included)."
                .into(),
        data,
        layout: layout("time since cell start (s)", "trajectories in flight"),
    }
}

/// Distribution as a quantile curve (x = latency, y = percentile) per concurrency.
pub fn latency_distribution(
    ids: &mut Ids,
    mode: CacheMode,
    cells: &[&CellSeries],
    what: &str,
    pick: fn(&CellSeries) -> &[f64],
) -> ChartSpec {
    let data: Vec<Value> = cells
        .iter()
        .filter(|c| !pick(c).is_empty())
        .map(|c| {
            let q = pick(c);
            json!({"type": "scatter", "mode": "lines", "name": cell_label(&c.summary),
                "x": q.iter().map(|v| r(v * 1e3)).collect::<Vec<_>>(),
                "y": (0..q.len()).collect::<Vec<_>>()})
        })
        .collect();
    let mut lay = layout(&format!("{what} (ms)"), "percentile");
    lay["xaxis"]["type"] = json!("log");
    // Ticks at 1, 2 and 5 × 10^k, written whole: plotly's own log ticks label the minor ones
    // by their first digit (`5 6 7 8 9 100 2 3`), so "2" reads as 2 ms where it means 200.
    let xs = || {
        data.iter()
            .flat_map(|t| t["x"].as_array().into_iter().flatten())
            .filter_map(Value::as_f64)
            .filter(|v| *v > 0.0)
    };
    if let (Some(lo), Some(hi)) = (xs().reduce(f64::min), xs().reduce(f64::max)) {
        let ticks = log_ticks(lo, hi);
        lay["xaxis"]["tickmode"] = json!("array");
        lay["xaxis"]["ticktext"] = json!(ticks
            .iter()
            .map(|t| crate::pages::num(*t, if *t < 1.0 { 3 } else { 0 }))
            .collect::<Vec<_>>());
        lay["xaxis"]["tickvals"] = json!(ticks);
    }
    ChartSpec {
        id: ids.next_id(),
        title: format!("{what} distribution ({mode})"),
        note: "Cumulative distribution over successful turns: the percentile (y) below which a latency (x) falls.".into(),
        data,
        layout: lay,
    }
}

/// The 1-2-5 values of each decade from the one below `lo` to the one above `hi`: ticks for a
/// log axis over `lo..=hi` (both > 0), at least one inside it.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    let mut out = Vec::new();
    for k in first..=last.max(first) {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(k);
            // (Rounded, so 0.2 is 0.2 and not 0.20000000000000004.)
            let v = format!("{v:.12e}").parse::<f64>().unwrap_or(v);
            if v >= lo / 2.5 && v <= hi * 2.5 {
                out.push(v);
            }
        }
    }
    out
}

pub fn telemetry(ids: &mut Ids, series: &TelemetrySeries) -> ChartSpec {
    telemetry_group(
        ids,
        &format!("Telemetry: {} / {}", series.source, series.key),
        &plot_text(&series.key),
        &[TelemetryLine {
            series,
            name: series.key.clone(),
            scale: 1.0,
        }],
    )
}

/// One line of a telemetry chart: a series, named, its values multiplied by `scale`.
pub struct TelemetryLine<'a> {
    pub series: &'a TelemetrySeries,
    pub name: String,
    pub scale: f64,
}

/// Several telemetry series on one chart (sharing a unit), the cells that ran marked as bands
/// (those of the first series' stream).
pub fn telemetry_group(
    ids: &mut Ids,
    title: &str,
    y_title: &str,
    lines: &[TelemetryLine<'_>],
) -> ChartSpec {
    let resumed = lines.iter().any(|l| l.series.sessions.len() > 1);
    let mut data = Vec::new();
    for l in lines {
        for (i, points) in l.series.sessions.iter().enumerate() {
            let name = if resumed {
                format!("{} (session {})", plot_text(&l.name), i + 1)
            } else {
                plot_text(&l.name)
            };
            // A lone sample is no line: draw it as a marker.
            let mode = if points.len() < 2 { "markers" } else { "lines" };
            data.push(json!({"type": "scatter", "mode": mode, "name": name,
                "x": points.iter().map(|p| r(p.0)).collect::<Vec<_>>(),
                "y": points.iter().map(|p| r(p.1 * l.scale)).collect::<Vec<_>>()}));
        }
    }
    let spans = lines.first().map_or(&[][..], |l| &l.series.cells[..]);
    let mut lay = layout(
        if resumed {
            "run time, sessions end to end (s)"
        } else {
            "time since run start (s)"
        },
        y_title,
    );
    cell_bands(&mut lay, spans);
    let bands = if spans.is_empty() {
        ""
    } else {
        " Shaded bands mark the cells (cache mode / concurrency) running when sampled."
    };
    ChartSpec {
        id: ids.next_id(),
        title: title.to_string(),
        note: if resumed {
            format!(
                "Sampled during the run, which ran in several sessions (resumed): each session is \
                 a line of its own, timed from where the one before ended (the time between \
                 sessions is left out); a server counter starts again with the server each \
                 session launched.{bands}"
            )
        } else {
            format!("Sampled during the run; time is seconds since the run started.{bands}")
        },
        data,
        layout: lay,
    }
}

/// Marks each cell's stretch of time on a chart: every other one shaded, each labelled at the
/// top (vertically, so narrow cells stay legible).
fn cell_bands(lay: &mut Value, spans: &[CellSpan]) {
    let mut shapes = Vec::new();
    let mut notes = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let label = match s.cell.rsplit_once('/') {
            Some((mode, c)) => format!("{mode} c={c}"),
            None => s.cell.clone(),
        };
        shapes.push(json!({"type": "rect", "xref": "x", "yref": "paper",
            "x0": r(s.start), "x1": r(s.end), "y0": 0, "y1": 1, "layer": "below",
            "line": {"width": 0},
            "fillcolor": if i % 2 == 0 { "rgba(0,0,0,0.06)" } else { "rgba(0,0,0,0.02)" }}));
        notes.push(
            json!({"xref": "x", "yref": "paper", "x": r((s.start + s.end) / 2.0),
            "y": 1, "yanchor": "top", "text": plot_text(&label), "textangle": -90,
            "showarrow": false, "font": {"size": 9, "color": "#666"}}),
        );
    }
    if !shapes.is_empty() {
        lay["shapes"] = Value::Array(shapes);
        lay["annotations"] = Value::Array(notes);
    }
}

/// One bar series of the cache-mode speed-up chart: a mode's tok/s ÷ the baseline's, per
/// concurrency.
pub struct SpeedupBars {
    pub name: String,
    pub mode: CacheMode,
    pub group: Option<Group>,
    pub points: Vec<(u32, f64)>,
}

/// Cache-mode speed-up: bars of tok/s relative to the baseline mode, per concurrency; colored by
/// mode, patterned by group (GPU · run).
pub fn speedup(ids: &mut Ids, bars: &[SpeedupBars], baseline: &str) -> ChartSpec {
    let data = bars
        .iter()
        .map(|b| {
            let name = plot_text(&b.name);
            let mut t = json!({"type": "bar", "name": name,
                "x": b.points.iter().map(|p| format!("c={}", p.0)).collect::<Vec<_>>(),
                "y": b.points.iter().map(|p| r(p.1)).collect::<Vec<_>>(),
                "marker": {"color": mode_color(b.mode)},
                "hovertemplate": "%{fullData.name}<br>%{x}: ×%{y:.2f}<extra></extra>"});
            if let Some(g) = &b.group {
                g.apply(&mut t, &name);
                t["hovertemplate"] = json!("%{meta}<br>%{x}: ×%{y:.2f}<extra></extra>");
                t["marker"]["pattern"] =
                    json!({"shape": GROUP_PATTERNS[g.index % GROUP_PATTERNS.len()]});
            }
            t
        })
        .collect();
    let mut lay = layout("concurrency", &format!("output tok/s ÷ {baseline}"));
    lay["barmode"] = json!("group");
    ChartSpec {
        id: ids.next_id(),
        title: "Cache-mode speed-up".into(),
        note: format!("Output token throughput of each cache mode divided by the {baseline} mode's, same GPU and concurrency."),
        data,
        layout: lay,
    }
}

/// Legacy: the seed's per-turn time (an average) by turn index, p50 with p10–p90 band, per batch size.
pub fn legacy_turn_time(ids: &mut Ids, run: &LegacyRun) -> ChartSpec {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<u32, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for t in &run.turns {
        if let Some(v) = t.turn_time_avg_s {
            by.entry(t.batch_size)
                .or_default()
                .entry(t.turn)
                .or_default()
                .push(v);
        }
    }
    let mut data = Vec::new();
    for (i, (batch, turns)) in by.into_iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut x = Vec::new();
        let (mut p10, mut p50, mut p90) = (Vec::new(), Vec::new(), Vec::new());
        for (turn, mut v) in turns {
            v.sort_by(f64::total_cmp);
            x.push(f64::from(turn));
            let p = |q| turnbench_schema::stats::percentile_sorted(&v, q).map(r);
            p10.push(p(10.0));
            p50.push(p(50.0));
            p90.push(p(90.0));
        }
        let group = format!("b{batch}");
        data.push(json!({"type": "scatter", "mode": "lines", "x": x, "y": p10, "line": {"width": 0, "color": color}, "legendgroup": group, "showlegend": false, "hoverinfo": "skip", "name": "p10"}));
        data.push(json!({"type": "scatter", "mode": "lines", "x": x, "y": p90, "fill": "tonexty", "fillcolor": format!("{color}33"), "line": {"width": 0, "color": color}, "legendgroup": group, "showlegend": false, "hoverinfo": "skip", "name": "p90"}));
        data.push(json!({"type": "scatter", "mode": "lines+markers", "x": x, "y": p50, "line": {"color": color}, "legendgroup": group, "name": format!("batch {batch} p50")}));
    }
    ChartSpec {
        id: ids.next_id(),
        title: "Legacy: turn time by turn index".into(),
        note: "LEGACY (seed import): each turn time is the trajectory's time ÷ its turns, an average, not a measured per-turn latency.".into(),
        data,
        layout: layout("turn index", "averaged turn time (s)"),
    }
}

/// A cell's name in a chart's legend: `c=N`, and what a cell an interrupted run left is
/// (`c=4 (unfinished)`), so its trace is not read as a whole cell's.
fn cell_label(c: &turnbench_schema::CellSummary) -> String {
    match crate::pages::partial(c) {
        Some(p) => format!("c={} ({p})", c.concurrency),
        None => format!("c={}", c.concurrency),
    }
}

#[cfg(test)]
mod tests {
    use super::log_ticks;

    #[test]
    fn log_ticks_hold_every_1_2_5_value_of_the_range_and_nothing_far_outside() {
        for (lo, hi) in [(120.0, 4300.0), (0.7, 3.1), (13.7, 14.5), (0.004, 90_000.0)] {
            let ticks = log_ticks(lo, hi);
            assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
            assert!(
                ticks.iter().any(|t| (lo..=hi).contains(t)) || hi / lo < 2.0,
                "{ticks:?}"
            );
            // Every 1-2-5 value of the range is a tick…
            for k in -4..=6 {
                for m in [1.0, 2.0, 5.0] {
                    let v: f64 = format!("{m}e{k}").parse().unwrap();
                    if (lo..=hi).contains(&v) {
                        assert!(ticks.contains(&v), "{v} missing from {ticks:?} ({lo}–{hi})");
                    }
                }
            }
            // …and no tick is more than a 1-2-5 step beyond it.
            assert!(
                ticks.iter().all(|t| *t >= lo / 2.5 && *t <= hi * 2.5),
                "{ticks:?}"
            );
            // The values are exact (0.2, not 0.20000000000000004).
            for t in &ticks {
                assert!(t.to_string().len() <= 6 || *t >= 1e5, "{t}");
            }
        }
        // A narrow range still gets its neighbours either side.
        assert_eq!(log_ticks(13.7, 14.5), vec![10.0, 20.0]);
    }
}
