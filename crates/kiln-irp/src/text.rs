//! Small text tools shared by the energies, SNARC and memory search: words, terms, and hashed
//! bag-of-words embeddings.

/// Whitespace-separated words, as the seed counted them.
pub fn words(text: &str) -> std::str::SplitWhitespace<'_> {
    text.split_whitespace()
}

/// Lowercased alphanumeric terms (`don't` -> `don`, `t`); what bags of words are made of.
pub fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
}

/// Very common English words, left out of content comparisons.
pub fn is_stopword(t: &str) -> bool {
    const STOP: &[&str] = &[
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from",
        "has", "have", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "s", "so", "t",
        "that", "the", "their", "them", "there", "these", "they", "this", "to", "was", "we",
        "were", "will", "with", "you", "your",
    ];
    STOP.contains(&t)
}

/// Width of the hashed embeddings.
pub const EMBED_DIM: usize = 256;

/// A unit-length hashed bag-of-words vector (feature hashing with a sign bit).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding(pub Vec<f32>);

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Embedding {
    /// Embeds `text`: each content term adds ±(1 + ln tf) at its hashed slot; then normalised.
    pub fn of(text: &str) -> Embedding {
        let mut counts: std::collections::HashMap<String, u32> = Default::default();
        for t in terms(text).filter(|t| !is_stopword(t)) {
            *counts.entry(t).or_insert(0) += 1;
        }
        let mut v = vec![0f32; EMBED_DIM];
        for (t, c) in &counts {
            let h = fnv1a(t);
            let slot = (h % EMBED_DIM as u64) as usize;
            let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
            v[slot] += sign * (1.0 + (*c as f32).ln());
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        Embedding(v)
    }

    /// Cosine similarity (both are unit length or zero), in [-1, 1].
    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    /// Whether no content term was found.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&x| x == 0.0)
    }

    /// Little-endian bytes, for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Reads [`Embedding::to_bytes`] output; `None` if the length is wrong.
    pub fn from_bytes(b: &[u8]) -> Option<Embedding> {
        if b.len() != EMBED_DIM * 4 {
            return None;
        }
        Some(Embedding(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_are_close() {
        let a = Embedding::of("Why is the sky blue during the day?");
        let b = Embedding::of("why is the sky blue?");
        let c = Embedding::of("How do I bake sourdough bread at home?");
        assert!(a.cosine(&b) > 0.7, "{}", a.cosine(&b));
        assert!(a.cosine(&c) < 0.3, "{}", a.cosine(&c));
        assert!((a.cosine(&a) - 1.0).abs() < 1e-5);
        assert!(Embedding::of("the a of").is_zero());
        assert_eq!(Embedding::from_bytes(&a.to_bytes()), Some(a));
    }

    #[test]
    fn terms_split_on_punctuation() {
        let t: Vec<String> = terms("Don't PANIC, it's 42!").collect();
        assert_eq!(t, ["don", "t", "panic", "it", "s", "42"]);
    }
}
