//! SNARC salience: five scores in [0, 1] per question/answer exchange (Surprise, Novelty,
//! Arousal, Reward, Conflict), each with a short explanation, and their weighted total.
//!
//! Surprise is measured with the model when one is given ([`model_surprise`]): the mean
//! surprisal of the question's tokens given the conversation before it, squashed to [0, 1]
//! by `1 - exp(-mean_nll / SURPRISE_SCALE_NATS)`. Without a model it is the seed's lexical
//! measure ([`lexical_surprise`]): the share of the question's content words not seen in the
//! last three questions. Either way the first exchange of a conversation scores 0, and the
//! explanation names the method and its numbers.

use kiln_tokenizer::chat::Message;
use serde::Serialize;

use crate::text::{is_stopword, terms, words, Embedding};
use crate::IrpError;

/// One score and what drove it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Score {
    /// The score, in [0, 1].
    pub value: f64,
    /// What drove it, in a few words.
    pub why: String,
}

/// The five scores, their total and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SnarcScores {
    /// How unexpected the question is given the conversation so far.
    pub surprise: Score,
    /// How new the exchange is next to memory, and its lexical diversity.
    pub novelty: Score,
    /// Depth and complexity.
    pub arousal: Score,
    /// Answer quality.
    pub reward: Score,
    /// Paradox, uncertainty, self-reference, contradiction with memory.
    pub conflict: Score,
    /// Weighted sum of the five.
    pub total: f64,
    /// Whether `total >= threshold`.
    pub salient: bool,
    /// The threshold used.
    pub threshold: f64,
}

impl SnarcScores {
    /// The flat JSON form the CLI and the server print: the five values, `total`, `salient`,
    /// `threshold`, and `explanations` keyed by dimension.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "surprise": self.surprise.value,
            "novelty": self.novelty.value,
            "arousal": self.arousal.value,
            "reward": self.reward.value,
            "conflict": self.conflict.value,
            "total": self.total,
            "salient": self.salient,
            "threshold": self.threshold,
            "explanations": {
                "surprise": self.surprise.why,
                "novelty": self.novelty.why,
                "arousal": self.arousal.why,
                "reward": self.reward.why,
                "conflict": self.conflict.why,
            },
        })
    }
}

/// Weights and threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnarcConfig {
    /// Weights of surprise, novelty, arousal, reward, conflict.
    pub weights: [f64; 5],
    /// Salient when the total is at least this.
    pub threshold: f64,
}

impl Default for SnarcConfig {
    fn default() -> Self {
        SnarcConfig {
            weights: [0.2; 5],
            threshold: 0.15,
        }
    }
}

/// What memory holds about one stored exchange, for novelty and contradiction.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The stored exchange's id.
    pub id: i64,
    /// Embedding of question and answer together.
    pub exchange: Embedding,
    /// Embedding of the question alone.
    pub question: Embedding,
    /// Whether the answer opens with a negation.
    pub negated: bool,
}

/// Embeddings of stored exchanges, searched by brute force (a few microseconds per thousand).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryIndex {
    /// The entries, oldest first.
    pub entries: Vec<IndexEntry>,
}

/// An exchange to score.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The user's question.
    pub question: &'a str,
    /// The answer.
    pub answer: &'a str,
    /// Final energy of the refinement that produced the answer, if any.
    pub final_energy: Option<f64>,
    /// Earlier questions of the conversation, oldest first (the last three are used).
    pub recent_questions: &'a [String],
}

/// Scores and the features memory keeps to score later exchanges.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The scores.
    pub scores: SnarcScores,
    /// Embedding of question and answer.
    pub exchange: Embedding,
    /// Embedding of the question.
    pub question: Embedding,
    /// Whether the answer opens with a negation.
    pub negated: bool,
}

