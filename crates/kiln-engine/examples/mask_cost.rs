//! What constrained decoding costs the host per step: N sequences under the JSON schema of
//! `scripts/structured_bench.py`, each step a mask per sequence (and the token it then
//! chooses, drawn from the allowed ones), on one thread and shared over T threads as the
//! engine does beside a device.
//!
//! ```sh
//! cargo run --release -p kiln-engine --example mask_cost -- [MODEL.gguf | HF_FOLDER | default] [N] [STEPS] [unbounded | replay=DIR]
//! ```
//! Without a model (or with `default`) it takes the default model (fetched if missing). After
//! a first pass that is not timed (the token sets are built when first taken), prints
//! microseconds per step and per mask for each thread count, then, on one thread, the masks
//! by how many tokens they allow (one: a forced token; 10,000 or more: inside a string) with
//! their mean cost, in microseconds and in token trie nodes walked (a count of the work that
//! is the same on every machine). `unbounded` drops the string's `maxLength` from the schema. `replay=DIR`
//! takes each sequence's tokens from a text in DIR (sequence i the i-th file, round robin;
//! answers a model wrote under the schema, e.g. `kiln run --json-schema`), so that the masks
//! are those of real answers; STEPS is then cut to the shortest text. Last, from the
//! one-thread costs, how long a step's masks would take on 8 and 16 threads that take them in
//! sequence order or the dearest first (by each sequence's last mask), as the engine does.

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::{Constraint, Grammar, Grammars};
use kiln_tokenizer::Tokenizer;
use rayon::prelude::*;
use serde_json::json;

fn tokenizer(arg: Option<&str>) -> Tokenizer {
    let path = match arg {
        Some(p) => std::path::PathBuf::from(p),
        None => kiln_model::fetch::ensure_default_model(true).expect("the default model"),
    };
    if path.is_dir() {
        let cfg = path.join("tokenizer_config.json");
        Tokenizer::from_hf_files(
            &path.join("tokenizer.json"),
            cfg.exists().then_some(cfg.as_path()),
            &[],
        )
        .expect("tokenizer.json")
    } else {
        let f = kiln_formats::gguf::GgufFile::open(&path).expect("a GGUF file");
        Tokenizer::from_gguf(&f).expect("its tokenizer")
    }
}

fn schema(bounded: bool) -> serde_json::Value {
    let name = if bounded {
        json!({"type": "string", "maxLength": 16})
    } else {
        json!({"type": "string"})
    };
    let item = json!({
        "type": "object",
        "properties": {
            "name_bench": name,
            "count": {"type": "integer", "minimum": 0, "maximum": 1000},
            "kind": {"enum": ["alpha", "beta", "gamma"]}
        },
        "required": ["name_bench", "count", "kind"],
        "additionalProperties": false
    });
    json!({
        "type": "object",
        "properties": {"items": {"type": "array", "items": item, "minItems": 1000}},
        "required": ["items"],
        "additionalProperties": false
    })
}

