//! `/metrics` (with `--enable-metrics`): SGLang's `sglang:` Prometheus series (spec §3.5),
//! encoded by the `prometheus-client` crate, plus `turnbench:sim_engine_lag_seconds`, how far
//! the simulated engine runs behind wall time.
//!
//! Scheduler gauges are read from the engine at scrape time; request counters and latency
//! histograms (in engine seconds) are recorded as requests finish.
//!
//! **Format.** `prometheus-client` (0.26) encodes OpenMetrics only: `# TYPE x counter` over
//! `x_total` samples and a closing `# EOF`. SGLang serves prometheus_client's classic text
//! format (0.0.4), so [`classic_text`] rewrites the exposition the way prometheus_client's
//! `generate_latest` writes it: a counter's `# HELP`/`# TYPE` name carries `_total`, every
//! counter and histogram series gets a `x_created` gauge sample (Unix seconds; here the
//! time the metrics were set up), `# UNIT` and `# EOF` lines are dropped. The route sends
//! `Content-Type: text/plain; version=0.0.4`.

use super::engine::EngineStats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;

type GaugeF = Gauge<f64, AtomicU64>;
type Labels = Vec<(&'static str, &'static str)>;

const TTFT_BUCKETS: [f64; 18] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0,
];
const ITL_BUCKETS: [f64; 23] = [
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
    0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
];
const E2E_BUCKETS: [f64; 23] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0,
    400.0, 800.0, 1200.0, 1600.0, 2000.0, 2400.0,
];

pub struct Metrics {
    registry: Registry,
    /// Unix time the series were created (their `_created` samples).
    created: f64,
    running: GaugeF,
    queued: GaugeF,
    used_tokens: GaugeF,
    token_usage: GaugeF,
    max_total: GaugeF,
    gen_throughput: GaugeF,
    cache_hit_rate: GaugeF,
    realtime_tokens: Family<Labels, Counter>,
    retracted_total: Counter,
    lag: GaugeF,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub cached_tokens: Family<Labels, Counter>,
    pub requests: Counter,
    pub aborted: Counter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub retractions: Histogram,
}

impl Metrics {
    pub fn new(model_name: &str) -> Metrics {
        let name: Cow<'static, str> = Cow::Owned(model_name.to_string());
        let mut root = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            running: GaugeF::default(),
            queued: GaugeF::default(),
            used_tokens: GaugeF::default(),
            token_usage: GaugeF::default(),
            max_total: GaugeF::default(),
            gen_throughput: GaugeF::default(),
            cache_hit_rate: GaugeF::default(),
            realtime_tokens: Family::default(),
            retracted_total: Counter::default(),
            lag: GaugeF::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            cached_tokens: Family::default(),
            requests: Counter::default(),
            aborted: Counter::default(),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            retractions: Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
        };
        {
            let sched = root.sub_registry_with_labels(
                [
                    (Cow::Borrowed("model_name"), name.clone()),
                    (Cow::Borrowed("engine_type"), Cow::Borrowed("unified")),
                    (Cow::Borrowed("tp_rank"), Cow::Borrowed("0")),
                    (Cow::Borrowed("pp_rank"), Cow::Borrowed("0")),
                    (Cow::Borrowed("moe_ep_rank"), Cow::Borrowed("0")),
                ]
                .into_iter(),
            );
            let g = |r: &mut Registry, n: &str, h: &str, m: &GaugeF| r.register(n, h, m.clone());
            g(
                sched,
                "sglang:num_running_reqs",
                "The number of running requests",
                &m.running,
            );
            g(
                sched,
                "sglang:num_queue_reqs",
                "The number of requests in the waiting queue",
                &m.queued,
            );
            g(
                sched,
                "sglang:num_used_tokens",
                "The number of used tokens",
                &m.used_tokens,
            );
            g(
                sched,
                "sglang:token_usage",
                "The token usage",
                &m.token_usage,
            );
            g(
                sched,
                "sglang:max_total_num_tokens",
                "Maximum total number of tokens in the KV cache pool",
                &m.max_total,
            );
            g(
                sched,
                "sglang:gen_throughput",
                "The generation throughput (token/s)",
                &m.gen_throughput,
            );
            g(
                sched,
                "sglang:cache_hit_rate",
                "The prefix cache hit rate",
                &m.cache_hit_rate,
            );
            sched.register(
                "sglang:realtime_tokens",
                "Tokens processed, by mode",
                m.realtime_tokens.clone(),
            );
            sched.register(
                "sglang:num_retracted_reqs",
                "Retracted requests (cumulative in the simulator)",
                m.retracted_total.clone(),
            );
            g(
                sched,
                "turnbench:sim_engine_lag_seconds",
                "How far the simulated engine runs behind wall time (engine seconds)",
                &m.lag,
            );
        }
        {
            let tok =
                root.sub_registry_with_labels([(Cow::Borrowed("model_name"), name)].into_iter());
            tok.register(
                "sglang:prompt_tokens",
                "Number of prefill tokens processed",
                m.prompt_tokens.clone(),
            );
            tok.register(
                "sglang:generation_tokens",
                "Number of generation tokens processed",
                m.generation_tokens.clone(),
            );
            tok.register(
                "sglang:cached_tokens",
                "Number of cached prompt tokens",
                m.cached_tokens.clone(),
            );
            tok.register(
                "sglang:num_requests",
                "Number of requests processed",
                m.requests.clone(),
            );
            tok.register(
                "sglang:num_aborted_requests",
                "Number of requests aborted",
                m.aborted.clone(),
            );
            tok.register(
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds",
                m.ttft.clone(),
            );
            tok.register(
                "sglang:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds",
                m.itl.clone(),
            );
            tok.register(
                "sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds",
                m.e2e.clone(),
            );
            tok.register(
                "sglang:num_retractions",
                "Histogram of retractions per request",
                m.retractions.clone(),
            );
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// The classic Prometheus text exposition (0.0.4), scheduler gauges refreshed from
    /// `stats`.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.running.set(stats.core.running as f64);
        self.queued.set(stats.core.queued as f64);
        self.used_tokens.set(stats.core.used_tokens as f64);
        self.token_usage.set(stats.core.token_usage);
        self.max_total.set(stats.core.max_total_num_tokens as f64);
        self.gen_throughput.set(stats.core.gen_throughput);
        self.cache_hit_rate.set(stats.core.cache_hit_rate);
        self.lag.set(stats.lag_seconds);
        let set = |mode: &'static str, v: u64| {
            let c = self.realtime_tokens.get_or_create(&vec![("mode", mode)]);
            c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        };
        set("prefill_compute", stats.core.prefill_compute_tokens_total);
        set("prefill_cache", stats.core.prefill_cache_tokens_total);
        set("decode", stats.core.decode_tokens_total);
        self.retracted_total.inner().store(
            stats.core.retractions_total,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        classic_text(&out, self.created)
    }