const QUESTION_WORDS: &[&str] = &[
    "what", "why", "how", "when", "where", "who", "which", "whether", "explain", "describe",
    "compare", "analyze", "analyse", "prove", "derive", "evaluate", "justify",
];
const PARADOX: &[&str] = &[
    "paradox",
    "contradict",
    "contradicts",
    "contradiction",
    "contradictory",
    "both true and false",
    "this statement is false",
    "liar",
    "impossible",
    "self-contradictory",
];
const UNCERTAINTY: &[&str] = &[
    "maybe",
    "perhaps",
    "not sure",
    "uncertain",
    "unclear",
    "possibly",
    "i don't know",
    "i do not know",
    "it depends",
    "unsure",
    "might",
];
const SELF_REFERENCE: &[&str] = &[
    "yourself",
    "your own",
    "are you",
    "do you",
    "can you think",
    "conscious",
    "self-aware",
    "this sentence",
    "this question",
    "itself",
];
const NEGATIONS: &[&str] = &["no", "not", "never", "cannot", "none", "nothing", "false"];

fn clamp01(x: f64) -> f64 {
    x.clamp(0.0, 1.0)
}

/// The phrases of `list` found in `padded` (lowercased, single-spaced) on word boundaries.
fn found<'l>(padded: &str, list: &[&'l str]) -> Vec<&'l str> {
    list.iter()
        .copied()
        .filter(|m| {
            let mut start = 0;
            while let Some(pos) = padded[start..].find(m) {
                let at = start + pos;
                let before = padded[..at].chars().next_back();
                let after = padded[at + m.len()..].chars().next();
                let edge = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
                if edge(before) && edge(after) {
                    return true;
                }
                start = at + m.len();
            }
            false
        })
        .collect()
}

/// Whether the first sentence of `answer` is a negation (`No, ...`, `... is not ...`).
pub fn opens_with_negation(answer: &str) -> bool {
    let lower = answer.to_lowercase();
    let first = lower
        .split(['.', '!', '?', '\n'])
        .find(|s| !s.trim().is_empty())
        .unwrap_or("");
    first.contains("n't") || terms(first).any(|t| NEGATIONS.contains(&t.as_str()))
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Mean surprisal (nats per token) that model Surprise maps to `1 - 1/e` (0.63). Measured
/// with SmolLM2-135M-Instruct after one exchange: a repeat of the previous question reads at
/// 0.8 to 0.9 nats per token (Surprise 0.2), an everyday question on another subject at 1.5
/// to 4.5 (0.3 to 0.7), a string of rare jargon at 6.3 (0.8).
pub const SURPRISE_SCALE_NATS: f64 = 4.0;

/// How surprising the model finds a question after a conversation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surprisal {
    /// Mean negative log-probability of the question's tokens, in nats per token.
    pub mean_nll: f64,
    /// How many question tokens were scored.
    pub tokens: usize,
}

/// What measures a question's surprisal given the conversation: the model through the
/// engine ([`crate::EngineGenerator`]), or a stand-in in tests.
pub trait SurpriseModel {
    /// The surprisal of `question` as the next user turn after `conversation` (system
    /// message and earlier exchanges, oldest first).
    fn surprisal(&self, conversation: &[Message], question: &str) -> Result<Surprisal, IrpError>;
}

/// The seed's lexical Surprise: the share of the question's content words not seen in the
/// last three of `recent_questions` (0 when there are none: the first exchange).
pub fn lexical_surprise(question: &str, recent_questions: &[String]) -> Score {
    let recent = &recent_questions[recent_questions.len().saturating_sub(3)..];
    if recent.is_empty() {
        return Score {
            value: 0.0,
            why: "first exchange of the conversation".into(),
        };
    }
    let q_terms: Vec<String> = terms(question).collect();
    let content: Vec<&String> = q_terms.iter().filter(|t| !is_stopword(t)).collect();
    let seen: std::collections::HashSet<String> = recent
        .iter()
        .flat_map(|q| terms(q).collect::<Vec<_>>())
        .collect();
    let new = content
        .iter()
        .filter(|t| !seen.contains(t.as_str()))
        .count();
    Score {
        value: share(new, content.len()),
        why: format!(
            "lexical (no model): {new} of {} content words not in the last {} questions",
            content.len(),
            recent.len()
        ),
    }
}