/// One step of one sequence: its mask, then a token it allows (`given`, or one a hash of the
/// step picks among them, so that every run makes the same choices). Returns the mask's cost
/// in microseconds and in token trie nodes walked (a count the same on every machine), and how
/// many tokens it allows.
fn step(c: &mut Constraint, mask: &mut [u32], k: usize, given: Option<u32>) -> (f64, usize, u32) {
    let t = Instant::now();
    c.fill_mask(mask).expect("a mask");
    let us = t.elapsed().as_secs_f64() * 1e6;
    let nodes = c.last_trie_nodes();
    let total: u32 = mask.iter().map(|w| w.count_ones()).sum();
    if let Some(id) = given {
        let allowed = mask
            .get(id as usize / 32)
            .is_some_and(|w| (w >> (id % 32)) & 1 == 1);
        assert!(
            allowed,
            "the replayed text's token {id} is not allowed by its mask"
        );
        c.push(id);
        return (us, nodes, total);
    }
    let mut left = (k.wrapping_mul(2_654_435_761) % total.max(1) as usize) as u32;
    for (w, &bits) in mask.iter().enumerate() {
        let n = bits.count_ones();
        if left < n {
            let b = (0..32)
                .filter(|b| (bits >> b) & 1 == 1)
                .nth(left as usize)
                .unwrap_or(0);
            c.push((w * 32 + b) as u32);
            return (us, nodes, total);
        }
        left -= n;
    }
    (us, nodes, total)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().map(String::as_str).filter(|m| *m != "default");
    let tok = Arc::new(tokenizer(model));
    let count = |i: usize, what: &str, default: usize| -> usize {
        args.get(i).map_or(default, |s| match s.parse() {
            Ok(v) if v > 0 => v,
            _ => panic!("{what}: a positive number, not {s:?}"),
        })
    };
    let n = count(1, "N (sequences)", 64);
    let mut steps = count(2, "STEPS", 100);
    let t = Instant::now();
    let g = Grammars::new(tok.clone(), tok.vocab_size()).expect("grammars");
    println!(
        "vocabulary {}, token trie built in {:.1} ms",
        tok.vocab_size(),
        t.elapsed().as_secs_f64() * 1e3
    );
    // Tokens that are whole strings of JSON string characters, by length: those longer than
    // the largest bounded token set (16 characters) are walked whenever a string has room.
    let (mut in_strings, mut longer) = (0, 0);
    let mut w = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        w.clear();
        tok.token_bytes(id, false, &mut w);
        let Ok(text) = std::str::from_utf8(&w) else {
            continue;
        };
        if text.is_empty()
            || text
                .chars()
                .any(|c| matches!(c, '"' | '\\' | '\0'..='\x1f' | '\x7f'))
        {
            continue;
        }
        in_strings += 1;
        longer += usize::from(text.chars().count() > 16);
    }
    println!("{in_strings} tokens are JSON string characters alone, {longer} of them more than 16");
    let t = Instant::now();
    let (bounded, replay) = match args.get(3).map(String::as_str) {
        None => (true, None),
        Some("unbounded") => (false, None),
        Some(a) if a.starts_with("replay=") => (true, Some(&a["replay=".len()..])),
        Some(other) => {
            panic!("the fourth argument: `unbounded`, `replay=DIR` or nothing, not {other:?}")
        }
    };
    let texts: Vec<Vec<u32>> = match replay {
        None => Vec::new(),
        Some(dir) => {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("{dir}: {e}"))
                .map(|e| e.expect("a directory entry").path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(f)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                    tok.encode(text.trim_end(), false, false)
                })
                .collect()
        }
    };
    if let Some(i) = texts.iter().position(Vec::is_empty) {
        panic!(
            "replay: text {} of {:?} has no tokens",
            i + 1,
            replay.unwrap_or("")
        );
    }
    if let Some(shortest) = texts.iter().map(Vec::len).min() {
        steps = steps.min(shortest);
        println!("{} texts replayed, {steps} steps", texts.len());
    }
    let given = |i: usize, s: usize| (!texts.is_empty()).then(|| texts[i % texts.len()][s]);
    let base = g
        .compile(&Grammar::JsonSchema(schema(bounded)))
        .expect("compiles");
    println!(
        "schema compiled in {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let words = kiln_model::sample::mask_words(g.width());
    let max_threads = rayon::current_num_threads();
    let mut counts = vec![1usize];
    while counts.last().is_some_and(|&c| c * 2 <= max_threads) {
        counts.push(counts.last().unwrap() * 2);
    }
    // On one thread: (masks, microseconds) by the allowed set's size.
    let classes = ["1", "2-99", "100-9,999", "10,000+"];
    let mut by_size = [(0usize, 0f64, 0usize); 4];
    // On one thread: the most nodes one mask walked.
    let mut most_nodes = 0;
    // On one thread: each step's (cost, the sequence's last cost) a mask, in microseconds.
    let mut costs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut last = vec![0f64; n];
    // A first pass on all threads, not timed: the token sets' tries are built when a mask
    // first takes them (once a process), which this leaves out of the figures.
    for (warm, threads) in [(true, max_threads)]
        .into_iter()
        .chain(counts.into_iter().map(|c| (false, c)))
    {
        let mut cs: Vec<Constraint> = (0..n).map(|_| base.clone()).collect();
        let mut masks = vec![0u32; n * words];
        let t = Instant::now();
        for s in 0..steps {
            let mut jobs: Vec<(usize, &mut Constraint, &mut [u32])> = cs
                .iter_mut()
                .zip(masks.chunks_mut(words))
                .enumerate()
                .map(|(i, (c, m))| (i, c, m))
                .collect();
            let run = |part: &mut [(usize, &mut Constraint, &mut [u32])]| {
                for (i, c, m) in part.iter_mut() {
                    step(c, m, s * 1000 + *i, given(*i, s));
                }
            };
            if threads == 1 && !warm {
                costs.push(Vec::with_capacity(n));
                for (i, c, m) in jobs.iter_mut() {
                    let (us, nodes, allowed) = step(c, m, s * 1000 + *i, given(*i, s));
                    let k = match allowed {
                        0 | 1 => 0,
                        2..=99 => 1,
                        100..=9_999 => 2,
                        _ => 3,
                    };
                    by_size[k].0 += 1;
                    by_size[k].1 += us;
                    by_size[k].2 += nodes;
                    most_nodes = most_nodes.max(nodes);
                    costs.last_mut().expect("this step's").push((us, last[*i]));
                    last[*i] = us;
                }
            } else {
                let per = n.div_ceil(threads);
                jobs.par_chunks_mut(per).for_each(run);
            }
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / steps as f64;
        if warm {
            println!("the first pass ({threads} threads, not counted): {us:.1} us a step");
            continue;
        }
        println!(
            "{n} sequences, {threads:>2} threads: {us:8.1} us a step, {:6.1} us a mask",
            us / n as f64
        );
    }
    let (masks, nodes) = by_size.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.2));
    println!(
        "one thread: {} token trie nodes walked a mask, {most_nodes} at most; masks by the \
         tokens they allow:",
        nodes / masks.max(1)
    );
    for (name, (count, us, nodes)) in classes.iter().zip(by_size) {
        println!(
            "  {name:>10}: {count:6} masks, {:7.1} us each, {:7} trie nodes each, {:5.1}% of the time",
            us / count.max(1) as f64,
            nodes / count.max(1),
            100.0 * us / by_size.iter().map(|c| c.1).sum::<f64>().max(1e-9)
        );
    }
    for threads in [8, 16] {
        let mean = |order: fn(&mut Vec<(f64, f64)>)| -> f64 {
            let total: f64 = costs
                .iter()
                .map(|step| {
                    let mut step = step.clone();
                    order(&mut step);
                    makespan(&step, threads)
                })
                .sum();
            total / costs.len().max(1) as f64
        };
        let in_order = mean(|_| {});
        let dearest = mean(|s| s.sort_by(|a, b| b.1.total_cmp(&a.1)));
        let ideal = mean(|s| s.sort_by(|a, b| b.0.total_cmp(&a.0)));
        println!(
            "{threads:>2} threads, a step's masks from the one-thread costs: in sequence order \
             {in_order:.1} us, dearest first by the last mask {dearest:.1} us, by the mask's own \
             cost {ideal:.1} us"
        );
    }
}

/// When the last of `jobs` (costs, in the order taken) ends on `threads` threads that each
/// take the next one as they finish.
fn makespan(jobs: &[(f64, f64)], threads: usize) -> f64 {
    let mut free = vec![0f64; threads.max(1)];
    for &(cost, _) in jobs {
        let first = free
            .iter_mut()
            .min_by(|a, b| a.total_cmp(b))
            .expect("a thread");
        *first += cost;
    }
    free.into_iter().fold(0.0, f64::max)
}