    /// Record a finished request (token counts; latencies are observed as they happen).
    pub fn finished(&self, prompt: u32, completion: u32, cached: u32, retractions: u32) {
        self.requests.inc();
        self.prompt_tokens.inc_by(u64::from(prompt));
        self.generation_tokens.inc_by(u64::from(completion));
        for src in ["total", "device"] {
            self.cached_tokens
                .get_or_create(&vec![("cache_source", src)])
                .inc_by(u64::from(cached));
        }
        self.retractions.observe(f64::from(retractions));
    }
}

/// Rewrite an OpenMetrics text exposition as prometheus_client's classic text format (see
/// the module docs); `created` is the value of every `_created` sample.
pub fn classic_text(openmetrics: &str, created: f64) -> String {
    #[derive(Default)]
    struct Family<'a> {
        name: &'a str,
        help: &'a str,
        kind: &'a str,
        /// Label sets (`{…}` or empty) of the series, for their `_created` samples.
        series: Vec<&'a str>,
    }
    fn flush(out: &mut String, f: &Family<'_>, created: f64) {
        if f.series.is_empty() || !matches!(f.kind, "counter" | "histogram") {
            return;
        }
        out.push_str(&format!("# HELP {}_created {}\n", f.name, f.help));
        out.push_str(&format!("# TYPE {}_created gauge\n", f.name));
        for labels in &f.series {
            out.push_str(&format!("{}_created{labels} {created}\n", f.name));
        }
    }
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut family = Family::default();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush(&mut out, &family, created);
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            family = Family {
                name,
                help,
                ..Family::default()
            };
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            if name != family.name {
                flush(&mut out, &family, created);
                family = Family {
                    name,
                    ..Family::default()
                };
            }
            family.kind = kind;
            let shown = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            out.push_str(&format!("# HELP {shown} {}\n", family.help));
            out.push_str(&format!("# TYPE {shown} {kind}\n"));
        } else if line.starts_with('#') {
            // `# EOF`, `# UNIT`: OpenMetrics only.
        } else if !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let sample = &line[..name_end];
            let labels = if line[name_end..].starts_with('{') {
                line[name_end..]
                    .rfind('}')
                    .map_or("", |end| &line[name_end..name_end + end + 1])
            } else {
                ""
            };
            let series_sample = match family.kind {
                "counter" => sample.strip_suffix("_total") == Some(family.name),
                "histogram" => sample.strip_suffix("_count") == Some(family.name),
                _ => false,
            };
            if series_sample {
                family.series.push(labels);
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    flush(&mut out, &family, created);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_become_classic_with_created_samples() {
        let om = "# HELP c Requests.\n# TYPE c counter\nc_total{a=\"x\"} 3\n\
                  # HELP g Load.\n# TYPE g gauge\ng 0.5\n\
                  # HELP h Latency.\n# TYPE h histogram\nh_sum 1.0\nh_count 2\n\
                  h_bucket{le=\"+Inf\"} 2\n# EOF\n";
        let classic = classic_text(om, 1.5);
        assert_eq!(
            classic,
            "# HELP c_total Requests.\n# TYPE c_total counter\nc_total{a=\"x\"} 3\n\
             # HELP c_created Requests.\n# TYPE c_created gauge\nc_created{a=\"x\"} 1.5\n\
             # HELP g Load.\n# TYPE g gauge\ng 0.5\n\
             # HELP h Latency.\n# TYPE h histogram\nh_sum 1.0\nh_count 2\n\
             h_bucket{le=\"+Inf\"} 2\n\
             # HELP h_created Latency.\n# TYPE h_created gauge\nh_created 1.5\n"
        );
    }
}
