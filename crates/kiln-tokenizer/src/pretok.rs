//! Pre-tokenizers: how text is cut into pieces before BPE merges run inside each piece.
//!
//! These are hand-written equivalents of the regular expressions that the models'
//! tokenizers declare (GPT-2's, with variants), written as scanners so that no
//! regex engine with look-ahead is needed.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// Which splitting rules a vocabulary uses (`tokenizer.ggml.pre`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's pattern.
    Gpt2,
    /// Every digit alone, then GPT-2's pattern (SmolLM, StarCoder and relatives).
    DigitsThenGpt2,
    /// Llama 3's pattern: case-insensitive contractions, numbers in groups of up to three.
    Llama3,
    /// Qwen2's pattern: Llama 3's with single digits.
    Qwen2,
}

impl PreTokenizer {
    /// Maps a GGUF `tokenizer.ggml.pre` name to its rules, if known.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "default" | "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "olmo" | "jais" => {
                Self::Gpt2
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => Self::DigitsThenGpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
                Self::Llama3
            }
            "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "megrez" => Self::Qwen2,
            _ => return None,
        })
    }

    /// Maps a split regular expression, as `tokenizer.json` declares it, to the rules kiln
    /// implements, if they are known.
    pub fn from_regex(pattern: &str) -> Option<Self> {
        const GPT2: &str =
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        match pattern {
            GPT2 => Some(Self::Gpt2),
            LLAMA3 => Some(Self::Llama3),
            QWEN2 => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// Cuts `text` into pieces; the pieces concatenate back to `text`.
    pub fn split<'a>(self, text: &'a str, out: &mut Vec<&'a str>) {
        match self {
            Self::Gpt2 => gpt2(text, out),
            Self::DigitsThenGpt2 => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if is_n(c) {
                        if start < i {
                            gpt2(&text[start..i], out);
                        }
                        out.push(&text[i..i + c.len_utf8()]);
                        start = i + c.len_utf8();
                    }
                }
                if start < text.len() {
                    gpt2(&text[start..], out);
                }
            }
            Self::Llama3 => llama3(text, out, 3),
            Self::Qwen2 => llama3(text, out, 1),
        }
    }
}

fn is_l(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
    )
}

fn is_n(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::DecimalNumber | G::LetterNumber | G::OtherNumber
    )
}

/// `\s` as regex engines define it (Unicode White_Space).
fn is_s(c: char) -> bool {
    c.is_whitespace()
}

fn is_other(c: char) -> bool {
    !is_s(c) && !is_l(c) && !is_n(c)
}

/// Length in bytes of the run of chars from `s` satisfying `f`.
fn run(s: &str, f: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !f(c))
        .map_or(s.len(), |(i, _)| i)
}

