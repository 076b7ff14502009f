//! What the reader asked for: filters, group-by, split series, metric, aggregate, chart,
//! parsed from and written to the page's URL hash.
//!
//! The hash is form-encoded, keys and values are the per-turn record's own field names and
//! raw values: `metric=ttft&agg=p90&group=turn&series=concurrency&gpu=1&cache_mode=prefix`.
//! A filter key may repeat (`gpu=1&gpu=2` keeps either); `traj` and `turn` take inclusive
//! ranges (`turn=3`, `turn=2-10`, `turn=5-`, `turn=-4`); `finish_reason=` (empty) selects
//! records without one; `error=true` keeps failed turns only, `error=false` successful ones.

use std::fmt;
use turnbench_schema::CacheMode;

/// A hash that does not parse, with the key at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError(pub String);

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $key:literal : $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($var),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The name used in the URL hash (the record's field name).
            pub fn key(self) -> &'static str {
                match self { $($name::$var => $key),+ }
            }

            /// The name shown to the reader.
            pub fn label(self) -> &'static str {
                match self { $($name::$var => $label),+ }
            }

            fn parse(what: &str, s: &str) -> Result<Self, QueryError> {
                match s {
                    $($key => Ok($name::$var),)+
                    _ => Err(QueryError(format!(
                        "unknown {what} {s:?} (expected one of: {})",
                        [$($key),+].join(", ")
                    ))),
                }
            }
        }
    };
}

named_enum!(
    /// A dimension to group by or split series by.
    Dim {
        Turn = "turn": "Turn index",
        Concurrency = "concurrency": "Concurrency",
        Gpu = "gpu": "GPU",
        CacheMode = "cache_mode": "Cache mode",
        Traj = "traj": "Trajectory",
        TimeBucket = "t_send": "Time sent, since its cell started (10 s buckets)",
        Run = "run": "Run",
        FinishReason = "finish_reason": "Finish reason",
    }
);

named_enum!(
    /// A per-turn quantity.
    Metric {
        Ttft = "ttft": "TTFT (s)",
        E2e = "e2e": "E2E latency (s)",
        ServerTtft = "server_ttft": "Server's own TTFT (s)",
        TtftOutside = "ttft_outside": "TTFT outside the engine (TTFT − server's own) (s)",
        ItlMean = "itl_mean": "ITL, the turn's mean gap (s/token)",
        ItlP99 = "itl_p99": "ITL, the turn's own p99 gap (s/token)",
        Tpot = "tpot": "TPOT, (E2E − TTFT) / (tokens − 1) (s/token)",
        PromptTokens = "prompt_tokens": "Prompt tokens",
        CachedTokens = "cached_tokens": "Cached tokens",
        NewPromptTokens = "new_prompt_tokens": "New prompt tokens (prompt − cached)",
        CompletionTokens = "completion_tokens": "Completion tokens",
        CacheHitRatio = "cache_hit_ratio": "Cache-hit ratio (cached / prompt)",
        ThinkTime = "think_time": "Think time (s)",
        OutputTokPerS = "output_tok_per_s": "Output tokens/s (completion / e2e)",
        Retractions = "retractions": "Retractions (times the server preempted the turn)",
    }
);

named_enum!(
    /// How a group's values become one number.
    Agg {
        Count = "count": "count",
        Sum = "sum": "sum",
        Mean = "mean": "mean",
        Min = "min": "min",
        Max = "max": "max",
        P50 = "p50": "p50",
        P90 = "p90": "p90",
        P99 = "p99": "p99",
    }
);

named_enum!(
    /// How the view is drawn.
    Chart {
        Line = "line": "line",
        Bar = "bar": "bar",
        Box = "box": "box",
    }
);

impl Agg {
    /// The percentile this aggregate takes, if it is one.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Agg::P50 => Some(50.0),
            Agg::P90 => Some(90.0),
            Agg::P99 => Some(99.0),
            _ => None,
        }
    }
}

/// An inclusive range of integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: u32,
    pub hi: u32,
}

impl Range {
    pub fn contains(self, x: u32) -> bool {
        self.lo <= x && x <= self.hi
    }

    fn parse(key: &str, s: &str) -> Result<Range, QueryError> {
        let num = |t: &str, default: u32| -> Result<u32, QueryError> {
            let t = t.trim();
            if t.is_empty() {
                return Ok(default);
            }
            t.parse().map_err(|_| {
                QueryError(format!(
                    "{key}={s:?} is not a number or range (e.g. {key}=3 or {key}=2-10)"
                ))
            })
        };
        let r = match s.split_once('-') {
            Some((a, b)) => Range {
                lo: num(a, 0)?,
                hi: num(b, u32::MAX)?,
            },
            None => {
                let x = num(s, 0)?;
                if s.trim().is_empty() {
                    return Err(QueryError(format!("{key}= needs a number or range")));
                }
                Range { lo: x, hi: x }
            }
        };
        if r.lo > r.hi {
            return Err(QueryError(format!("{key}={s:?}: the range is empty")));
        }
        Ok(r)
    }

