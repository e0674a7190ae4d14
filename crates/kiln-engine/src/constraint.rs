//! Constrained decoding: what a request's output must be (JSON of a schema, any JSON
//! object, a regular expression, a Lark grammar), turned by llguidance into a mask of the
//! tokens each step may choose. The engine fills one mask row per constrained sequence per
//! step and the backend applies it where the logits are, so constrained and free requests
//! share one batch.
//!
//! [`Grammars`] is built once per tokenizer (the token trie); [`Grammars::compile`] checks a
//! grammar and gives the [`Constraint`] a request carries. Compiling and every mask are
//! bounded by llguidance's limits (a grammar too large or a step too costly is an error,
//! never a hang).

use std::sync::{Arc, OnceLock};

use kiln_tokenizer::{TokenType, Tokenizer};
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::earley::{BiasComputer, ParserRecognizer, SlicedBiasComputer};
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// What a constrained request's output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON object of any shape.
    JsonObject,
    /// JSON valid under this JSON schema.
    JsonSchema(Value),
    /// Text matched whole by this regular expression.
    Regex(String),
    /// Text of this grammar in llguidance's Lark dialect (GBNF-like rules, `%json` for an
    /// embedded schema).
    Lark(String),
}

/// A grammar that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// The tokenizer as llguidance sees it: each token's bytes (control tokens marked special)
/// and kiln's own tokenizer for text.
struct Env {
    trie: TokTrie,
    tok: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tok.encode(text, false, false),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Compiles grammars for one tokenizer and vocabulary width.
pub struct Grammars {
    factory: ParserFactory,
    /// Masks inside JSON strings, with one walk of the token trie (none without token sets,
    /// or where llguidance's own computer takes them: a test's reference).
    strings: Option<Arc<StringSets>>,
    width: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("width", &self.width)
            .finish()
    }
}

impl Grammars {
    /// The compiler for `tok`'s tokens in rows of `width` logits (the model's vocabulary,
    /// which may be wider than the tokenizer's: tokens past it are never allowed).
    pub fn new(tok: Arc<Tokenizer>, width: usize) -> Result<Self, GrammarError> {
        Self::with_slices(tok, width, &mask_slices(), true)
    }

    /// [`Grammars::new`] with these precomputed token sets (none: every mask walks the
    /// whole token trie, the reference the sets must agree with), taken by [`StringSets`]
    /// (`own`; `slices` as [`mask_slices`] orders them) or by llguidance's own computer.
    fn with_slices(
        tok: Arc<Tokenizer>,
        width: usize,
        slices: &[String],
        own: bool,
    ) -> Result<Self, GrammarError> {
        let width = width.max(tok.vocab_size());
        let mut words = Vec::with_capacity(width);
        for id in 0..width as u32 {
            let mut w = Vec::new();
            match tok.token_type(id) {
                None | Some(TokenType::Unused) => {}
                Some(TokenType::Control | TokenType::Unknown) => {
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(tok.token_text(id).unwrap_or("").as_bytes());
                }
                Some(_) => tok.token_bytes(id, false, &mut w),
            }
            words.push(w);
        }
        let eos = tok.eos().or_else(|| tok.eog_ids().first().copied());
        let Some(eos) = eos else {
            return Err(GrammarError(
                "the tokenizer has no end-of-sequence token, so a constrained answer could not end"
                    .into(),
            ));
        };
        let info = TokRxInfo::new(width as u32, eos);
        let mut trie = TokTrie::from(&info, &words);
        let mut eog: Vec<u32> = tok.eog_ids().to_vec();
        if !eog.contains(&eos) {
            eog.push(eos);
        }
        trie = trie.with_eos_tokens(&eog);
        let env: TokEnv = Arc::new(Env { trie, tok });
        let mut factory = ParserFactory::new(&env, Default::default(), slices)
            .map_err(|e| GrammarError(format!("cannot build the token trie: {e}")))?;
        factory.quiet();
        // Bounds on one grammar's compilation and one step's mask (llguidance's defaults,
        // with a smaller grammar: a request body is at most a few hundred kilobytes).
        *factory.limits_mut() = ParserLimits {
            max_grammar_size: 200_000,
            ..ParserLimits::default()
        };
        let strings = if own && !slices.is_empty() {
            Some(Arc::new(StringSets::new(slices, factory.slicer())?))
        } else {
            None
        };
        Ok(Grammars {
            factory,
            strings,
            width,
        })
    }

