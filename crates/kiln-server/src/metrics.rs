//! `/metrics`: a Prometheus registry of kiln's counters and histograms (atomics; counting a
//! request finds its labels' counter under a read lock), and the engine's gauges and counters
//! read from its stats when scraped, in the Prometheus text format.

use kiln_engine::EngineStats;
use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// Bucket bounds of the time to first token, seconds.
const TTFT: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds of the time between tokens, seconds.
const ITL: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Endpoints counted separately.
pub const ENDPOINTS: &[&str] = &[
    "chat_completions",
    "completions",
    "models",
    "ising_empathy",
    "ising_social",
    "embeddings",
    "tokenize",
    "detokenize",
    "other",
];
/// Statuses counted separately (every one the server answers with); any other is counted
/// as 500.
const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
];

/// Everything `/metrics` shows.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// Prompt tokens processed.
    pub prompt_tokens: IntCounter,
    /// Tokens generated.
    pub generated_tokens: IntCounter,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of a stream.
    pub itl: Histogram,
}

/// Registers `m` with `r`; a name taken twice or an invalid one is a bug of this module.
fn registered<M: Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("each metric is registered once, under a valid name");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kiln_requests_total",
                "HTTP requests by endpoint and status.",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let histogram = |name: &str, help: &str, bounds: &[f64]| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(bounds.to_vec()))
                .expect("valid metric")
        };
        Metrics {
            requests: registered(&registry, requests),
            prompt_tokens: registered(
                &registry,
                IntCounter::new("kiln_prompt_tokens_total", "Prompt tokens processed.")
                    .expect("valid metric"),
            ),
            generated_tokens: registered(
                &registry,
                IntCounter::new("kiln_generation_tokens_total", "Tokens generated.")
                    .expect("valid metric"),
            ),
            ttft: registered(
                &registry,
                histogram(
                    "kiln_time_to_first_token_seconds",
                    "Seconds from request to first generated token.",
                    TTFT,
                ),
            ),
            itl: registered(
                &registry,
                histogram(
                    "kiln_inter_token_latency_seconds",
                    "Seconds between consecutive generated tokens of a request.",
                    ITL,
                ),
            ),
            registry,
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn request(&self, endpoint: &str, status: u16) {
        let endpoint = ENDPOINTS
            .iter()
            .find(|&&x| x == endpoint)
            .unwrap_or(&"other");
        let status = STATUSES
            .iter()
            .find(|s| s.0 == status)
            .map_or("500", |s| s.1);
        self.requests.with_label_values(&[*endpoint, status]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut families = self.registry.gather();
        if let Some(s) = engine {
            families.extend(engine_families(s));
        }
        let mut out = Vec::with_capacity(4096);
        // Only an invalid family fails to encode, and none is built here.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The engine's gauges and counters, read from its stats now.
fn engine_families(s: &EngineStats) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let gauge = |out: &mut Vec<MetricFamily>, name: &str, help: &str, v: usize| {
        let g = IntGauge::new(name, help).expect("valid metric");
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        out.extend(g.collect());
    };
    gauge(
        &mut out,
        "kiln_queue_depth",
        "Requests waiting for admission.",
        s.waiting,
    );
    gauge(
        &mut out,
        "kiln_running_sequences",
        "Sequences running.",
        s.running,
    );
    gauge(
        &mut out,
        "kiln_kv_blocks_used",
        "KV cache blocks in use.",
        s.blocks_used,
    );
    gauge(
        &mut out,
        "kiln_kv_blocks_free",
        "KV cache blocks free.",
        s.blocks_free,
    );
    // The gauges the Gateway API Inference Extension's endpoint picker (and llm-d's) read
    // from a model server, under vLLM's names.
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
            s.kv_cache_usage(),
        ),
    ] {
        let g = Gauge::new(name, help).expect("valid metric");
        g.set(v);
        out.extend(g.collect());
    }
    let info = GaugeVec::new(
        Opts::new("vllm:cache_config_info", "The KV cache's configuration."),
        &["block_size", "num_gpu_blocks"],
    )
    .expect("valid metric");
    info.with_label_values(&[
        s.block_size.to_string(),
        (s.blocks_used + s.blocks_free).to_string(),
    ])
    .set(1.0);
    out.extend(info.collect());
    let int_counter = |out: &mut Vec<MetricFamily>, name: &str, help: &str, v: u64| {
        let c = IntCounter::new(name, help).expect("valid metric");
        c.inc_by(v);
        out.extend(c.collect());
    };
    int_counter(
        &mut out,
        "vllm:prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache.",
        s.prefix_queried_tokens,
    );
    int_counter(
        &mut out,
        "vllm:prefix_cache_hits_total",
        "Prompt tokens found in the prefix cache.",
        s.prefix_hit_tokens,
    );
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
            "kiln_engine_mask_longest_seconds_total",
            "Beside a device: the longest token mask each step waited for, summed over steps.",
            s.mask_longest_seconds,
        ),
        (
            "kiln_engine_mask_sit_outs_total",
            "Beside a device: sequences that sat a step out because their token mask was still being computed when the pass ended.",
            s.mask_sit_outs as f64,
        ),
        (
            "kiln_engine_mask_last_start_seconds_total",
            "Beside a device: how long after a step's masks were handed to the host's threads the last of them started, summed over steps.",
            s.mask_last_start_seconds,
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
            "kiln_engine_prepare_seconds_total",
            "Of the engine's own seconds, those from a step's start to its pass's launch.",
            s.prepare_seconds,
        ),
        (
            "kiln_engine_accept_seconds_total",
            "Of the engine's own seconds, those after a step's tokens came back.",
            s.accept_seconds,
        ),
        (
            "kiln_engine_host_cpu_seconds_total",
            "The engine thread's processor time over the prepare and accept seconds (Linux).",
            s.host_cpu_seconds,
        ),
        (
            "kiln_engine_launch_cpu_seconds_total",
            "The engine thread's processor time over the launch seconds (Linux).",
            s.launch_cpu_seconds,
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
        let c = Counter::new(name, help).expect("valid metric");
        c.inc_by(v.max(0.0));
        out.extend(c.collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text's families (each its `# HELP` line, `# TYPE` line and samples), in name order.
    fn families(text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") || out.is_empty() {
                out.push(String::new());
            }
            let f = out.last_mut().unwrap();
            f.push_str(line);
            f.push('\n');
        }
        out.sort();
        out
    }

    /// Every endpoint the server routes and every status it answers with is counted apart
    /// (403, 415, 408 and 204 were once filed under 500, embeddings and tokenizing under
    /// `other`).
    #[test]
    fn every_endpoint_and_status_is_counted_apart() {
        let m = Metrics::default();
        for (e, s) in [
            ("embeddings", 403),
            ("tokenize", 415),
            ("detokenize", 408),
            ("models", 204),
            ("completions", 405),
        ] {
            m.request(e, s);
            let text = m.render(None);
            let line = format!("kiln_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} 1");
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }

    /// Every name, help text, type, label and bucket bound, and the values, as `/metrics`
    /// wrote them by hand before the prometheus crate (tests/metrics_golden.txt); only the
    /// order of the families may differ.
    #[test]
    fn the_exposition_keeps_its_names_labels_and_buckets() {
        let m = Metrics::default();
        m.request("chat_completions", 200);
        m.request("chat_completions", 200);
        // Endpoints and statuses not counted apart fall into `other` and 500.
        m.request("teapot", 418);
        m.request("models", 401);
        m.prompt_tokens.inc_by(7);
        m.generated_tokens.inc_by(5);
        m.ttft.observe(0.2);
        m.ttft.observe(3.0);
        m.itl.observe(0.0125);
        let s = EngineStats {
            waiting: 2,
            running: 3,
            blocks_used: 10,
            blocks_free: 54,
            steps: 100,
            preemptions: 1,
            model_seconds: 1.5,
            host_seconds: 0.25,
            stream_seconds: 0.125,
            mask_seconds: 0.5,
            masks: 40,
            mask_longest_seconds: 0.25,
            mask_sit_outs: 7,
            mask_last_start_seconds: 0.125,
            launch_seconds: 0.75,
            mask_wait_seconds: 0.0625,
            sampling_launch_seconds: 0.03125,
            finish_seconds: 2.0,
            prepare_seconds: 0.0625,
            accept_seconds: 0.03125,
            host_cpu_seconds: 0.09375,
            launch_cpu_seconds: 0.5,
            draft_tokens: 30,
            accepted_tokens: 20,
            draft_passes: 12,
            draft_seconds: 0.375,
            block_size: 16,
            prefix_queried_tokens: 640,
            prefix_hit_tokens: 320,
        };
        let golden = include_str!("../tests/metrics_golden.txt");
        assert_eq!(families(&m.render(Some(&s))), families(golden));
        // Without a model, kiln's own families alone.
        let own: Vec<String> = families(golden)
            .into_iter()
            .filter(|f| {
                let name = f.split_whitespace().nth(2).unwrap();
                !name.starts_with("vllm:")
                    && !name.starts_with("kiln_engine_")
                    && !name.starts_with("kiln_kv_")
                    && name != "kiln_queue_depth"
                    && name != "kiln_running_sequences"
            })
            .collect();
        assert_eq!(families(&m.render(None)), own);
    }

    #[test]
    fn a_scrape_of_a_fresh_server_is_valid() {
        let m = Metrics::default();
        let text = m.render(Some(&EngineStats::default()));
        assert!(text.contains("kiln_time_to_first_token_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(text.contains("vllm:kv_cache_usage_perc 0\n"), "{text}");
        assert!(text.contains("kiln_prompt_tokens_total 0\n"), "{text}");
    }
}