/// Surprise from a measured surprisal: `1 - exp(-mean_nll / SURPRISE_SCALE_NATS)`, after
/// `exchanges` earlier exchanges.
pub fn surprise_from_surprisal(s: Surprisal, exchanges: usize) -> Score {
    let nll = s.mean_nll.max(0.0);
    let value = clamp01(1.0 - (-nll / SURPRISE_SCALE_NATS).exp());
    Score {
        value,
        why: format!(
            "model: mean surprisal {nll:.2} nats/token over {} question tokens given {exchanges} earlier exchange{} (1 - exp(-{nll:.2}/{SURPRISE_SCALE_NATS}))",
            s.tokens,
            if exchanges == 1 { "" } else { "s" }
        ),
    }
}

/// Model Surprise of `question` after `conversation`: 0 for the first exchange (no earlier
/// user turn), else the squashed mean surprisal of the question's tokens
/// ([`surprise_from_surprisal`]).
pub fn model_surprise(
    model: &dyn SurpriseModel,
    conversation: &[Message],
    question: &str,
) -> Result<Score, IrpError> {
    let exchanges = conversation.iter().filter(|m| m.role == "user").count();
    if exchanges == 0 {
        return Ok(Score {
            value: 0.0,
            why: "first exchange of the conversation".into(),
        });
    }
    let s = model.surprisal(conversation, question)?;
    Ok(surprise_from_surprisal(s, exchanges))
}

/// Scores `ex` against `memory` under `cfg`, with the lexical Surprise against
/// `ex.recent_questions`.
pub fn score(cfg: &SnarcConfig, ex: &Exchange<'_>, memory: &MemoryIndex) -> Scored {
    let surprise = lexical_surprise(ex.question, ex.recent_questions);
    score_with_surprise(cfg, ex, memory, surprise)
}