    fn format(self) -> String {
        match (self.lo, self.hi) {
            (a, b) if a == b => a.to_string(),
            (a, u32::MAX) => format!("{a}-"),
            (a, b) => format!("{a}-{b}"),
        }
    }
}

/// Which records take part. Empty lists mean "no restriction"; values are raw record values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filters {
    pub run: Vec<String>,
    pub gpu: Vec<String>,
    pub cache_mode: Vec<CacheMode>,
    pub concurrency: Vec<u32>,
    pub traj: Vec<Range>,
    pub turn: Vec<Range>,
    /// `None` stands for records without a finish reason.
    pub finish_reason: Vec<Option<String>>,
    /// `Some(true)`: failed turns only; `Some(false)`: successful ones only.
    pub error: Option<bool>,
}

/// One view of the records.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub metric: Metric,
    pub agg: Agg,
    pub group: Dim,
    pub series: Option<Dim>,
    pub chart: Chart,
    pub filters: Filters,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            metric: Metric::Ttft,
            agg: Agg::P50,
            group: Dim::Turn,
            series: None,
            chart: Chart::Line,
            filters: Filters::default(),
        }
    }
}

impl Query {
    /// Parse a URL hash (with or without its `#`). Missing keys take their defaults.
    pub fn parse(hash: &str) -> Result<Query, QueryError> {
        let hash = hash.strip_prefix('#').unwrap_or(hash);
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(hash.as_bytes()) {
            let v = value.as_ref();
            let f = &mut q.filters;
            match key.as_ref() {
                "metric" => q.metric = Metric::parse("metric", v)?,
                "agg" => q.agg = Agg::parse("aggregate", v)?,
                "group" => q.group = Dim::parse("group", v)?,
                "series" if v.is_empty() => q.series = None,
                "series" => q.series = Some(Dim::parse("series", v)?),
                "chart" => q.chart = Chart::parse("chart", v)?,
                "run" => f.run.push(v.to_string()),
                "gpu" => f.gpu.push(v.to_string()),
                "cache_mode" => f.cache_mode.push(
                    v.parse()
                        .map_err(|e: String| QueryError(format!("cache_mode: {e}")))?,
                ),
                "concurrency" => {
                    f.concurrency.push(v.parse().map_err(|_| {
                        QueryError(format!("concurrency={v:?} is not a whole number"))
                    })?)
                }
                "traj" => f.traj.push(Range::parse("traj", v)?),
                "turn" => f.turn.push(Range::parse("turn", v)?),
                "finish_reason" => f.finish_reason.push((!v.is_empty()).then(|| v.to_string())),
                "error" => {
                    f.error = match v {
                        "true" => Some(true),
                        "false" => Some(false),
                        "" => None,
                        _ => {
                            return Err(QueryError(format!(
                            "error={v:?}: expected true (failed turns) or false (successful turns)"
                        )))
                        }
                    }
                }
                other => {
                    return Err(QueryError(format!(
                        "unknown key {other:?} in the view link"
                    )))
                }
            }
        }
        if q.series == Some(q.group) {
            q.series = None;
        }
        Ok(q)
    }

    /// The hash (without `#`) that [`Query::parse`] reads back as this query.
    pub fn to_hash(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        s.append_pair("metric", self.metric.key());
        s.append_pair("agg", self.agg.key());
        s.append_pair("group", self.group.key());
        if let Some(series) = self.series {
            s.append_pair("series", series.key());
        }
        s.append_pair("chart", self.chart.key());
        let f = &self.filters;
        for v in &f.run {
            s.append_pair("run", v);
        }
        for v in &f.gpu {
            s.append_pair("gpu", v);
        }
        for v in &f.cache_mode {
            s.append_pair("cache_mode", v.as_str());
        }
        for v in &f.concurrency {
            s.append_pair("concurrency", &v.to_string());
        }
        for r in &f.traj {
            s.append_pair("traj", &r.format());
        }
        for r in &f.turn {
            s.append_pair("turn", &r.format());
        }
        for v in &f.finish_reason {
            s.append_pair("finish_reason", v.as_deref().unwrap_or(""));
        }
        if let Some(e) = f.error {
            s.append_pair("error", if e { "true" } else { "false" });
        }
        s.finish()
    }
}
