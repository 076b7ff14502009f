//! Telemetry sampled every second into `telemetry.jsonl`: the server's Prometheus `/metrics`
//! (when enabled) and `nvidia-smi` (when present). A source that is absent is noted once on
//! the console and skipped, never fatal.

use crate::client::Client;
use crate::record::Recorder;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turnbench_schema::TelemetrySample;

/// What the sampler of one GPU needs to know right now.
#[derive(Default)]
pub struct GpuState {
    /// Base URL of the GPU's current server (it changes when the server restarts).
    pub url: Option<String>,
    /// The running cell, `"<cache_mode>/<concurrency>"`.
    pub cell: Option<String>,
    /// Device index, for nvidia-smi.
    pub index: Option<u32>,
}

/// Labels that identify the process rather than the series.
const PROCESS_LABELS: [&str; 6] = [
    "model_name",
    "engine_type",
    "tp_rank",
    "pp_rank",
    "moe_ep_rank",
    "dp_rank",
];

/// Gauges that are a fraction of each process's own whole (its KV pool, its prefills): over
/// data-parallel ranks they average, where counts and throughputs add up.
fn is_fraction(name: &str) -> bool {
    name.ends_with("token_usage") || name.ends_with("_rate")
}

/// Parse the `sglang:` series of a Prometheus text exposition into `name[.label_value…] → value`
/// (histogram buckets skipped; series differing only by process labels summed, or averaged
/// when they are fractions; an empty label value adds nothing to the name).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut fractions: BTreeMap<String, u32> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("sglang:") else {
            continue;
        };
        let (series, value) = match rest.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if name.ends_with("_bucket") || name.ends_with("_created") {
            continue;
        }
        let mut key = name.to_string();
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            if !PROCESS_LABELS.contains(&k.trim()) && !v.is_empty() {
                key.push('.');
                key.push_str(v);
            }
        }
        if is_fraction(name) {
            *fractions.entry(key.clone()).or_insert(0) += 1;
        }
        *out.entry(key).or_insert(0.0) += value;
    }
    for (key, n) in fractions {
        if let Some(v) = out.get_mut(&key) {
            *v /= f64::from(n);
        }
    }
    out
}

/// The devices nvidia-smi lists, by index: (name, memory in bytes); empty when it is absent.
pub async fn gpu_inventory() -> BTreeMap<u32, (String, u64)> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        return BTreeMap::new();
    };
    parse_inventory(&String::from_utf8_lossy(&out.stdout))
}

/// `index, name, memory.total (MiB)` lines.
fn parse_inventory(text: &str) -> BTreeMap<u32, (String, u64)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, mib] = f[..] else {
                return None;
            };
            let mib: u64 = mib.parse().ok()?;
            Some((index.parse().ok()?, (name.to_string(), mib << 20)))
        })
        .collect()
}

/// The cost model's profile for a device name as nvidia-smi gives it (e.g.
/// `NVIDIA A100-SXM4-80GB`, `NVIDIA H100 80GB HBM3`), if it has one.
pub fn profile_of(name: &str, mem_bytes: u64) -> Option<&'static str> {
    let n = name.to_ascii_uppercase();
    if n.contains("H200") {
        Some("h200")
    } else if n.contains("H100") {
        Some("h100")
    } else if n.contains("A100") {
        Some(if mem_bytes > 60 << 30 {
            "a100-80gb"
        } else {
            "a100-40gb"
        })
    } else {
        None
    }
}

/// nvidia-smi's memory, utilization and power per device index, or `None` when it is absent.
async fn nvidia_smi() -> Option<BTreeMap<u32, BTreeMap<String, f64>>> {
    let out = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,memory.used,memory.total,utilization.gpu,power.draw",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<f64> = line
            .split(',')
            .map(|x| x.trim().parse::<f64>().unwrap_or(f64::NAN))
            .collect();
        if f.len() < 5 || f[0].is_nan() {
            continue;
        }
        let mut v = BTreeMap::new();
        let mib = 1024.0 * 1024.0;
        for (k, x) in [
            ("memory_used_bytes", f[1] * mib),
            ("memory_total_bytes", f[2] * mib),
            ("utilization", f[3] / 100.0),
            ("power_w", f[4]),
        ] {
            if x.is_finite() {
                v.insert(k.to_string(), x);
            }
        }
        m.insert(f[0] as u32, v);
    }
    Some(m)
}

