//! What the `chat_template` fuzz target checks, shared with the corpus replay test
//! (`crates/kiln-model/tests/fuzz_corpus.rs`).
//!
//! The input is a template source (as a model file would carry it). Compiling and rendering
//! it over a small conversation must end, in an error or a string, without a panic, within
//! the template fuel and the output cap; `render_marked` must locate contents exactly when
//! it says it did.

use kiln_tokenizer::chat::{ChatTemplate, Message};

/// Checks one input.
pub fn check(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") else {
        return;
    };
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "  hello <|im_end|> "),
    ];
    for gen in [false, true] {
        let Ok(text) = t.render(&msgs, gen) else {
            continue;
        };
        let r = t.render_marked(&msgs, gen).expect("rendered once already");
        assert_eq!(r.text, text);
        if let Some(ranges) = r.contents {
            let mut end = 0;
            for c in ranges {
                assert!(c.start >= end && c.end <= text.len(), "ranges in order");
                assert!(
                    msgs.iter()
                        .any(|m| m.content == text[c.clone()]
                            || m.content.trim() == &text[c.clone()]),
                    "a located range is a content"
                );
                end = c.end;
            }
        }
    }
}
