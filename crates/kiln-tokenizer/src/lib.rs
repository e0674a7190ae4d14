//! Tokenizers built from a model file's own vocabulary.
//!
//! Two families: byte-level BPE (`gpt2`, ranks from `tokenizer.ggml.merges`) and
//! SentencePiece-style BPE (`llama`, byte fallback; merges by token score from GGUF, by merge
//! rank from a Hugging Face `tokenizer.json`). [`hf`] reads `tokenizer.json`; [`chat`] renders
//! a model's chat template into the text the tokenizer encodes.

pub mod chat;
mod export;
pub mod hf;
pub mod memguard;
mod merge;
mod pretok;

use std::collections::HashMap;
use std::ops::Range;

use kiln_formats::gguf::GgufFile;
pub use pretok::PreTokenizer;

/// The largest vocabulary a model file may declare (16M tokens): a bound on what a
/// malformed file can make kiln allocate.
pub const MAX_VOCAB: usize = 1 << 24;

/// Errors building a tokenizer from model metadata.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Metadata missing or of the wrong type.
    #[error(transparent)]
    Gguf(#[from] kiln_formats::gguf::GgufError),
    /// The vocabulary is inconsistent.
    #[error("{path}: tokenizer: {what}")]
    Invalid {
        /// Model file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

/// How a vocabulary entry behaves (GGUF `tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Ordinary text.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token such as `<|im_start|>`: matched whole in prompts, not printed.
    Control,
    /// A user-defined token: matched whole in prompts and printed.
    UserDefined,
    /// Not used.
    Unused,
    /// A raw byte `<0xNN>` (SentencePiece byte fallback).
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> Self {
        match v {
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Normal,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Byte-level BPE with merge ranks.
    ByteBpe,
    /// SentencePiece-style BPE over text with `▁` for spaces, byte fallback.
    Spm,
}

/// When a SentencePiece-style tokenizer puts a `▁` (space) before a run of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpacePrefix {
    /// Never.
    Never,
    /// Only before text at the very start of the input (Metaspace `prepend_scheme: first`).
    First,
    /// Before the first text and the text after every special token (llama.cpp, and Hugging
    /// Face's legacy `Prepend("▁")` normalizer, which runs on each piece between added tokens).
    EverySegment,
}

/// Everything that defines a tokenizer, gathered by a reader (GGUF or `tokenizer.json`).
pub(crate) struct Spec {
    pub path: String,
    pub kind: Kind,
    pub pre: PreTokenizer,
    pub tokens: Vec<String>,
    pub types: Vec<TokenType>,
    pub scores: Vec<f32>,
    /// Merges in rank order, as (left, right) token texts.
    pub merges: Vec<(String, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Further ids that end generation (EOT, EOM, generation_config's eos list).
    pub extra_eog: Vec<u32>,
    pub add_bos: bool,
    pub space_prefix: SpacePrefix,
    /// Metaspace skips its prefix when the text already starts with a space.
    pub prefix_unless_space: bool,
    /// Look a whole pre-tokenized piece up before merging (llama.cpp's behaviour for GGUF).
    pub ignore_merges: bool,
    /// Added tokens that swallow whitespace on their left / right (Hugging Face lstrip/rstrip).
    pub strip: HashMap<u32, (bool, bool)>,
}

/// A tokenizer: text to token ids and back.
#[derive(Debug)]
pub struct Tokenizer {
    kind: Kind,
    pre: PreTokenizer,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    to_id: HashMap<String, u32>,
    /// (left, right) -> (rank, merged id), byte-level BPE only.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens matched literally in prompts, longest first.
    special: Vec<u32>,
    /// Byte-level alphabet: byte -> char, and back.
    byte_char: [char; 256],
    /// Byte-level BPE: the byte each of the 256 stand-in characters means, by character code
    /// (-1 for other characters): a table, as detokenizing looks it up once per character of
    /// every generated token.
    char_byte: Vec<i16>,
    /// SentencePiece byte fallback tokens `<0xNN>`.
    byte_token: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    space_prefix: SpacePrefix,
    prefix_unless_space: bool,
    /// Rank merges for SentencePiece-style text too (from `tokenizer.json`), not scores.
    spm_ranked: bool,
    ignore_merges: bool,
    strip: HashMap<u32, (bool, bool)>,
    /// Longest token text in bytes.
    max_token_bytes: usize,
    /// The output bytes of every token (control tokens' left out), one after another, and
    /// where each token's start (`plain_at[id]..plain_at[id + 1]`): streaming text copies
    /// one slice per token instead of decoding the token's characters.
    plain: Vec<u8>,
    plain_at: Vec<u32>,
}

/// Names that end generation in the chat formats kiln knows, besides the declared EOS.
const EOG_NAMES: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "</s>",
];

fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    map
}

impl Tokenizer {
    /// Builds the tokenizer that a GGUF file describes in its `tokenizer.ggml.*` keys.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let path = f.path().display().to_string();
        let invalid = |what: String| TokenizerError::Invalid {
            path: path.clone(),
            what,
        };
        let model = f.get_str("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => Kind::ByteBpe,
            "llama" => Kind::Spm,
            other => {
                return Err(invalid(format!(
                    "tokenizer.ggml.model is `{other}`; kiln supports `gpt2` (byte-level BPE) and `llama` (SentencePiece)"
                )))
            }
        };
        let tokens: Vec<String> = f
            .get_array("tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("tokenizer.ggml.tokens[{i}] is not a string")))
            })
            .collect::<Result<_, _>>()?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(invalid(format!("vocabulary has {n} tokens")));
        }
        let types = match f.get("tokenizer.ggml.token_type") {
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| invalid("tokenizer.ggml.token_type is not an array".into()))?;
                if a.len() != n {
                    return Err(invalid(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                a.iter()
                    .map(|v| TokenType::from_i64(v.as_f64().unwrap_or(1.0) as i64))
                    .collect()
            }
            None => vec![TokenType::Normal; n],
        };
        let scores = match f.get("tokenizer.ggml.scores") {
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| invalid("tokenizer.ggml.scores is not an array".into()))?;
                if a.len() != n {
                    return Err(invalid(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        a.len()
                    )));
                }
                a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
            }
            None if kind == Kind::Spm => {
                return Err(invalid(
                    "SentencePiece vocabulary without tokenizer.ggml.scores".into(),
                ))
            }
            None => vec![0.0; n],
        };
        let mut merges = Vec::new();
        if kind == Kind::ByteBpe {
            for (rank, m) in f.get_array("tokenizer.ggml.merges")?.iter().enumerate() {
                let m = m
                    .as_str()
                    .ok_or_else(|| invalid(format!("merge #{rank} is not a string")))?;
                // The left part is never empty: search after its first char.
                let skip = m.chars().next().map_or(0, char::len_utf8);
                let sp = m[skip..]
                    .find(' ')
                    .map(|p| p + skip)
                    .ok_or_else(|| invalid(format!("merge #{rank} `{m}` has no space")))?;
                merges.push((m[..sp].to_owned(), m[sp + 1..].to_owned()));
            }
        }

        let pre_name = f
            .get_opt("tokenizer.ggml.pre", "a string", |v| v.as_str())?
            .unwrap_or("default");
        let pre = PreTokenizer::from_name(pre_name).unwrap_or(PreTokenizer::Gpt2);
        if kind == Kind::ByteBpe && PreTokenizer::from_name(pre_name).is_none() {
            return Err(invalid(format!(
                "pre-tokenizer `{pre_name}` (tokenizer.ggml.pre) is not known to kiln"
            )));
        }

        let id_key = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match f.get_opt(key, "a token id", |v| v.as_u64())? {
                Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                Some(id) => Err(invalid(format!(
                    "{key} = {id} is outside the vocabulary ({n})"
                ))),
                None => Ok(None),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let mut extra_eog = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            extra_eog.extend(id_key(key)?);
        }
        let add_bos = f
            .get_opt("tokenizer.ggml.add_bos_token", "a bool", |v| v.as_bool())?
            .unwrap_or(kind == Kind::Spm);
        let add_space_prefix = f
            .get_opt("tokenizer.ggml.add_space_prefix", "a bool", |v| v.as_bool())?
            .unwrap_or(kind == Kind::Spm);
        Self::from_spec(Spec {
            path: path.clone(),
            kind,
            pre,
            tokens,
            types,
            scores,
            merges,
            bos,
            eos,
            extra_eog,
            add_bos,
            space_prefix: if add_space_prefix {
                SpacePrefix::EverySegment
            } else {
                SpacePrefix::Never
            },
            prefix_unless_space: false,
            // llama.cpp looks whole pieces up before merging only for Llama 3's vocabulary.
            ignore_merges: pre == PreTokenizer::Llama3,
            strip: HashMap::new(),
        })
    }

    /// Builds the lookup tables from a reader's [`Spec`].
    pub(crate) fn from_spec(spec: Spec) -> Result<Self, TokenizerError> {
        let invalid = |what: String| TokenizerError::Invalid {
            path: spec.path.clone(),
            what,
        };
        let n = spec.tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(invalid(format!("vocabulary has {n} tokens")));
        }
        if spec.types.len() != n || spec.scores.len() != n {
            return Err(invalid(format!(
                "{} token types and {} scores for {n} tokens",
                spec.types.len(),
                spec.scores.len()
            )));
        }
        let tokens = spec.tokens;
        let types = spec.types;
        let mut to_id = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            // First occurrence wins, as in the reference implementations. Empty texts are
            // placeholders for ids that no token uses.
            if !t.is_empty() {
                to_id.entry(t.clone()).or_insert(i as u32);
            }
        }
        let mut merges = HashMap::new();
        for (rank, (l, r)) in spec.merges.iter().enumerate() {
            let (Some(&li), Some(&ri), Some(&mi)) =
                (to_id.get(l), to_id.get(r), to_id.get(&format!("{l}{r}")))
            else {
                continue; // merges into tokens absent from the vocabulary can never fire
            };
            merges.entry((li, ri)).or_insert((rank as u32, mi));
        }
        for id in spec.bos.iter().chain(&spec.eos).chain(&spec.extra_eog) {
            if *id as usize >= n {
                return Err(invalid(format!(
                    "special token id {id} is outside the vocabulary ({n})"
                )));
            }
        }
        let mut eog: Vec<u32> = spec.eos.iter().chain(&spec.extra_eog).copied().collect();
        for name in EOG_NAMES {
            if let Some(&id) = to_id.get(*name) {
                if types[id as usize] == TokenType::Control {
                    eog.push(id);
                }
            }
        }
        eog.sort_unstable();
        eog.dedup();

        let mut special: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        special.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));

        let byte_char = bytes_to_unicode();
        let top = byte_char.iter().map(|&c| c as usize).max().unwrap_or(0);
        let mut char_byte = vec![-1i16; top + 1];
        for (b, &c) in byte_char.iter().enumerate() {
            char_byte[c as usize] = b as i16;
        }
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = to_id.get(&format!("<0x{b:02X}>")).copied();
        }

        let max_token_bytes = tokens.iter().map(String::len).max().unwrap_or(1).max(1);
        let mut tok = Tokenizer {
            max_token_bytes,
            plain: Vec::new(),
            plain_at: Vec::new(),
            kind: spec.kind,
            pre: spec.pre,
            spm_ranked: spec.kind == Kind::Spm && !merges.is_empty(),
            tokens,
            types,
            // Merges compare scores as a total order: a NaN would be ordered where the file's
            // writer never meant it, and -0.0 must tie with 0.0 as it does under `>`.
            scores: spec
                .scores
                .iter()
                .map(|&x| {
                    if x.is_nan() {
                        f32::NEG_INFINITY
                    } else {
                        x + 0.0
                    }
                })
                .collect(),
            to_id,
            merges,
            special,
            byte_char,
            char_byte,
            byte_token,
            bos: spec.bos,
            eos: spec.eos,
            eog,
            add_bos: spec.add_bos,
            space_prefix: spec.space_prefix,
            prefix_unless_space: spec.prefix_unless_space,
            ignore_merges: spec.ignore_merges,
            strip: spec.strip,
        };
        tok.index_plain();
        Ok(tok)
    }

    /// Fills [`Tokenizer::plain`] from the token texts.
    fn index_plain(&mut self) {
        let mut plain = Vec::new();
        let mut at = Vec::with_capacity(self.tokens.len() + 1);
        at.push(0u32);
        for id in 0..self.tokens.len() as u32 {
            self.decode_token(id, false, &mut plain);
            at.push(u32::try_from(plain.len()).unwrap_or(u32::MAX));
        }
        if plain.len() > u32::MAX as usize {
            // Over 4 GiB of token text: decode tokens one by one instead.
            (plain, at) = (Vec::new(), Vec::new());
        }
        self.plain = plain;
        self.plain_at = at;
    }

    /// Pads the vocabulary with unused placeholder entries up to `n` (models whose embedding
    /// has more rows than the tokenizer has tokens, such as Qwen2's).
    pub fn pad_vocab(&mut self, n: usize) {
        while self.tokens.len() < n {
            self.tokens.push(String::new());
            self.types.push(TokenType::Unused);
            self.scores.push(0.0);
            if let Some(&end) = self.plain_at.last() {
                self.plain_at.push(end);
            }
        }
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if declared.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model asks for BOS at the start of a prompt.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `id` ends a generation (EOS, end-of-turn and their relatives).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// A token's vocabulary text (as stored, e.g. `Ġthe`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// How a token behaves (control, byte, normal...), if the id is in the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// A token's id by its vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.to_id.get(text).copied()
    }

    /// The text of the first control or user-defined token (longest first) that `text`
    /// spells, if any.
    pub fn special_text_in(&self, text: &str) -> Option<&str> {
        self.special
            .iter()
            .map(|&id| self.tokens[id as usize].as_str())
            .find(|t| text.contains(t))
    }

    /// Longest token text in bytes: every token covers at most this much input, so a text of
    /// `n` bytes has at least `n / max_token_bytes()` tokens (a cheap bound to refuse long
    /// prompts by before tokenizing them).
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Turns text into ids. `add_bos` prepends BOS when the model asks for it;
    /// `parse_special` matches control tokens written in the text (e.g. `<|im_start|>`).
    ///
    /// Never pass `parse_special = true` for text a user wrote: it lets the user write the
    /// control tokens that delimit turns. Chat prompts go through
    /// [`ChatTemplate::encode`](crate::chat::ChatTemplate::encode) instead.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let whole = 0..text.len();
        let literal: &[Range<usize>] = if parse_special {
            &[]
        } else {
            std::slice::from_ref(&whole)
        };
        self.encode_with_literal(text, add_bos, literal)
    }

    /// Turns text into ids, matching control tokens written in the text except inside the
    /// `literal` byte ranges (sorted, not overlapping): a chat's message contents, which are
    /// tokenized as plain text even where they spell `<|im_start|>`. The text between control
    /// tokens is tokenized whole, across range boundaries, exactly as [`Tokenizer::encode`]
    /// would tokenize it.
    pub fn encode_with_literal(
        &self,
        text: &str,
        add_bos: bool,
        literal: &[Range<usize>],
    ) -> Vec<u32> {
        let mut out = Vec::new();
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for (i, frag) in self.partition(text, literal).into_iter().enumerate() {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match self.kind {
                        Kind::ByteBpe => self.encode_bpe(t, &mut out),
                        Kind::Spm => {
                            let prefix = match self.space_prefix {
                                SpacePrefix::Never => false,
                                SpacePrefix::First => i == 0,
                                SpacePrefix::EverySegment => prev_special,
                            } && !(self.prefix_unless_space && t.starts_with(' '));
                            self.encode_spm(t, prefix, &mut out)
                        }
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    fn partition<'a>(&self, text: &'a str, literal: &[Range<usize>]) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        if literal.first() == Some(&(0..text.len())) {
            return frags;
        }
        // Whether a match at text[a..b] touches a literal range.
        let in_literal = |a: usize, b: usize| {
            let i = literal.partition_point(|r| r.end <= a);
            literal.get(i).is_some_and(|r| r.start < b)
        };
        for &id in &self.special {
            let pat = self.tokens[id as usize].as_str();
            let step = pat.chars().next().map_or(1, char::len_utf8);
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(t) => {
                        // Offset of `t` in `text`: fragments are slices of it.
                        let base = t.as_ptr() as usize - text.as_ptr() as usize;
                        let (mut from, mut cut) = (0, 0);
                        while let Some(p) = t[from..].find(pat).map(|p| p + from) {
                            if in_literal(base + p, base + p + pat.len()) {
                                from = p + step;
                                continue;
                            }
                            if p > cut {
                                next.push(Fragment::Text(&t[cut..p]));
                            }
                            next.push(Fragment::Token(id));
                            cut = p + pat.len();
                            from = cut;
                        }
                        if cut < t.len() {
                            next.push(Fragment::Text(&t[cut..]));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        if !self.strip.is_empty() {
            // Added tokens marked lstrip / rstrip swallow the whitespace beside them.
            for i in 0..frags.len() {
                let Fragment::Token(id) = frags[i] else {
                    continue;
                };
                let Some(&(l, r)) = self.strip.get(&id) else {
                    continue;
                };
                if l && i > 0 {
                    if let Fragment::Text(t) = frags[i - 1] {
                        frags[i - 1] = Fragment::Text(t.trim_end());
                    }
                }
                if r && i + 1 < frags.len() {
                    if let Fragment::Text(t) = frags[i + 1] {
                        frags[i + 1] = Fragment::Text(t.trim_start());
                    }
                }
            }
            frags.retain(|f| !matches!(f, Fragment::Text("")));
        }
        frags
    }

    fn encode_bpe(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces = Vec::new();
        self.pre.split(text, &mut pieces);
        let mut syms: Vec<u32> = Vec::new();
        for piece in pieces {
            let mapped: String = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
            if self.ignore_merges {
                if let Some(&id) = self.to_id.get(&mapped) {
                    out.push(id);
                    continue;
                }
            }
            syms.clear();
            let mut buf = [0u8; 4];
            for c in mapped.chars() {
                match self.to_id.get(c.encode_utf8(&mut buf) as &str) {
                    Some(&id) => syms.push(id),
                    None => {
                        // A byte the vocabulary lacks: nothing sensible to emit but unknown.
                        if let Some(&unk) = self.to_id.get("<unk>") {
                            syms.push(unk);
                        }
                    }
                }
            }
            merge::merge(&mut syms, |l, r| self.merges.get(&(l, r)).copied());
            out.extend_from_slice(&syms);
        }
    }

    fn encode_spm(&self, text: &str, prefix: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if prefix {
            s.push('\u{2581}');
        }
        for c in text.chars() {
            s.push(if c == ' ' { '\u{2581}' } else { c });
        }
        // Symbols are byte ranges of `s`, merged pairwise until no merge applies.
        let mut syms: Vec<(usize, usize)> = s
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        if self.spm_ranked {
            self.merge_ranked(&s, &mut syms);
        } else {
            self.merge_scored(&s, &mut syms);
        }
        for (a, b) in syms {
            let piece = &s[a..b];
            match self.to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        if let Some(id) = self.byte_token[byte as usize] {
                            out.push(id);
                        } else if let Some(&unk) = self.to_id.get("<unk>") {
                            out.push(unk);
                        }
                    }
                }
            }
        }
    }

    /// SentencePiece BPE: repeatedly merge the adjacent pair whose union is the vocabulary
    /// entry with the best score (leftmost on ties).
    fn merge_scored(&self, s: &str, syms: &mut Vec<(usize, usize)>) {
        merge::merge(syms, |l, r| {
            let id = *self.to_id.get(&s[l.0..r.1])?;
            Some((merge::HigherFirst(self.scores[id as usize]), (l.0, r.1)))
        });
    }

    /// Hugging Face BPE on `▁` text: repeatedly merge the adjacent pair with the lowest merge
    /// rank (leftmost on ties). Characters outside the vocabulary never merge.
    fn merge_ranked(&self, s: &str, syms: &mut Vec<(usize, usize)>) {
        let mut with_ids: Vec<(usize, usize, Option<u32>)> = syms
            .iter()
            .map(|&(a, b)| (a, b, self.to_id.get(&s[a..b]).copied()))
            .collect();
        merge::merge(&mut with_ids, |l, r| {
            let &(rank, m) = self.merges.get(&(l.2?, r.2?))?;
            Some((rank, (l.0, r.1, Some(m))))
        });
        *syms = with_ids.into_iter().map(|(a, b, _)| (a, b)).collect();
    }

    /// The bytes a token stands for in output text. Control tokens give their text
    /// only when `special` is set.
    pub fn token_bytes(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let i = id as usize;
        let control = matches!(
            self.types.get(i),
            Some(TokenType::Control | TokenType::Unknown | TokenType::Unused)
        );
        match (self.plain_at.get(i), self.plain_at.get(i + 1)) {
            (Some(&a), Some(&b)) if !(special && control) => {
                out.extend_from_slice(&self.plain[a as usize..b as usize]);
            }
            _ => self.decode_token(id, special, out),
        }
    }

    /// [`Tokenizer::token_bytes`] from the token's text.
    fn decode_token(&self, id: u32, special: bool, out: &mut Vec<u8>) {
        let Some(t) = self.tokens.get(id as usize) else {
            return;
        };
        match self.types[id as usize] {
            TokenType::Control | TokenType::Unknown | TokenType::Unused => {
                if special {
                    out.extend_from_slice(t.as_bytes());
                }
            }
            TokenType::UserDefined => out.extend_from_slice(t.as_bytes()),
            TokenType::Byte => {
                if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(b);
                }
            }
            TokenType::Normal => match self.kind {
                Kind::ByteBpe => {
                    for c in t.chars() {
                        match self.char_byte.get(c as usize) {
                            Some(&b) if b >= 0 => out.push(b as u8),
                            _ => {
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            }
                        }
                    }
                }
                Kind::Spm => {
                    for c in t.chars() {
                        let c = if c == '\u{2581}' { ' ' } else { c };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            },
        }
    }

    /// Ids back to text (invalid UTF-8 is replaced). SentencePiece's leading space is dropped
    /// when the tokenizer added it.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            self.token_bytes(id, special, &mut bytes);
        }
        let mut s = String::from_utf8_lossy(&bytes).into_owned();
        if self.kind == Kind::Spm && self.space_prefix != SpacePrefix::Never && s.starts_with(' ') {
            s.remove(0);
        }
        s
    }

    /// A score per token (SentencePiece), zero for byte-level vocabularies.
    pub fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }
}

#[derive(Clone, Copy)]
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Turns a stream of ids into a stream of valid UTF-8 text, holding back the bytes of a
/// character split across tokens until it is complete.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    started: bool,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        tok.token_bytes(id, false, &mut self.pending);
        if !self.started && tok.kind == Kind::Spm && tok.space_prefix != SpacePrefix::Never {
            if self.pending.first() == Some(&b' ') {
                self.pending.remove(0);
            }
            if !self.pending.is_empty() {
                self.started = true;
            }
        }
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => {
                // Bytes that can never become valid: emit them replaced rather than stall.
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(valid);
        String::from_utf8(std::mem::replace(&mut self.pending, rest)).unwrap_or_default()
    }

    /// Whatever is still held back, replaced where invalid.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
