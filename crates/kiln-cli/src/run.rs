//! `kiln run`: one prompt, one streamed answer.

use std::io::{Read, Write};

use clap::Args;
use kiln_tokenizer::chat::Message;

use crate::common::{ask, single, ModelArgs, SampleArgs};

/// Positions the chat template (system prompt, role markers) may add around the prompt.
const TEMPLATE_ROOM: usize = 256;

/// Arguments of `kiln run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The prompt (read from standard input when absent).
    pub prompt: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Use the prompt as it is: no chat template (special tokens in it are still parsed).
    #[arg(long)]
    pub raw: bool,
    /// A system message (replaces the template's default one).
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object (prompt_ids, ids, text, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// The answer is JSON valid under the JSON schema in this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["grammar", "regex"])]
    pub json_schema: Option<std::path::PathBuf>,
    /// The answer follows the grammar in this file (llguidance's Lark dialect).
    #[arg(long, value_name = "FILE", conflicts_with = "regex")]
    pub grammar: Option<std::path::PathBuf>,
    /// The answer is matched whole by this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub regex: Option<String>,
}

/// The grammar the answer must follow, from `--json-schema`, `--grammar` or `--regex`.
fn grammar(a: &RunArgs) -> anyhow::Result<Option<kiln_engine::Grammar>> {
    use anyhow::Context;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(if let Some(p) = &a.json_schema {
        let v = serde_json::from_str(&read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        Some(kiln_engine::Grammar::JsonSchema(v))
    } else if let Some(p) = &a.grammar {
        Some(kiln_engine::Grammar::Lark(read(p)?))
    } else {
        a.regex.clone().map(kiln_engine::Grammar::Regex)
    })
}

/// Runs `kiln run`: one request through the engine.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut params = a.sample.params()?;
    params.draft_max = a.model.draft_max();
    let grammar = grammar(&a)?;
    let prompt = match a.prompt {
        Some(p) => p,
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
    };
    // A token covers at least one byte of the prompt, and the chat template adds its own few:
    // the cache needs no more than this (the old single-sequence cache's size).
    let system = a.system.as_ref().map_or(0, String::len);
    let positions = prompt
        .len()
        .saturating_add(system)
        .saturating_add(TEMPLATE_ROOM)
        .saturating_add(params.max_tokens);
    let lm = single(&a.model, a.json, Some(positions))?;
    let ids = if a.raw {
        lm.tokenizer.encode(&prompt, true, true)
    } else {
        let mut msgs = Vec::new();
        if let Some(sys) = &a.system {
            msgs.push(Message::new("system", sys.clone()));
        }
        msgs.push(Message::new("user", prompt));
        // Control tokens only where the template writes them, never from the message.
        lm.template.encode(&lm.tokenizer, &msgs, true)?
    };
    if grammar.is_some() && params.prompt_lookup > 0 {
        anyhow::bail!("--prompt-lookup does not combine with --json-schema, --grammar or --regex");
    }
    if grammar.is_some() && params.draft_max > 0 {
        anyhow::bail!("--draft does not combine with --json-schema, --grammar or --regex");
    }
    let constraint = match &grammar {
        Some(g) => {
            let gs = kiln_engine::Grammars::new(lm.tokenizer.clone(), lm.tokenizer.vocab_size())?;
            Some(Box::new(gs.compile(g).map_err(|e| {
                anyhow::anyhow!("the grammar cannot be used: {e}")
            })?))
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    let json = a.json;
    let g = ask(&lm, ids.clone(), params, constraint, |piece| {
        // A closed pipe ends generation quietly.
        json || out
            .write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    let stats = lm.engine.stats();
    lm.engine.shutdown();
    if json {
        let v = serde_json::json!({
            "prompt_ids": ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": g.finish,
            "timings": {
                "load_s": lm.load_s,
                "prefill_tok_s": g.prefill_tok_s(),
                "decode_tok_s": g.decode_tok_s(),
            },
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        eprintln!(
            "kiln: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({:?})",
            ids.len(),
            g.prefill_tok_s(),
            g.ids.len(),
            g.decode_tok_s(),
            g.finish
        );
        if stats.draft_passes > 0 {
            eprintln!(
                "kiln: draft model: {} of {} proposed tokens taken; {} draft passes took {:.2} s of the {:.2} s in the models",
                stats.accepted_tokens, stats.draft_tokens, stats.draft_passes, stats.draft_seconds, stats.model_seconds
            );
        } else if stats.draft_tokens > 0 {
            eprintln!(
                "kiln: prompt lookup: {} of {} proposed tokens taken",
                stats.accepted_tokens, stats.draft_tokens
            );
        }
    }
    Ok(())
}