    /// Width of a mask row's vocabulary.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Checks `g` and gives the constraint one request carries. JSON comes out compact (no
    /// whitespace between tokens of the JSON syntax): a small model given the freedom of
    /// whitespace can spend its tokens on it. Strings are written as a counted repetition of
    /// characters (llguidance's `json_allow_general_unicode_escapes`, which also allows
    /// `\uXXXX` for any character, counted as one toward `maxLength`): in that form the
    /// masks inside a string take [`mask_slices`]'s sets. A schema's own `x-guidance`
    /// options replace these.
    pub fn compile(&self, g: &Grammar) -> Result<Constraint, GrammarError> {
        let compact = |mut schema: Value| -> Result<TopLevelGrammar, GrammarError> {
            match &mut schema {
                Value::Object(o) => {
                    o.entry("x-guidance").or_insert_with(|| {
                        serde_json::json!({
                            "whitespace_flexible": false,
                            "lenient": false,
                            "json_allow_general_unicode_escapes": true
                        })
                    });
                }
                Value::Bool(_) => {}
                other => {
                    return Err(GrammarError(format!(
                        "a JSON schema must be an object or a boolean, got {other}"
                    )))
                }
            }
            Ok(TopLevelGrammar::from_json_schema(schema))
        };
        let top = match g {
            Grammar::JsonObject => compact(serde_json::json!({"type": "object"}))?,
            Grammar::JsonSchema(s) => compact(s.clone())?,
            Grammar::Regex(r) => TopLevelGrammar::from_regex(r),
            Grammar::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
        };
        let mut parser = self
            .factory
            .create_parser(top)
            .map_err(|e| GrammarError(first_line(&e.to_string())))?;
        if let Some(strings) = &self.strings {
            parser.bias_computer = strings.clone();
        }
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError(first_line(&e)));
        }
        Ok(Constraint {
            matcher,
            width: self.width,
            pending: Vec::new(),
            last_ns: 0,
            held: None,
        })
    }
}

/// The token sets llguidance precomputes (its "slices"): where a step's lexer state is known
/// to take every token of a set, the mask takes the set whole and walks the token trie only
/// for the tokens outside it. The first ([`WHITESPACE`]) is whitespace; the others, the inside
/// of a JSON string, nest, each in the next ([`StringSets`] tries them in this order). A string of the schema with
/// `maxLength` has a bounded count of characters left, so there are sets of up to 1, 2, ...
/// 16 characters, and of any length: with n characters left, the largest of them not above n
/// applies. (Sets of up to 20 to 64 characters walked no fewer nodes: the default model has 98
/// tokens of more than 16 characters.) This is found only for strings written as a counted
/// repetition of characters, which is why [`Grammars::compile`] asks llguidance for that form
/// of JSON string.
fn mask_slices() -> Vec<String> {
    const CHAR: &str = r#"[^"\\\x00-\x1F\x7F]"#;
    let mut slices = vec![r"[\x20\x0A\x0D\x09]+".to_string()];
    for n in 1..=16 {
        slices.push(format!("{CHAR}{{1,{n}}}"));
    }
    slices.push(format!("{CHAR}+"));
    slices
}

/// The whitespace set's index among [`mask_slices`].
const WHITESPACE: usize = 0;

/// How much of the lexer's work one test of a set may take (llguidance's own figure); a test
/// that runs out says the set does not apply, which costs a longer walk, never a wrong mask.
const SUBSUME_BUDGET: u64 = 1000;

