//! `/metrics` (with `--enable-metrics`): SGLang's `sglang:` Prometheus series (spec §3.5),
//! encoded by the `prometheus-client` crate, plus `turnbench:sim_engine_lag_seconds`, how far
//! the simulated engine runs behind wall time.
//!
//! Scheduler gauges are read from the engine at scrape time; request counters and latency
//! histograms (in engine seconds) are recorded as requests finish.

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

    /// The Prometheus text exposition, scheduler gauges refreshed from `stats`.
    pub fn render(&self, stats: &EngineStats) -> String {
        self.running.set(stats.running as f64);
        self.queued.set(stats.queued as f64);
        self.used_tokens.set(stats.used_tokens as f64);
        self.token_usage.set(stats.token_usage);
        self.max_total.set(stats.max_total_num_tokens as f64);
        self.gen_throughput.set(stats.gen_throughput);
        self.cache_hit_rate.set(stats.cache_hit_rate);
        self.lag.set(stats.lag_seconds);
        let set = |mode: &'static str, v: u64| {
            let c = self.realtime_tokens.get_or_create(&vec![("mode", mode)]);
            c.inner().store(v, std::sync::atomic::Ordering::Relaxed);
        };
        set("prefill_compute", stats.prefill_compute_tokens_total);
        set("prefill_cache", stats.prefill_cache_tokens_total);
        set("decode", stats.decode_tokens_total);
        self.retracted_total.inner().store(
            stats.retractions_total,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
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
