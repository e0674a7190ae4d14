//! Hugging Face `tokenizer.json` (with `tokenizer_config.json`) read into kiln's [`Tokenizer`].
//!
//! Two shapes of BPE model are understood, which cover Llama, TinyLlama, Mistral, Phi-3,
//! Qwen2, Llama 3 and GPT-2 style vocabularies:
//! - byte-level BPE: a `ByteLevel` pre-tokenizer, alone (GPT-2's split), after `Digits`, or
//!   after a `Split` whose regex is GPT-2's, Llama 3's or Qwen2's;
//! - SentencePiece-style BPE: spaces written as `▁`, either by the legacy
//!   `Prepend("▁") + Replace(" ", "▁")` normalizer or by a `Metaspace` pre-tokenizer, with
//!   `<0xNN>` byte fallback.
//!
//! Anything else (Unigram or WordPiece models, other normalizers, unknown split patterns) is
//! refused with an error naming what was found, rather than tokenized differently.
//! An `NFC` normalizer is accepted and not applied: text is taken to be NFC already, as
//! nearly all text is (llama.cpp does the same).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::{Kind, PreTokenizer, SpacePrefix, Spec, TokenType, Tokenizer, TokenizerError};

/// One pre-tokenizer step of `tokenizer.json`, flattened out of `Sequence`s.
enum Step<'a> {
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
    Split(&'a str),
    Digits,
    Metaspace(SpacePrefix),
}