/// Masks inside a JSON string, with one walk of the token trie.
///
/// llguidance's computer keeps its nested sets as a tree; where the lexer takes the set of up
/// to n characters, it walks each larger set's remaining tokens in a trie of their own, so
/// that the first characters shared by tokens of different lengths are walked again for each
/// set. Here the largest set the lexer takes is found (the one of any length first, then the
/// bounded ones by bisection, since they nest), its tokens are allowed whole, and every other
/// token is walked in one trie, built for that set. Where no string set is taken, the whole
/// trie is walked, as llguidance's computer would after testing each set again, unless
/// whitespace is taken or the walk starts from a prefix: those steps are llguidance's.
///
/// The mask is the same either way: a set's tokens are allowed only where the lexer said it
/// takes every string of the set, and every other token is walked. Bisection relies on the
/// nesting only to find the largest set: should a test say no where a smaller set's said yes
/// (a test that ran out of its budget), a smaller set is taken and more is walked.
///
/// On the default model's answers under `scripts/structured_bench.py`'s schema (`mask_cost`),
/// the masks allowing 10,000 tokens or more (inside its strings) walked 18,431 nodes on
/// average against 30,311 with llguidance's tree alone, and the dearest mask 42,191 against
/// 76,478. Built all at once, the sets' tries and llguidance's tree of the added sets raised
/// the example's peak memory by 26 MiB for its 49,152 tokens and by 81 MiB for a tokenizer of
/// Qwen2.5's size (151,646 tokens of filler), so each set's tries are built when a mask first
/// takes it (docs/PERF.md, thirty-second session).
///
/// Cancellation: kiln never enables llguidance's, and these tests and the walk do not check
/// it.
struct StringSets {
    /// llguidance's own computer over the same sets.
    fallback: Arc<SlicedBiasComputer>,
    /// The nested string sets, smallest first.
    chain: Vec<StringSet>,
}

struct StringSet {
    /// Its index among the factory's sets (the lexer knows it by this).
    idx: usize,
    /// Its regular expression.
    regex: String,
    /// Its tokens, and a trie of every other token: built when a mask first takes the set,
    /// since the tries cost memory (a schema whose strings have no `maxLength` takes only the
    /// set of any length). The first build holds up that mask, and any other waiting for the
    /// same set, once.
    built: OnceLock<(SimpleVob, TokTrie)>,
}

impl StringSet {
    fn built(&self, trie: &TokTrie) -> &(SimpleVob, TokTrie) {
        self.built.get_or_init(|| {
            // Checked when the sets were made.
            let mut re = llguidance::derivre::Regex::new(&self.regex).expect("a valid set");
            let mut tokens = trie.alloc_token_set();
            for id in 0..trie.vocab_size() as u32 {
                let b = trie.token(id);
                if !b.is_empty() && re.is_match_bytes(b) {
                    tokens.allow_token(id);
                }
            }
            let mut others = trie.alloc_token_set();
            others.set_all(true);
            others.sub(&tokens);
            let rest = trie.filter(&others);
            (tokens, rest)
        })
    }
}

impl StringSets {
    /// `slices` as given to llguidance's factory, ordered as [`mask_slices`] orders them.
    fn new(slices: &[String], fallback: Arc<SlicedBiasComputer>) -> Result<Self, GrammarError> {
        let mut chain = Vec::with_capacity(slices.len().saturating_sub(1));
        for (idx, rx) in slices.iter().enumerate().filter(|&(i, _)| i != WHITESPACE) {
            llguidance::derivre::Regex::new(rx)
                .map_err(|e| GrammarError(format!("token set {rx:?}: {e}")))?;
            chain.push(StringSet {
                idx,
                regex: rx.clone(),
                built: OnceLock::new(),
            });
        }
        Ok(StringSets { fallback, chain })
    }
}