/// Sample every second until dropped. `time_scale` turns wall offsets into engine time.
pub async fn run(
    gpus: Vec<(String, Arc<Mutex<GpuState>>)>,
    recorder: Arc<Recorder>,
    client_key: Option<String>,
    metrics: bool,
    time_scale: f64,
    start: Instant,
) {
    let mut smi_absent = false;
    let mut metrics_absent: BTreeMap<String, bool> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t = start.elapsed().as_secs_f64() * time_scale;
        let smi = if smi_absent { None } else { nvidia_smi().await };
        if smi.is_none() && !smi_absent {
            smi_absent = true;
            tracing::info!("telemetry: nvidia-smi is not available; GPU telemetry skipped");
        }
        for (gpu, state) in &gpus {
            let (url, cell, index) = {
                let s = state.lock().unwrap_or_else(|e| e.into_inner());
                (s.url.clone(), s.cell.clone(), s.index)
            };
            if let (Some(smi), Some(i)) = (&smi, index) {
                if let Some(values) = smi.get(&i) {
                    let _ = recorder.telemetry(&TelemetrySample {
                        t,
                        gpu: gpu.clone(),
                        source: "nvidia-smi".into(),
                        cell: cell.clone(),
                        values: values.clone(),
                    });
                }
            }
            let Some(url) = url.filter(|_| metrics) else {
                continue;
            };
            if metrics_absent.get(gpu).copied().unwrap_or(false) {
                continue;
            }
            let client = Client::new(&url, client_key.clone());
            match client.get_text("/metrics", Duration::from_secs(2)).await {
                Ok(text) => {
                    let values = parse_metrics(&text);
                    if !values.is_empty() {
                        let _ = recorder.telemetry(&TelemetrySample {
                            t,
                            gpu: gpu.clone(),
                            source: "metrics".into(),
                            cell,
                            values,
                        });
                    }
                }
                Err(e) if e.to_string().contains("404") => {
                    tracing::info!("telemetry: GPU {gpu}: the server has no /metrics (start it with --enable-metrics); skipped");
                    metrics_absent.insert(gpu.clone(), true);
                }
                Err(e) => tracing::debug!("telemetry: GPU {gpu}: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_inventory_names_the_profiles() {
        let inv = parse_inventory(
            "0, NVIDIA A100-SXM4-80GB, 81920\n1, NVIDIA A100-PCIE-40GB, 40960\n\
             2, NVIDIA H100 80GB HBM3, 81559\n3, Tesla T4, 15360\nbad line\n",
        );
        assert_eq!(inv.len(), 4);
        assert_eq!(inv[&0], ("NVIDIA A100-SXM4-80GB".into(), 81920 << 20));
        let prof: Vec<Option<&str>> = inv.values().map(|(n, m)| profile_of(n, *m)).collect();
        assert_eq!(
            prof,
            [Some("a100-80gb"), Some("a100-40gb"), Some("h100"), None]
        );
    }

    #[test]
    fn parses_sglang_series() {
        let text = "# HELP x\nsglang:num_running_reqs{model_name=\"m\",tp_rank=\"0\"} 3.0\n\
            sglang:realtime_tokens_total{mode=\"decode\",model_name=\"m\"} 10\n\
            sglang:ttft_bucket{le=\"0.1\"} 1\nother 5\n";
        let m = parse_metrics(text);
        assert_eq!(m["num_running_reqs"], 3.0);
        assert_eq!(m["realtime_tokens_total.decode"], 10.0);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn data_parallel_ranks_add_up_their_counts_and_average_their_fractions() {
        let text = "sglang:num_running_reqs{dp_rank=\"0\"} 3\n\
            sglang:num_running_reqs{dp_rank=\"1\"} 5\n\
            sglang:token_usage{dp_rank=\"0\"} 0.5\n\
            sglang:token_usage{dp_rank=\"1\"} 0.75\n\
            sglang:cache_hit_rate{dp_rank=\"0\"} 0.2\n\
            sglang:cache_hit_rate{dp_rank=\"1\"} 0.4\n\
            sglang:num_queue_reqs{priority=\"\",dp_rank=\"0\"} 2\n";
        let m = parse_metrics(text);
        assert_eq!(m["num_running_reqs"], 8.0);
        assert_eq!(m["token_usage"], 0.625);
        assert!((m["cache_hit_rate"] - 0.3).abs() < 1e-12);
        // (An empty label value, as `--enable-priority-scheduling`'s, leaves the name alone.)
        assert_eq!(m["num_queue_reqs"], 2.0);
    }
}