fn text_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` and, if given, `tokenizer_config.json` (special tokens,
    /// `add_bos_token`); `extra_eos` adds ids that end generation (from `config.json` or
    /// `generation_config.json`).
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        extra_eos: &[u32],
    ) -> Result<Self, TokenizerError> {
        let read = |p: &Path| -> Result<Value, TokenizerError> {
            let invalid = |what: String| TokenizerError::Invalid {
                path: p.display().to_string(),
                what,
            };
            let text =
                std::fs::read_to_string(p).map_err(|e| invalid(format!("cannot read: {e}")))?;
            serde_json::from_str(&text).map_err(|e| invalid(format!("not valid JSON: {e}")))
        };
        let json = read(tokenizer_json)?;
        let cfg = tokenizer_config.map(read).transpose()?;
        Self::from_hf_json(
            &tokenizer_json.display().to_string(),
            &json,
            cfg.as_ref(),
            extra_eos,
        )
    }

    /// Builds a tokenizer from parsed `tokenizer.json` and `tokenizer_config.json` values;
    /// `path` names the file in errors.
    pub fn from_hf_json(
        path: &str,
        json: &Value,
        config: Option<&Value>,
        extra_eos: &[u32],
    ) -> Result<Self, TokenizerError> {
        Tokenizer::from_spec(hf_spec(path, json, config, extra_eos)?)
    }

    /// The `tokenizer.ggml.*` metadata of a GGUF file that holds the tokenizer these parsed
    /// `tokenizer.json` and `tokenizer_config.json` values describe, as llama.cpp reads it
    /// (what `kiln convert` writes; [`Tokenizer::from_gguf`] reads it back). A vocabulary
    /// shorter than `vocab_size` (the model's embedding rows, such as Qwen2's) is padded with
    /// unused `[PAD{id}]` entries, as llama.cpp's converter pads it.
    pub fn gguf_metadata_from_hf_json(
        path: &str,
        json: &Value,
        config: Option<&Value>,
        extra_eos: &[u32],
        vocab_size: usize,
    ) -> Result<Vec<(String, kiln_formats::gguf::Value)>, TokenizerError> {
        let mut spec = hf_spec(path, json, config, extra_eos)?;
        for id in spec.tokens.len()..vocab_size {
            spec.tokens.push(format!("[PAD{id}]"));
            spec.types.push(TokenType::Unused);
            spec.scores.push(-1000.0);
        }
        Ok(crate::export::gguf_metadata(&spec))
    }
}

/// What `tokenizer.json` (and `tokenizer_config.json`) define, checked.
fn hf_spec(
    path: &str,
    json: &Value,
    config: Option<&Value>,
    extra_eos: &[u32],
) -> Result<Spec, TokenizerError> {
    let invalid = |what: String| TokenizerError::Invalid {
        path: path.to_owned(),
        what,
    };
    let model = json
        .get("model")
        .filter(|m| m.is_object())
        .ok_or_else(|| invalid("no `model` object".into()))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if model_type != "BPE" {
        return Err(invalid(format!(
            "model type `{model_type}` is not supported (kiln reads BPE vocabularies)"
        )));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!(
                "model.{key} is set; kiln does not support it"
            )));
        }
    }
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool) == Some(true);
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool) == Some(true);

    // Vocabulary, with added tokens (which may lie past the model's own ids).
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("model.vocab is not an object".into()))?;
    let mut by_id: Vec<(u32, &str)> = Vec::with_capacity(vocab.len());
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .filter(|&i| i < (u32::MAX / 2) as u64)
            .ok_or_else(|| invalid(format!("model.vocab[`{t}`] is not a valid id")))?;
        by_id.push((id as u32, t));
    }
    struct Added<'a> {
        id: u32,
        text: &'a str,
        special: bool,
        strip: (bool, bool),
    }
    let mut added = Vec::new();
    if let Some(a) = json.get("added_tokens").filter(|v| !v.is_null()) {
        let a = a
            .as_array()
            .ok_or_else(|| invalid("added_tokens is not an array".into()))?;
        for (i, t) in a.iter().enumerate() {
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .filter(|&i| i < (u32::MAX / 2) as u64)
                .ok_or_else(|| invalid(format!("added_tokens[{i}].id is not a valid id")))?;
            let text = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(format!("added_tokens[{i}].content is not a string")))?;
            let flag = |k: &str| t.get(k).and_then(Value::as_bool) == Some(true);
            added.push(Added {
                id: id as u32,
                text,
                special: flag("special"),
                strip: (flag("lstrip"), flag("rstrip")),
            });
        }
    }
    let n = by_id
        .iter()
        .map(|&(i, _)| i)
        .chain(added.iter().map(|a| a.id))
        .max()
        .map_or(0, |m| m as usize + 1);
    if n == 0 {
        return Err(invalid("the vocabulary is empty".into()));
    }
    // Ids index a table of `n` entries: ids far past the number of entries would have a
    // small file allocate gigabytes (one id near 2^31 is 48 GiB of empty strings).
    let entries = by_id.len() + added.len();
    if n > crate::MAX_VOCAB || n > 2 * entries + 1024 {
        let field = if added.iter().any(|a| a.id as usize + 1 == n) {
            "added_tokens"
        } else {
            "model.vocab"
        };
        return Err(invalid(format!(
            "{field} holds id {}, far past the {entries} tokens the file defines",
            n - 1
        )));
    }
    let mut tokens = vec![String::new(); n];
    let mut types = vec![TokenType::Unused; n];
    for &(id, t) in &by_id {
        tokens[id as usize] = t.to_owned();
        types[id as usize] = if byte_fallback && is_byte_token(t) {
            TokenType::Byte
        } else {
            TokenType::Normal
        };
    }
    let unk = model.get("unk_token").and_then(Value::as_str);
    let mut strip = HashMap::new();
    for a in &added {
        tokens[a.id as usize] = a.text.to_owned();
        types[a.id as usize] = if Some(a.text) == unk {
            TokenType::Unknown
        } else if a.special {
            TokenType::Control
        } else {
            TokenType::UserDefined
        };
        if a.strip != (false, false) {
            strip.insert(a.id, a.strip);
        }
    }

    let mut merges = Vec::new();
    if let Some(m) = model.get("merges").filter(|v| !v.is_null()) {
        let m = m
            .as_array()
            .ok_or_else(|| invalid("model.merges is not an array".into()))?;
        merges.reserve(m.len());
        for (rank, e) in m.iter().enumerate() {
            let pair = match e {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
                Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                    (Some(l), Some(r)) => Some((l.to_owned(), r.to_owned())),
                    _ => None,
                },
                _ => None,
            };
            merges.push(pair.ok_or_else(|| {
                invalid(format!(
                    "model.merges[{rank}] is {e}, expected \"left right\" or [left, right]"
                ))
            })?);
        }
    }

    // How text is cut and spaces are written.
    let mut steps = Vec::new();
    flatten_pre(json.get("pre_tokenizer"), &mut steps).map_err(invalid)?;
    let spm_normalizer = spm_normalizer(json.get("normalizer")).map_err(invalid)?;
    let byte_level = steps.iter().find_map(|s| match s {
        Step::ByteLevel {
            add_prefix_space,
            use_regex,
        } => Some((*add_prefix_space, *use_regex)),
        _ => None,
    });
    let metaspace = steps.iter().find_map(|s| match s {
        Step::Metaspace(p) => Some(*p),
        _ => None,
    });
    let (kind, pre, space_prefix, prefix_unless_space) = if let Some((prefix, use_regex)) =
        byte_level
    {
        if prefix {
            return Err(invalid(
                "ByteLevel pre-tokenizer with add_prefix_space is not supported".into(),
            ));
        }
        let others: Vec<&Step> = steps
            .iter()
            .filter(|s| !matches!(s, Step::ByteLevel { .. }))
            .collect();
        let pre = match (others.as_slice(), use_regex) {
            ([], true) => PreTokenizer::Gpt2,
            ([Step::Digits], true) => PreTokenizer::DigitsThenGpt2,
            ([Step::Split(p)], false) => PreTokenizer::from_regex(p).ok_or_else(|| {
                invalid(format!(
                    "the split pattern {p:?} is not one kiln implements (GPT-2's, Llama 3's, Qwen2's)"
                ))
            })?,
            _ => {
                return Err(invalid(
                    "this combination of pre-tokenizers around ByteLevel is not supported"
                        .into(),
                ))
            }
        };
        (Kind::ByteBpe, pre, SpacePrefix::Never, false)
    } else if let Some(prefix) = metaspace {
        if steps.len() != 1 {
            return Err(invalid(
                "Metaspace combined with other pre-tokenizers is not supported".into(),
            ));
        }
        (Kind::Spm, PreTokenizer::Gpt2, prefix, true)
    } else if let Some(prefix) = spm_normalizer {
        if !steps.is_empty() {
            return Err(invalid(
                "a `▁` normalizer together with a pre-tokenizer is not supported".into(),
            ));
        }
        (Kind::Spm, PreTokenizer::Gpt2, prefix, false)
    } else {
        return Err(invalid(
            "neither a byte-level nor a SentencePiece-style (`▁`) BPE tokenizer".into(),
        ));
    };
    if kind == Kind::ByteBpe && spm_normalizer.is_some() {
        return Err(invalid(
            "a `▁` normalizer on a byte-level tokenizer is not supported".into(),
        ));
    }

    // Special tokens: the post-processor's template, overridden by tokenizer_config.json.
    let to_id = |t: &str| -> Option<u32> {
        added
            .iter()
            .find(|a| a.text == t)
            .map(|a| a.id)
            .or_else(|| vocab.get(t).and_then(Value::as_u64).map(|i| i as u32))
    };
    let (mut bos, mut add_bos) = template_bos(json.get("post_processor")).map_err(invalid)?;
    let mut eos = None;
    if let Some(c) = config {
        let special = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match c.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => {
                    let t = text_of(v).ok_or_else(|| {
                        invalid(format!(
                            "tokenizer_config.json: `{key}` is {v}, expected a string"
                        ))
                    })?;
                    to_id(t).map(Some).ok_or_else(|| {
                        invalid(format!(
                            "tokenizer_config.json: {key} `{t}` is not in the vocabulary"
                        ))
                    })
                }
            }
        };
        if let Some(b) = special("bos_token")? {
            bos = Some(b);
        }
        eos = special("eos_token")?;
        if let Some(a) = c.get("add_bos_token").and_then(Value::as_bool) {
            add_bos = a;
        }
    }
    if add_bos && bos.is_none() {
        return Err(invalid(
            "BOS is to be added but no bos_token is named".into(),
        ));
    }
    let extra_eog: Vec<u32> = extra_eos
        .iter()
        .copied()
        .filter(|&i| (i as usize) < n)
        .collect();
    Ok(Spec {
        path: path.to_owned(),
        kind,
        pre,
        scores: vec![0.0; n],
        tokens,
        types,
        merges,
        bos,
        eos,
        extra_eog,
        add_bos,
        space_prefix,
        prefix_unless_space,
        ignore_merges,
        strip,
    })
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

fn flatten_pre<'a>(v: Option<&'a Value>, out: &mut Vec<Step<'a>>) -> Result<(), String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
    let flag = |k: &str, default: bool| v.get(k).and_then(Value::as_bool).unwrap_or(default);
    match ty {
        "Sequence" => {
            let items = v
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or("pre_tokenizer Sequence without `pretokenizers`")?;
            for i in items {
                flatten_pre(Some(i), out)?;
            }
        }
        "ByteLevel" => out.push(Step::ByteLevel {
            add_prefix_space: flag("add_prefix_space", false),
            use_regex: flag("use_regex", true),
        }),
        "Split" => {
            let pat = v
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Value::as_str)
                .ok_or("Split pre-tokenizer without a `Regex` pattern")?;
            let behavior = v.get("behavior").and_then(Value::as_str).unwrap_or("");
            if behavior != "Isolated" || flag("invert", false) {
                return Err(format!(
                    "Split pre-tokenizer with behavior `{behavior}` (or inverted) is not supported"
                ));
            }
            out.push(Step::Split(pat));
        }
        "Digits" => {
            if !flag("individual_digits", false) {
                return Err(
                    "Digits pre-tokenizer without individual_digits is not supported".into(),
                );
            }
            out.push(Step::Digits);
        }
        "Metaspace" => {
            let rep = v
                .get("replacement")
                .and_then(Value::as_str)
                .unwrap_or("\u{2581}");
            if rep != "\u{2581}" {
                return Err(format!("Metaspace replacement {rep:?} is not supported"));
            }
            let scheme = match v.get("prepend_scheme").and_then(Value::as_str) {
                Some(s) => s,
                // Older files: add_prefix_space = true meant "always".
                None if flag("add_prefix_space", true) => "always",
                None => "never",
            };
            out.push(Step::Metaspace(match scheme {
                "first" => SpacePrefix::First,
                "always" => SpacePrefix::EverySegment,
                "never" => SpacePrefix::Never,
                other => return Err(format!("Metaspace prepend_scheme `{other}` is not known")),
            }));
        }
        other => return Err(format!("pre-tokenizer `{other}` is not supported")),
    }
    Ok(())
}

/// Reads the normalizer: `None` for none (or NFC), `Some(prefix)` for the SentencePiece-style
/// `[Prepend("▁")], Replace(" ", "▁")` forms.
fn spm_normalizer(v: Option<&Value>) -> Result<Option<SpacePrefix>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let mut items: Vec<&Value> = Vec::new();
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => items.extend(
            v.get("normalizers")
                .and_then(Value::as_array)
                .ok_or("normalizer Sequence without `normalizers`")?,
        ),
        _ => items.push(v),
    }
    let (mut prepend, mut replace) = (false, false);
    for n in items {
        match n.get("type").and_then(Value::as_str).unwrap_or("") {
            "NFC" => {}
            "Prepend" if n.get("prepend").and_then(Value::as_str) == Some("\u{2581}") => {
                prepend = true
            }
            "Replace"
                if n.get("pattern")
                    .and_then(|p| p.get("String"))
                    .and_then(Value::as_str)
                    == Some(" ")
                    && n.get("content").and_then(Value::as_str) == Some("\u{2581}") =>
            {
                replace = true
            }
            other => return Err(format!("normalizer `{other}` is not supported: {n}")),
        }
    }
    Ok(match (prepend, replace) {
        (_, true) => Some(if prepend {
            SpacePrefix::EverySegment
        } else {
            SpacePrefix::Never
        }),
        (true, false) => {
            return Err(
                "a Prepend(\"▁\") normalizer without Replace(\" \", \"▁\") is not supported".into(),
            )
        }
        (false, false) => None,
    })
}

/// The BOS that a `TemplateProcessing` post-processor puts first, if any: (id, added?).
fn template_bos(v: Option<&Value>) -> Result<(Option<u32>, bool), String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok((None, false));
    };
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "ByteLevel" => Ok((None, false)),
        "Sequence" => {
            let mut found = (None, false);
            for p in v
                .get("processors")
                .and_then(Value::as_array)
                .ok_or("post_processor Sequence without `processors`")?
            {
                let r = template_bos(Some(p))?;
                if r.1 {
                    found = r;
                }
            }
            Ok(found)
        }
        "TemplateProcessing" => {
            let single = v
                .get("single")
                .and_then(Value::as_array)
                .ok_or("TemplateProcessing without `single`")?;
            let special_id = |item: &Value| -> Option<String> {
                item.get("SpecialToken")?
                    .get("id")?
                    .as_str()
                    .map(str::to_owned)
            };
            if single.last().and_then(special_id).is_some() {
                return Err(
                    "a post-processor that appends special tokens (EOS) is not supported".into(),
                );
            }
            let Some(name) = single.first().and_then(special_id) else {
                return Ok((None, false));
            };
            let id = v
                .get("special_tokens")
                .and_then(|s| s.get(&name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
                .and_then(|ids| ids.first())
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("TemplateProcessing names `{name}` without its id"))?;
            Ok((Some(id as u32), true))
        }
        other => Err(format!("post-processor `{other}` is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spm_json(normalizer: Value, pre: Value) -> Value {
        json!({
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x21>": 3, "▁": 4, "h": 5, "i": 6,
                          "hi": 7, "▁hi": 8},
                "merges": [["h", "i"], ["▁", "hi"]]},
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true, "rstrip": true}],
            "normalizer": normalizer,
            "pre_tokenizer": pre,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
        })
    }

    #[test]
    fn legacy_spm_prefixes_every_segment_and_falls_back_to_bytes() {
        let j = spm_json(
            json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
            Value::Null,
        );
        let t = Tokenizer::from_hf_json("t.json", &j, None, &[]).unwrap();
        assert_eq!(t.encode("hi!", true, true), vec![1, 8, 3]);
        // After a special token the text is prefixed again; </s> strips the space after it.
        assert_eq!(t.encode("hi</s> hi", false, true), vec![8, 2, 8]);
        assert_eq!(t.decode(&[1, 8, 3], false), "hi!");
        assert_eq!(t.bos(), Some(1));
        assert!(t.add_bos());
    }

    #[test]
    fn metaspace_first_prefixes_only_the_start() {
        let j = spm_json(
            Value::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}),
        );
        let t = Tokenizer::from_hf_json("t.json", &j, None, &[]).unwrap();
        assert_eq!(t.encode("hi<s>hi", false, true), vec![8, 1, 7]);
        assert_eq!(t.encode(" hi", false, true), vec![8]);
    }

    #[test]
    fn config_overrides_bos_and_names_eos() {
        let j = spm_json(
            Value::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}),
        );
        let c = json!({"add_bos_token": false, "eos_token": {"content": "</s>"}});
        let t = Tokenizer::from_hf_json("t.json", &j, Some(&c), &[]).unwrap();
        assert!(!t.add_bos());
        assert_eq!(t.eos(), Some(2));
        assert!(t.is_eog(2));
        let c = json!({"eos_token": "<nope>"});
        let e = Tokenizer::from_hf_json("t.json", &j, Some(&c), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`<nope>` is not in the vocabulary"), "{e}");
    }

    #[test]
    fn unsupported_tokenizers_are_named() {
        let mut j = spm_json(Value::Null, Value::Null);
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a byte-level nor"), "{e}");
        j["model"]["type"] = json!("Unigram");
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model type `Unigram`"), "{e}");
        let j = spm_json(json!({"type": "Lowercase"}), Value::Null);
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("normalizer `Lowercase`"), "{e}");
        let j = json!({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]}});
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("split pattern"), "{e}");
    }

    #[test]
    fn ids_far_past_the_vocabulary_are_refused_before_allocating() {
        let mut j = spm_json(
            Value::Null,
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}),
        );
        j["added_tokens"][0]["id"] = json!((1u64 << 31) - 2);
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json") && e.contains("added_tokens holds id 2147483646"),
            "{e}"
        );
        let mut j = spm_json(Value::Null, Value::Null);
        j["model"]["vocab"]["h"] = json!(40_000_000u64);
        let e = Tokenizer::from_hf_json("t.json", &j, None, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.vocab holds id 40000000"), "{e}");
    }

    #[test]
    fn byte_level_gpt2_with_string_merges() {
        let j = json!({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4},
                "merges": ["a b", "Ġ ab"]},
            "added_tokens": [{"id": 5, "content": "<|end|>", "special": true}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}});
        let t = Tokenizer::from_hf_json("t.json", &j, None, &[]).unwrap();
        assert_eq!(t.encode("ab ab<|end|>", false, true), vec![2, 4, 5]);
        assert_eq!(t.decode(&[2, 4], false), "ab ab");
        assert!(t.is_eog(5));
        assert_eq!(t.vocab_size(), 6);
    }
}