impl BiasComputer for StringSets {
    fn compute_bias(&self, rec: &mut ParserRecognizer<'_>, start: &[u8]) -> SimpleVob {
        let state = rec.lexer_state();
        if !start.is_empty() || !rec.lexer_mut().subsume_possible(state) {
            return self.fallback.compute_bias(rec, start);
        }
        let takes = |rec: &mut ParserRecognizer<'_>, idx: usize| {
            rec.lexer_mut()
                .check_subsume(state, idx, SUBSUME_BUDGET, None)
                .unwrap_or(false)
        };
        // The largest string set taken: the one of any length (one test inside a string
        // without `maxLength`), else the bounded ones by bisection (how many of them are
        // taken: they nest, so a prefix).
        let set = match self.chain.split_last() {
            Some((any, _)) if takes(rec, any.idx) => Some(any),
            Some((_, bounded)) => {
                let (mut lo, mut hi) = (0, bounded.len());
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if takes(rec, bounded[mid].idx) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo.checked_sub(1).map(|i| &bounded[i])
            }
            None => None,
        };
        let trie = self.trie();
        let Some(set) = set else {
            if takes(rec, WHITESPACE) {
                return self.fallback.compute_bias(rec, start);
            }
            let mut mask = trie.alloc_token_set();
            trie.add_bias(rec, &mut mask, &[]);
            return mask;
        };
        rec.stats_mut().slices_applied += 1;
        let (tokens, rest) = set.built(trie);
        // A copy of a set made by `alloc_token_set`, so it has the spare bit past the
        // vocabulary that the walk uses.
        let mut mask = tokens.clone();
        rest.add_bias(rec, &mut mask, &[]);
        mask
    }

    fn trie(&self) -> &TokTrie {
        self.fallback.trie()
    }
}

/// llguidance's errors can carry the whole grammar after their first line.
fn first_line(e: &str) -> String {
    let line = e.lines().next().unwrap_or(e);
    let mut s: String = line.chars().take(500).collect();
    if s.len() < line.len() {
        s.push_str("...");
    }
    s
}

/// One sequence's constraint: the parser's state after the tokens generated so far.
pub struct Constraint {
    matcher: Matcher,
    width: usize,
    /// Tokens chosen and not yet given to the parser: they are, with the next mask (work the
    /// engine spreads over threads while a device runs the pass).
    pending: Vec<u32>,
    /// What the last mask cost, in nanoseconds: the next one usually costs about as much
    /// (inside a string, every step walks the token trie), so the engine starts the dear
    /// ones first.
    last_ns: u64,
    /// The mask of the parser's state, once computed (a sequence that sat a step out takes
    /// it as it is at its next step). Once a token is pushed it is stale, and dropped only
    /// when the next mask is computed, on the thread that computes masks. Dropped on the
    /// engine's thread when the token was pushed, the engine's `accept` took 0.023 to 0.033 ms
    /// a step at 64 streams in three runs, and 0.010 to 0.013 in nine with this (calls on
    /// different hosts, not alternated; docs/PERF.md, twenty-ninth session).
    held: Option<SimpleVob>,
}