/// Byte length of a contraction at the start of `s` (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`, `'d`).
fn contraction(s: &str, ignore_case: bool) -> usize {
    let b = s.as_bytes();
    if b.first() != Some(&b'\'') || b.len() < 2 {
        return 0;
    }
    let lower = |i: usize| {
        b.get(i).map(|&c| {
            if ignore_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
    };
    match (lower(1), lower(2)) {
        (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => 3,
        (Some(b's' | b't' | b'm' | b'd'), _) => 2,
        _ => 0,
    }
}

/// Whitespace run at the start of `s`: `\s+(?!\S)` then `\s+`.
fn whitespace(s: &str) -> usize {
    let n = run(s, is_s);
    if n == s.len() {
        return n;
    }
    // Followed by a non-space: leave the last whitespace char to the next piece.
    let last = s[..n].chars().next_back().map_or(0, char::len_utf8);
    if n > last {
        n - last
    } else {
        n
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2<'a>(text: &'a str, out: &mut Vec<&'a str>) {
    let mut i = 0;
    while i < text.len() {
        let s = &text[i..];
        let mut n = contraction(s, false);
        if n == 0 {
            let (sp, rest) = match s.strip_prefix(' ') {
                Some(r) => (1, r),
                None => (0, s),
            };
            let first = rest.chars().next();
            n = match first {
                Some(c) if is_l(c) => sp + run(rest, is_l),
                Some(c) if is_n(c) => sp + run(rest, is_n),
                Some(c) if is_other(c) => sp + run(rest, is_other),
                _ => 0,
            };
            if n == 0 {
                n = whitespace(s);
            }
            if n == 0 {
                // Unreachable for well-formed text, but never loop forever.
                n = s.chars().next().map_or(1, char::len_utf8);
            }
        }
        out.push(&s[..n]);
        i += n;
    }
}

/// Llama 3 / Qwen2:
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,K}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
fn llama3<'a>(text: &'a str, out: &mut Vec<&'a str>, max_digits: usize) {
    let mut i = 0;
    while i < text.len() {
        let s = &text[i..];
        let n = llama3_one(s, max_digits);
        out.push(&s[..n]);
        i += n;
    }
}

fn llama3_one(s: &str, max_digits: usize) -> usize {
    let n = contraction(s, true);
    if n > 0 {
        return n;
    }
    let mut chars = s.chars();
    let Some(c0) = chars.next() else { return 0 };
    let c1 = chars.next();
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if is_l(c0) {
        return run(s, is_l);
    }
    if c0 != '\r' && c0 != '\n' && !is_n(c0) {
        if let Some(c1) = c1 {
            if is_l(c1) {
                let k = c0.len_utf8();
                return k + run(&s[k..], is_l);
            }
        }
    }
    // \p{N}{1,K}
    if is_n(c0) {
        let mut n = 0;
        for (count, c) in s.chars().enumerate() {
            if count == max_digits || !is_n(c) {
                break;
            }
            n += c.len_utf8();
        }
        return n;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let (sp, rest) = match s.strip_prefix(' ') {
        Some(r) => (1, r),
        None => (0, s),
    };
    if rest.chars().next().is_some_and(is_other) {
        let k = sp + run(rest, is_other);
        return k + run(&s[k..], |c| c == '\r' || c == '\n');
    }
    // \s*[\r\n]+ : the longest whitespace prefix that ends in a newline run.
    let ws = run(s, is_s);
    if let Some(last_nl) = s[..ws].rfind(['\r', '\n']) {
        return last_nl + 1;
    }
    whitespace(s).max(c0.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(p: PreTokenizer, t: &str) -> Vec<String> {
        let mut v = Vec::new();
        p.split(t, &mut v);
        assert_eq!(v.concat(), t, "pieces must concatenate back");
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn gpt2_words_spaces_and_contractions() {
        assert_eq!(
            split(PreTokenizer::Gpt2, "Hello  world's end!!\n\n"),
            ["Hello", " ", " world", "'s", " end", "!!", "\n\n"]
        );
        assert_eq!(split(PreTokenizer::Gpt2, "a\n b"), ["a", "\n", " b"]);
        assert_eq!(split(PreTokenizer::Gpt2, " 42x"), [" 42", "x"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(
            split(PreTokenizer::DigitsThenGpt2, "is 2+22?"),
            ["is", " ", "2", "+", "2", "2", "?"]
        );
    }

    #[test]
    fn llama3_groups_digits_and_newlines() {
        assert_eq!(
            split(PreTokenizer::Llama3, "x 12345\n\n  Hi"),
            ["x", " ", "123", "45", "\n\n", " ", " Hi"]
        );
        assert_eq!(split(PreTokenizer::Qwen2, "12"), ["1", "2"]);
        assert_eq!(split(PreTokenizer::Llama3, "I'M ok"), ["I", "'M", " ok"]);
    }

    #[test]
    fn non_ascii_letters_and_marks() {
        assert_eq!(
            split(PreTokenizer::Gpt2, "café 🚀 naïve"),
            ["café", " 🚀", " naïve"]
        );
    }
}
