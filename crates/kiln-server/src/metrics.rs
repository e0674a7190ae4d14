//! Prometheus counters and histograms, kept with atomics: no lock on the request path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_engine::EngineStats;

/// A histogram with fixed bucket bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Records one observation in seconds.
    pub fn observe(&self, secs: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us
            .fetch_add((secs * 1e6).max(0.0) as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

const TTFT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const ITL: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Endpoints counted separately.
pub const ENDPOINTS: &[&str] = &[
    "chat_completions",
    "completions",
    "models",
    "ising_empathy",
    "ising_social",
    "other",
];
const STATUSES: &[u16] = &[200, 400, 401, 404, 413, 422, 429, 500, 503];

/// Everything `/metrics` shows.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of a stream.
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: (0..ENDPOINTS.len() * STATUSES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT),
            itl: Histogram::new(ITL),
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let e = ENDPOINTS
            .iter()
            .position(|&x| x == endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or_else(|| STATUSES.iter().position(|&x| x == 500).unwrap_or(0));
        self.requests[e * STATUSES.len() + s].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP kiln_requests_total HTTP requests by endpoint and status.\n# TYPE kiln_requests_total counter\n");
        for (ei, e) in ENDPOINTS.iter().enumerate() {
            for (si, s) in STATUSES.iter().enumerate() {
                let n = self.requests[ei * STATUSES.len() + si].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "kiln_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}"
                    );
                }
            }
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "kiln_prompt_tokens_total",
            "Prompt tokens processed.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kiln_generation_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Ordering::Relaxed),
        );
        self.ttft.render(
            "kiln_time_to_first_token_seconds",
            "Seconds from request to first generated token.",
            &mut out,
        );
        self.itl.render(
            "kiln_inter_token_latency_seconds",
            "Seconds between consecutive generated tokens of a request.",
            &mut out,
        );
        if let Some(s) = engine {
            for (name, help, v) in [
                (
                    "kiln_queue_depth",
                    "Requests waiting for admission.",
                    s.waiting,
                ),
                ("kiln_running_sequences", "Sequences running.", s.running),
                (
                    "kiln_kv_blocks_used",
                    "KV cache blocks in use.",
                    s.blocks_used,
                ),
                (
                    "kiln_kv_blocks_free",
                    "KV cache blocks free.",
                    s.blocks_free,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            // The gauges the Gateway API Inference Extension's endpoint picker (and llm-d's)
            // read from a model server, under vLLM's names.
            let total = s.blocks_used + s.blocks_free;
            let usage = s.kv_cache_usage();
            for (name, help, v) in [
                (
                    "vllm:num_requests_running",
                    "Requests running (kiln's sequences running).",
                    s.running as f64,
                ),
                (
                    "vllm:num_requests_waiting",
                    "Requests waiting for admission.",
                    s.waiting as f64,
                ),
                (
                    "vllm:kv_cache_usage_perc",
                    "Fraction of the KV cache's blocks in use, 0 to 1.",
                    usage,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP vllm:cache_config_info The KV cache's configuration.\n# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{total}\"}} 1",
                s.block_size
            );
            for (name, help, v) in [
                (
                    "vllm:prefix_cache_queries_total",
                    "Prompt tokens looked up in the prefix cache.",
                    s.prefix_queried_tokens,
                ),
                (
                    "vllm:prefix_cache_hits_total",
                    "Prompt tokens found in the prefix cache.",
                    s.prefix_hit_tokens,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
            for (name, help, v) in [
                (
                    "kiln_engine_steps_total",
                    "Engine steps run.",
                    s.steps as f64,
                ),
                (
                    "kiln_engine_model_seconds_total",
                    "Seconds of engine steps spent in the model's passes and sampling.",
                    s.model_seconds,
                ),
                (
                    "kiln_engine_host_seconds_total",
                    "Seconds of engine steps spent in the engine's own work (scheduling, streaming).",
                    s.host_seconds,
                ),
                (
                    "kiln_engine_stream_seconds_total",
                    "Of the engine's own seconds, those spent streaming tokens while the device ran the next step.",
                    s.stream_seconds,
                ),
                (
                    "kiln_engine_mask_seconds_total",
                    "Seconds host threads spent computing the token masks of constrained sequences, summed over threads.",
                    s.mask_seconds,
                ),
                (
                    "kiln_engine_masks_total",
                    "Token masks computed (one per constrained sequence per step).",
                    s.masks as f64,
                ),
                (
                    "kiln_engine_launch_seconds_total",
                    "Seconds launching passes on a device that runs apart from the host.",
                    s.launch_seconds,
                ),
                (
                    "kiln_engine_mask_wait_seconds_total",
                    "Seconds waiting, after launching a pass, for the step's token masks.",
                    s.mask_wait_seconds,
                ),
                (
                    "kiln_engine_sampling_launch_seconds_total",
                    "Seconds launching the sampling of passes (with the upload of token masks).",
                    s.sampling_launch_seconds,
                ),
                (
                    "kiln_engine_finish_seconds_total",
                    "Seconds waiting for a step's tokens from a device that runs apart from the host.",
                    s.finish_seconds,
                ),
                (
                    "kiln_engine_draft_tokens_total",
                    "Tokens prompt lookup or the draft model proposed.",
                    s.draft_tokens as f64,
                ),
                (
                    "kiln_engine_draft_passes_total",
                    "Passes of the draft model (one per proposed position, its sequences batched).",
                    s.draft_passes as f64,
                ),
                (
                    "kiln_engine_draft_seconds_total",
                    "Seconds spent in the draft model's passes.",
                    s.draft_seconds,
                ),
                (
                    "kiln_engine_accepted_tokens_total",
                    "Proposed tokens the model's own choice confirmed.",
                    s.accepted_tokens as f64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
            }
        }
        out
    }
}