/// A copy shares nothing with the original (llguidance's plain clone shares the lexer behind
/// a lock), so that the choices of one request compute their masks in parallel.
impl Clone for Constraint {
    fn clone(&self) -> Self {
        Constraint {
            matcher: self.matcher.deep_clone(),
            width: self.width,
            pending: self.pending.clone(),
            last_ns: self.last_ns,
            held: self.held.clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Width of the vocabulary its masks cover.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Gives the parser the tokens chosen since the last mask, then writes the tokens the
    /// next step may choose into `mask` (one bit a token, as [`kiln_model::sample`] reads
    /// it; `mask_words(width)` words). Once the grammar is complete only end-of-sequence
    /// tokens are allowed. [`Constraint::compute`], then [`Constraint::write_mask`].
    pub fn fill_mask(&mut self, mask: &mut [u32]) -> Result<(), GrammarError> {
        self.compute()?;
        self.write_mask(mask);
        Ok(())
    }

    /// Gives the parser the tokens chosen since the last mask and computes the mask of the
    /// state it reaches, held for [`Constraint::write_mask`]. A mask already held (no token
    /// pushed since) is kept as it is, and its cost is not timed again.
    pub fn compute(&mut self) -> Result<(), GrammarError> {
        if self.held.is_some() && self.pending.is_empty() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        let r = self.compute_inner();
        self.last_ns = t.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        r
    }

    /// What the last [`Constraint::compute`] took, in nanoseconds (0 before the first).
    pub fn last_mask_nanos(&self) -> u64 {
        self.last_ns
    }

    /// The token trie's nodes the parser's last step walked: the work of its last mask,
    /// counted the same on every machine (`mask_cost` compares token sets by it).
    pub fn last_trie_nodes(&self) -> usize {
        self.matcher
            .last_step_stats()
            .map_or(0, |s| s.trie_nodes_walked)
    }

    fn compute_inner(&mut self) -> Result<(), GrammarError> {
        self.held = None;
        if !self.pending.is_empty() {
            let r = self.matcher.consume_tokens(&self.pending);
            self.pending.clear();
            r.map_err(|e| GrammarError(first_line(&e.to_string())))?;
        }
        let v = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| GrammarError(first_line(&e.to_string())))?;
        self.held = Some(v);
        Ok(())
    }

    /// Writes the held mask (see [`Constraint::compute`]) into `mask`; nothing allowed when
    /// none is held, or when tokens were pushed since it was computed.
    pub fn write_mask(&self, mask: &mut [u32]) {
        let held = self.held.as_ref().filter(|_| self.pending.is_empty());
        let src = held.map_or(&[][..], |v| v.as_slice());
        for (i, w) in mask.iter_mut().enumerate() {
            *w = src.get(i).copied().unwrap_or(0);
        }
        // Bits past the vocabulary stay clear.
        let tail = self.width % 32;
        if tail != 0 {
            if let Some(w) = mask.get_mut(self.width / 32) {
                *w &= (1u32 << tail) - 1;
            }
        }
    }

    /// Takes the token the sequence chose (given to the parser with the next mask, which
    /// then allows only the end of the sequence if the grammar is complete).
    pub fn push(&mut self, token: u32) {
        self.pending.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tokenizer() -> Arc<Tokenizer> {
        let path = kiln_model::fetch::ensure_default_model(true).expect("the default model");
        let f = kiln_formats::gguf::GgufFile::open(path).expect("its GGUF file");
        Arc::new(Tokenizer::from_gguf(&f).expect("its tokenizer"))
    }

    /// The precomputed token sets change what a mask costs, never what it allows: along
    /// answers that fill bounded strings to every length (chosen among the allowed tokens,
    /// the shortest ones first half the time, so that strings fill a character at a time),
    /// every mask equals the one computed by walking the whole token trie, with the sets
    /// taken by [`StringSets`] and by llguidance's own computer, for compact JSON, JSON with
    /// whitespace between its tokens (where the whitespace set sends steps to llguidance's
    /// computer) and a regular expression of bounded lines. [`StringSets`] walks fewer nodes than llguidance's computer
    /// with the same sets (which a `StringSets` that always left the step to it would not).
    #[test]
    fn masks_with_the_token_sets_equal_masks_without() {
        let tok = tokenizer();
        let width = tok.vocab_size();
        let compilers = [
            Grammars::new(tok.clone(), width).expect("grammars"),
            Grammars::with_slices(tok.clone(), width, &mask_slices(), false).expect("grammars"),
            Grammars::with_slices(tok.clone(), width, &[], false).expect("grammars"),
        ];
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "string", "maxLength": 3},
                "b": {"type": "string", "maxLength": 16},
                "c": {"type": "string", "minLength": 2, "maxLength": 40},
                "d": {"type": "string"},
                "e": {"type": "array", "items": {"type": "string", "maxLength": 7}, "minItems": 2}
            },
            "required": ["a", "b", "c", "d", "e"],
            "additionalProperties": false
        });
        let mut spaced = schema.clone();
        spaced["x-guidance"] = json!({
            "whitespace_flexible": true,
            "json_allow_general_unicode_escapes": true
        });
        // 40 to 60 lines of up to 9 characters of a JSON string, as a regular expression (a
        // kiln extension): the same sets apply outside JSON.
        let lines = Grammar::Regex(r#"([^"\\\x00-\x1F\x7F]{0,9}\n){40,60}"#.into());
        let mut nodes = [0; 3];
        for (g, seeds) in [
            (Grammar::JsonSchema(schema), 0..6u64),
            (Grammar::JsonSchema(spaced), 6..9),
            (lines, 9..11),
        ] {
            let n = masks_equal(&tok, &compilers, &g, seeds);
            for (total, n) in nodes.iter_mut().zip(n) {
                *total += n;
            }
        }
        let [own, theirs, none] = nodes;
        eprintln!(
            "trie nodes walked: {own} by StringSets, {theirs} by llguidance's computer with the \
             same sets, {none} without sets"
        );
        assert!(
            own * 4 < theirs * 3,
            "StringSets walked {own} nodes, llguidance's computer {theirs} with the same sets"
        );
    }

    /// Walks answers of `g` for `seeds` with each compiler, checking that their masks are
    /// all equal; the nodes each walked.
    fn masks_equal(
        tok: &Tokenizer,
        compilers: &[Grammars; 3],
        g: &Grammar,
        seeds: std::ops::Range<u64>,
    ) -> [usize; 3] {
        let width = compilers[0].width();
        let mut nodes = [0; 3];
        let words = kiln_model::sample::mask_words(width);
        let mut masks = [vec![0u32; words], vec![0u32; words], vec![0u32; words]];
        let (mut inside_strings, mut slices_taken) = (0, 0);
        for seed in seeds {
            let mut cs = compilers
                .each_ref()
                .map(|c| c.compile(g).expect("compiles"));
            for step in 0..120u64 {
                for (k, (c, m)) in cs.iter_mut().zip(masks.iter_mut()).enumerate() {
                    c.fill_mask(m).expect("a mask");
                    nodes[k] += c.last_trie_nodes();
                }
                assert!(
                    masks[0] == masks[2] && masks[1] == masks[2],
                    "seed {seed}, step {step}: the masks differ"
                );
                let stats = cs[0].matcher.last_step_stats().expect("stats");
                slices_taken += usize::from(stats.slices_applied > 0);
                let m = &masks[0];
                let allowed: Vec<u32> = (0..width as u32)
                    .filter(|&t| (m[t as usize / 32] >> (t % 32)) & 1 == 1)
                    .collect();
                if allowed.len() > 1000 {
                    inside_strings += 1;
                }
                let h = (seed * 1_000 + step).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
                let pick = if h % 2 == 0 {
                    // The shortest allowed token (by its bytes), so strings grow slowly.
                    *allowed
                        .iter()
                        .min_by_key(|&&t| {
                            let mut w = Vec::new();
                            tok.token_bytes(t, false, &mut w);
                            (w.len(), (t as u64).wrapping_mul(h) % 977)
                        })
                        .expect("some token is allowed")
                } else {
                    allowed[h as usize % allowed.len()]
                };
                if tok.eog_ids().contains(&pick) {
                    break;
                }
                for c in cs.iter_mut() {
                    c.push(pick);
                }
            }
        }
        assert!(inside_strings > 50, "the walk stayed out of the strings");
        assert!(
            slices_taken > 50,
            "the token sets were taken at only {slices_taken} steps"
        );
        eprintln!("{inside_strings} masks inside strings, {slices_taken} with a token set");
        nodes
    }
}
