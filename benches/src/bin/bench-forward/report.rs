//! Per-trial results, their medians, the markdown table and the JSON record.
//!
//! Medians rather than means: on a shared 2-core machine a single disturbed trial (a compile in
//! the background, a page-cache flush) would otherwise move the figure we compare.

use std::fmt::Write as _;

use serde_json::{Value, json};

/// What one successful trial measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Relay process utime+stime over the sending window, microseconds.
    pub cpu_us: u64,
    pub window_s: f64,
    /// CPU used by other processes during the window, percent of one core.
    pub background_pct: f64,
    pub received: u64,
    pub loss_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub achieved_pps: f64,
    /// The load generator's full report.
    pub loadgen: Value,
    /// The relay's own final counters, when it has an API to ask.
    pub relay_counters: Option<Value>,
    /// Relay CPU per thread name, percent of one core.
    pub relay_threads_pct: Value,
}

impl Measured {
    pub fn from_loadgen(cpu_us: u64, window_s: f64, background_us: u64, loadgen: Value) -> Self {
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        Self {
            cpu_us,
            window_s,
            background_pct: pct_of_core(background_us, window_s),
            received: loadgen["received"].as_u64().unwrap_or(0),
            loss_pct: f(&loadgen["loss_pct"]),
            p50_us: f(&loadgen["latency_us"]["p50"]),
            p99_us: f(&loadgen["latency_us"]["p99"]),
            achieved_pps: f(&loadgen["achieved_send_pps"]),
            loadgen,
            relay_counters: None,
            relay_threads_pct: Value::Null,
        }
    }

    /// The key figure: relay CPU time per packet that reached the sink.
    pub fn cpu_us_per_pkt(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.cpu_us as f64 / self.received as f64
        }
    }

    /// Relay CPU use over the window, in percent of one core.
    pub fn cpu_pct(&self) -> f64 {
        pct_of_core(self.cpu_us, self.window_s)
    }
}

/// `us` of CPU time over `window_s` seconds, in percent of one core.
fn pct_of_core(us: u64, window_s: f64) -> f64 {
    if window_s > 0.0 {
        us as f64 / 1e4 / window_s
    } else {
        f64::NAN
    }
}

#[derive(Debug, Clone)]
pub struct Trial {
    pub variant: String,
    pub flows: usize,
    pub repeat: usize,
    pub outcome: Result<Measured, String>,
}

impl Trial {
    pub fn to_json(&self) -> Value {
        let head = json!({ "variant": self.variant, "flows": self.flows, "repeat": self.repeat });
        let mut obj = head.as_object().cloned().unwrap_or_default();
        match &self.outcome {
            Ok(m) => {
                obj.insert("cpu_us".into(), json!(m.cpu_us));
                obj.insert("window_s".into(), json!(m.window_s));
                obj.insert("cpu_us_per_pkt".into(), num(m.cpu_us_per_pkt()));
                obj.insert("relay_cpu_pct".into(), num(m.cpu_pct()));
                obj.insert("background_cpu_pct".into(), num(m.background_pct));
                obj.insert("relay_threads_cpu_pct".into(), m.relay_threads_pct.clone());
                obj.insert("loadgen".into(), m.loadgen.clone());
                obj.insert(
                    "relay_counters".into(),
                    m.relay_counters.clone().unwrap_or(Value::Null),
                );
            }
            Err(e) => {
                obj.insert("error".into(), json!(e));
            }
        }
        Value::Object(obj)
    }
}

/// Medians of one (flows, variant) cell.
#[derive(Debug, Clone)]
pub struct Summary {
    pub flows: usize,
    pub variant: String,
    pub ok: usize,
    pub total: usize,
    pub cpu_us_per_pkt: f64,
    pub cpu_pct: f64,
    pub loss_pct: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub achieved_pps: f64,
    pub background_pct: f64,
    /// cpu_us_per_pkt relative to the baseline variant of the same case.
    pub ratio: f64,
    pub errors: Vec<String>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One summary per case and variant, in the order given; ratios are against `variants[0]`.
pub fn summarize(trials: &[Trial], flow_cases: &[usize], variants: &[String]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &flows in flow_cases {
        let mut baseline = f64::NAN;
        for (vi, variant) in variants.iter().enumerate() {
            let cell: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.flows == flows && &t.variant == variant)
                .collect();
            let ok: Vec<&Measured> = cell
                .iter()
                .filter_map(|t| t.outcome.as_ref().ok())
                .collect();
            let med = |f: fn(&Measured) -> f64| median(ok.iter().map(|m| f(m)).collect());
            let cpu = med(Measured::cpu_us_per_pkt);
            if vi == 0 {
                baseline = cpu;
            }
            let mut errors: Vec<String> = cell
                .iter()
                .filter_map(|t| t.outcome.as_ref().err().cloned())
                .collect();
            errors.dedup();
            out.push(Summary {
                flows,
                variant: variant.clone(),
                ok: ok.len(),
                total: cell.len(),
                cpu_us_per_pkt: cpu,
                cpu_pct: med(Measured::cpu_pct),
                loss_pct: med(|m| m.loss_pct),
                p50_us: med(|m| m.p50_us),
                p99_us: med(|m| m.p99_us),
                achieved_pps: med(|m| m.achieved_pps),
                background_pct: med(|m| m.background_pct),
                ratio: cpu / baseline,
                errors,
            });
        }
    }
    out
}

fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

fn cell(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "n/a".into()
    }
}

pub fn markdown(summaries: &[Summary], baseline: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| flows | variant | ok | relay CPU µs/pkt | vs {baseline} | relay CPU % | loss % | p50 µs | p99 µs | achieved pps | other CPU % |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.flows,
            r.variant,
            r.ok,
            r.total,
            cell(r.cpu_us_per_pkt, 3),
            if r.ratio.is_finite() {
                format!("{:.2}x", r.ratio)
            } else {
                "n/a".into()
            },
            cell(r.cpu_pct, 1),
            cell(r.loss_pct, 3),
            cell(r.p50_us, 1),
            cell(r.p99_us, 1),
            cell(r.achieved_pps, 0),
            cell(r.background_pct, 1),
        );
    }
    for r in summaries.iter().filter(|r| !r.errors.is_empty()) {
        let _ = writeln!(
            s,
            "\n{} flows, {}: {}",
            r.flows,
            r.variant,
            r.errors.join("; ")
        );
    }
    s
}

pub fn summary_json(r: &Summary) -> Value {
    json!({
        "flows": r.flows, "variant": r.variant, "trials_ok": r.ok, "trials": r.total,
        "median_cpu_us_per_pkt": num(r.cpu_us_per_pkt), "ratio_vs_baseline": num(r.ratio),
        "median_relay_cpu_pct": num(r.cpu_pct), "median_loss_pct": num(r.loss_pct),
        "median_p50_us": num(r.p50_us), "median_p99_us": num(r.p99_us),
        "median_achieved_pps": num(r.achieved_pps),
        "median_background_cpu_pct": num(r.background_pct), "errors": r.errors,
    })
}
