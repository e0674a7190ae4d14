//! `kiln chat`: an interactive conversation.

use std::io::{BufRead, Write};

use clap::Args;
use kiln_tokenizer::chat::Message;

use crate::common::{ask, single, ModelArgs, SampleArgs};

/// Arguments of `kiln chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    /// A system message (replaces the template's default one).
    #[arg(long)]
    pub system: Option<String>,
    /// Refine every answer with this profile (edge, desktop, research or a YAML file), score
    /// it with SNARC and store it in the memory file.
    #[arg(long, value_name = "PROFILE")]
    pub refine: Option<String>,
    /// With --refine: the memory file [default: $KILN_MEMORY or ~/.local/share/kiln/memory.db].
    #[arg(long, requires = "refine")]
    pub memory: Option<std::path::PathBuf>,
    /// With --refine: when a stored exchange is on disk: full (durable across a power cut)
    /// or normal (across a killed process; faster commits).
    #[arg(long, value_enum, default_value_t = crate::irp::MemorySync::Full, requires = "refine")]
    pub memory_sync: crate::irp::MemorySync,
}

/// Runs `kiln chat`: one line per user turn; `/reset` forgets, `/exit` or end of input quits.
pub fn chat(a: ChatArgs) -> anyhow::Result<()> {
    if let Some(profile) = &a.refine {
        return crate::irp::chat_refined(
            profile,
            &a.model,
            a.system.as_deref(),
            a.memory.as_ref(),
            a.memory_sync,
        );
    }
    let mut params = a.sample.params()?;
    params.draft_max = a.model.draft_max();
    let m = single(&a.model, false, None)?;
    let ctx = m.context_length;
    let fresh = || -> Vec<Message> {
        a.system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect()
    };
    let mut history = fresh();
    eprintln!(
        "kiln: chat with {} — /reset to start over, /exit to quit",
        m.id
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut line = String::new();
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("kiln: conversation cleared");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", msg));
        let mut ids = m.template.encode(&m.tokenizer, &history, true)?;
        // Forget the oldest exchanges when the conversation outgrows the context.
        while ids.len() + params.max_tokens.min(256) > ctx && history.len() > 1 {
            let first_user = history.iter().position(|h| h.role != "system").unwrap_or(0);
            history.remove(first_user);
            ids = m.template.encode(&m.tokenizer, &history, true)?;
        }
        let mut p = params.clone();
        p.seed = params.seed.map(|s| s.wrapping_add(turn));
        turn += 1;
        let g = ask(&m, ids, p, None, |piece| {
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })?;
        writeln!(out)?;
        history.push(Message::new("assistant", g.text.trim().to_owned()));
    }
    Ok(())
}