/// Scores `ex` against `memory` under `cfg`, with a Surprise measured elsewhere (by
/// [`model_surprise`]); `ex.recent_questions` is not used.
pub fn score_with_surprise(
    cfg: &SnarcConfig,
    ex: &Exchange<'_>,
    memory: &MemoryIndex,
    surprise: Score,
) -> Scored {
    let q_terms: Vec<String> = terms(ex.question).collect();
    let a_terms: Vec<String> = terms(ex.answer).collect();

    // Novelty: distance to the nearest stored exchange, and type/token ratio.
    let exchange = Embedding::of(&format!("{}\n{}", ex.question, ex.answer));
    let question = Embedding::of(ex.question);
    let nearest = memory
        .entries
        .iter()
        .map(|e| (e, e.exchange.cosine(&exchange)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let distance = nearest.map_or(1.0, |(_, c)| clamp01(1.0 - c as f64));
    let all: Vec<&String> = q_terms.iter().chain(&a_terms).collect();
    let distinct: std::collections::HashSet<&String> = all.iter().copied().collect();
    let ttr = share(distinct.len(), all.len());
    let novelty = Score {
        value: clamp01(0.7 * distance + 0.3 * ttr),
        why: match nearest {
            Some((e, c)) => format!(
                "nearest of {} stored exchanges is #{} at similarity {c:.2}; type/token ratio {ttr:.2}",
                memory.entries.len(),
                e.id
            ),
            None => format!("memory holds nothing yet; type/token ratio {ttr:.2}"),
        },
    };

    // Arousal: question length, question words, answer length.
    let q_words = words(ex.question).count();
    let a_words = words(ex.answer).count();
    let wh = q_terms
        .iter()
        .filter(|t| QUESTION_WORDS.contains(&t.as_str()))
        .count();
    let arousal = Score {
        value: clamp01(
            0.4 * (q_words as f64 / 25.0).min(1.0)
                + 0.3 * (wh as f64 / 2.0).min(1.0)
                + 0.3 * (a_words as f64 / 150.0).min(1.0),
        ),
        why: format!("{q_words}-word question with {wh} question words; {a_words}-word answer"),
    };

    // Reward: 1 - final energy, or a structure and length heuristic without refinement.
    let reward = match ex.final_energy {
        Some(e) => Score {
            value: clamp01(1.0 - e),
            why: format!("1 - final refinement energy {e:.3}"),
        },
        None => {
            let structured =
                ex.answer.contains(['.', '!', '?']) && ex.answer.chars().any(char::is_uppercase);
            let len = 1.0 - ((a_words as f64 - 50.0).abs() / 50.0).min(1.0);
            let v = if a_words == 0 {
                0.0
            } else {
                0.5 + 0.25 * structured as u8 as f64 + 0.25 * len
            };
            Score {
                value: v,
                why: format!(
                    "no refinement info: {a_words} words, {} sentence structure",
                    if structured { "with" } else { "without" }
                ),
            }
        }
    };

    // Conflict: markers in the exchange, and a stored answer to the same question that
    // disagrees in polarity.
    let padded = format!(
        " {} ",
        format!("{} {}", ex.question, ex.answer)
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let paradox = found(&padded, PARADOX);
    let unsure = found(&padded, UNCERTAINTY);
    let selfref = found(&padded, SELF_REFERENCE);
    let negated = opens_with_negation(ex.answer);
    let contradicts = memory
        .entries
        .iter()
        .filter(|e| e.question.cosine(&question) >= 0.8 && !question.is_zero())
        .find(|e| e.negated != negated)
        .map(|e| e.id);
    let mut why: Vec<String> = Vec::new();
    for (name, hits) in [
        ("paradox", &paradox),
        ("uncertainty", &unsure),
        ("self-reference", &selfref),
    ] {
        if !hits.is_empty() {
            why.push(format!("{name}: {}", hits.join(", ")));
        }
    }
    if let Some(id) = contradicts {
        why.push(format!(
            "answers the same question as #{id} with the opposite polarity"
        ));
    }
    let conflict = Score {
        value: clamp01(
            0.3 * paradox.len() as f64
                + 0.15 * unsure.len() as f64
                + 0.2 * selfref.len() as f64
                + if contradicts.is_some() { 0.5 } else { 0.0 },
        ),
        why: if why.is_empty() {
            "no paradox, uncertainty or self-reference markers; no contradiction with memory".into()
        } else {
            why.join("; ")
        },
    };

    let values = [
        surprise.value,
        novelty.value,
        arousal.value,
        reward.value,
        conflict.value,
    ];
    let total: f64 = values.iter().zip(cfg.weights).map(|(v, w)| v * w).sum();
    Scored {
        scores: SnarcScores {
            surprise,
            novelty,
            arousal,
            reward,
            conflict,
            total,
            salient: total >= cfg.threshold,
            threshold: cfg.threshold,
        },
        exchange,
        question,
        negated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex<'a>(q: &'a str, a: &'a str, recent: &'a [String]) -> Exchange<'a> {
        Exchange {
            question: q,
            answer: a,
            final_energy: None,
            recent_questions: recent,
        }
    }

    fn cfg() -> SnarcConfig {
        SnarcConfig::default()
    }

    #[test]
    fn surprise_is_zero_first_and_counts_unseen_words() {
        let s = score(
            &cfg(),
            &ex("Why is the sky blue?", "Rayleigh.", &[]),
            &Default::default(),
        );
        assert_eq!(s.scores.surprise.value, 0.0);
        assert!(s.scores.surprise.why.contains("first"));
        let recent = vec!["Why is the sky blue?".to_owned()];
        let why = score(&cfg(), &ex("Why?", "x", &recent), &Default::default())
            .scores
            .surprise
            .why;
        assert!(
            why.starts_with("lexical") && why.contains("last 1 questions"),
            "{why}"
        );
        let same = score(
            &cfg(),
            &ex("Why is the sky blue?", "x", &recent),
            &Default::default(),
        );
        assert_eq!(same.scores.surprise.value, 0.0);
        // "is" and "the" are stopwords; "ocean" and "green" are new.
        let other = score(
            &cfg(),
            &ex("Is the ocean green?", "x", &recent),
            &Default::default(),
        );
        assert!(
            (other.scores.surprise.value - 1.0).abs() < 1e-12,
            "{:?}",
            other.scores.surprise
        );
        let half = score(
            &cfg(),
            &ex("Why is grass green?", "x", &recent),
            &Default::default(),
        );
        assert!(
            (half.scores.surprise.value - 2.0 / 3.0).abs() < 1e-12,
            "{:?}",
            half.scores.surprise
        );
        // Only the last three questions count.
        let four: Vec<String> = ["sky blue", "a", "b", "c"].map(String::from).to_vec();
        let s = score(&cfg(), &ex("sky blue", "x", &four), &Default::default());
        assert_eq!(s.scores.surprise.value, 1.0);
    }

    /// A stand-in model: a fixed surprisal, or a failure.
    struct Fixed(Option<f64>);

    impl SurpriseModel for Fixed {
        fn surprisal(&self, _: &[Message], _: &str) -> Result<Surprisal, IrpError> {
            match self.0 {
                Some(mean_nll) => Ok(Surprisal {
                    mean_nll,
                    tokens: 7,
                }),
                None => Err(IrpError::Scoring("no model".into())),
            }
        }
    }

    #[test]
    fn model_surprise_squashes_the_mean_surprisal() {
        let history = [
            Message::new("system", "Be brief."),
            Message::new("user", "Why is the sky blue?"),
            Message::new("assistant", "Rayleigh scattering."),
        ];
        let first = model_surprise(&Fixed(None), &history[..1], "q").unwrap();
        assert_eq!(
            first.value, 0.0,
            "no earlier exchange: the model is not asked"
        );
        assert!(first.why.contains("first"));
        let s = model_surprise(&Fixed(Some(4.0)), &history, "q").unwrap();
        assert!((s.value - (1.0 - (-1.0f64).exp())).abs() < 1e-12, "{s:?}");
        assert!(
            s.why.starts_with("model:") && s.why.contains("4.00 nats/token"),
            "{s:?}"
        );
        assert!(s.why.contains("7 question tokens") && s.why.contains("1 earlier"));
        let low = model_surprise(&Fixed(Some(0.5)), &history, "q").unwrap();
        let high = model_surprise(&Fixed(Some(9.0)), &history, "q").unwrap();
        assert!(0.0 < low.value && low.value < s.value && s.value < high.value && high.value < 1.0);
        assert!(model_surprise(&Fixed(None), &history, "q").is_err());
        // The given Surprise replaces the lexical one and counts in the total.
        let scored = score_with_surprise(
            &cfg(),
            &ex("Why is the sky blue?", "x", &[]),
            &Default::default(),
            high.clone(),
        );
        assert_eq!(scored.scores.surprise, high);
        let lexical = score(
            &cfg(),
            &ex("Why is the sky blue?", "x", &[]),
            &Default::default(),
        );
        assert!((scored.scores.total - lexical.scores.total - 0.2 * high.value).abs() < 1e-12);
    }

    fn index_of(items: &[(&str, &str)]) -> MemoryIndex {
        MemoryIndex {
            entries: items
                .iter()
                .enumerate()
                .map(|(i, (q, a))| IndexEntry {
                    id: i as i64 + 1,
                    exchange: Embedding::of(&format!("{q}\n{a}")),
                    question: Embedding::of(q),
                    negated: opens_with_negation(a),
                })
                .collect(),
        }
    }

    #[test]
    fn novelty_drops_for_repeats() {
        let q = "What is photosynthesis in plants?";
        let a = "Plants turn light, water and carbon dioxide into sugar and oxygen.";
        let empty = score(&cfg(), &ex(q, a, &[]), &Default::default());
        let mem = index_of(&[(q, a)]);
        let again = score(&cfg(), &ex(q, a, &[]), &mem);
        assert!(
            empty.scores.novelty.value > 0.9,
            "{:?}",
            empty.scores.novelty
        );
        assert!(
            again.scores.novelty.value < 0.35,
            "{:?}",
            again.scores.novelty
        );
        assert!(again.scores.novelty.why.contains("#1"));
        let other = score(
            &cfg(),
            &ex("How do volcanoes erupt?", "Magma rises.", &[]),
            &mem,
        );
        assert!(
            other.scores.novelty.value > 0.8,
            "{:?}",
            other.scores.novelty
        );
    }

    #[test]
    fn arousal_grows_with_depth() {
        let shallow = score(&cfg(), &ex("Hi", "Hello.", &[]), &Default::default());
        let deep = score(
            &cfg(),
            &ex(
                "Why does quantum entanglement not allow faster than light communication, and how would you explain what measurement does to the shared state?",
                &"word ".repeat(150),
                &[],
            ),
            &Default::default(),
        );
        assert!(
            shallow.scores.arousal.value < 0.1,
            "{:?}",
            shallow.scores.arousal
        );
        assert!(deep.scores.arousal.value > 0.9, "{:?}", deep.scores.arousal);
    }

    #[test]
    fn reward_follows_the_energy() {
        let mut e = ex("q?", "An answer.", &[]);
        e.final_energy = Some(0.25);
        let s = score(&cfg(), &e, &Default::default());
        assert!((s.scores.reward.value - 0.75).abs() < 1e-12);
        assert!(s.scores.reward.why.contains("0.250"));
        let none = score(&cfg(), &ex("q?", "", &[]), &Default::default());
        assert_eq!(none.scores.reward.value, 0.0);
    }

    #[test]
    fn conflict_markers_and_contradictions() {
        let calm = score(
            &cfg(),
            &ex("What is 2+2?", "It is 4.", &[]),
            &Default::default(),
        );
        assert_eq!(calm.scores.conflict.value, 0.0);
        let paradox = score(
            &cfg(),
            &ex(
                "Is this statement is false a paradox?",
                "Perhaps; it might be both true and false.",
                &[],
            ),
            &Default::default(),
        );
        let c = &paradox.scores.conflict;
        assert!(c.value >= 0.9, "{c:?}");
        assert!(
            c.why.contains("paradox") && c.why.contains("uncertainty"),
            "{c:?}"
        );
        let selfref = score(
            &cfg(),
            &ex("Are you conscious?", "I am a language model.", &[]),
            &Default::default(),
        );
        assert!(
            selfref.scores.conflict.value >= 0.4,
            "{:?}",
            selfref.scores.conflict
        );
        // "mightily" is not "might".
        let word = score(
            &cfg(),
            &ex("q", "He fought mightily.", &[]),
            &Default::default(),
        );
        assert_eq!(word.scores.conflict.value, 0.0);
        // Memory said yes, this says no.
        let mem = index_of(&[("Is the earth flat?", "Yes, it is flat.")]);
        let c = score(
            &cfg(),
            &ex("Is the earth flat?", "No, it is round.", &[]),
            &mem,
        );
        assert!(c.scores.conflict.value >= 0.5, "{:?}", c.scores.conflict);
        assert!(c.scores.conflict.why.contains("#1"));
        let agree = score(&cfg(), &ex("Is the earth flat?", "Yes.", &[]), &mem);
        assert_eq!(agree.scores.conflict.value, 0.0);
    }

    #[test]
    fn total_and_threshold() {
        let s = score(
            &cfg(),
            &ex("Why is the sky blue?", "Rayleigh scattering.", &[]),
            &Default::default(),
        );
        let v = &s.scores;
        let sum = 0.2
            * (v.surprise.value
                + v.novelty.value
                + v.arousal.value
                + v.reward.value
                + v.conflict.value);
        assert!((v.total - sum).abs() < 1e-12);
        assert_eq!(v.salient, v.total >= 0.15);
        let strict = SnarcConfig {
            threshold: 1.0,
            ..cfg()
        };
        assert!(
            !score(&strict, &ex("a", "b", &[]), &Default::default())
                .scores
                .salient
        );
        for x in [&v.surprise, &v.novelty, &v.arousal, &v.reward, &v.conflict] {
            assert!((0.0..=1.0).contains(&x.value) && !x.why.is_empty());
        }
    }

    #[test]
    fn negation_polarity() {
        assert!(opens_with_negation("No, it is round."));
        assert!(opens_with_negation("It isn't. Well."));
        assert!(!opens_with_negation("Yes. Not at all round."));
    }
}
