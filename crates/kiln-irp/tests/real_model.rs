//! Refinement on the default model through the engine: batched and sequential `independent`
//! runs choose the same answer with the same energies; `refine` mode runs; SNARC scores and
//! stores the exchange, with Surprise measured by the model.

use std::sync::Arc;

use kiln_cpu::CpuBackend;
use kiln_engine::{Engine, EngineConfig, EngineHandle, ModelRunner};
use kiln_irp::snarc::model_surprise;
use kiln_irp::{conversation, EngineGenerator, Irp, Memory, NewExchange, Profile, Refiner};
use kiln_model::loader::load_gguf;
use kiln_tokenizer::chat::ChatTemplate;
use kiln_tokenizer::Tokenizer;

struct Lm {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
}

fn lm() -> Lm {
    lm_with(false)
}

/// The default model's engine; with `draft`, the same file as its draft model too.
fn lm_with(draft: bool) -> Lm {
    let path = kiln_model::fetch::ensure_default_model(true).unwrap();
    let cpu = CpuBackend::new(0);
    let sibling = cpu.sharing_threads();
    let m = load_gguf(&path, cpu).unwrap();
    let tokenizer = Arc::new(m.tokenizer);
    let runner = ModelRunner::new(m.model, 64 << 20, 256, 16).unwrap();
    let mut engine = Engine::new(
        runner,
        tokenizer.clone(),
        EngineConfig {
            max_batch_tokens: 256,
            max_running: 16,
            max_queue: 64,
            ..Default::default()
        },
    );
    if draft {
        let d = load_gguf(&path, sibling).unwrap();
        let dr = ModelRunner::new(d.model, 64 << 20, 256, 16).unwrap();
        engine = engine.with_draft(Box::new(dr)).unwrap();
    }
    Lm {
        engine: EngineHandle::spawn(engine),
        tokenizer,
        template: m.template,
    }
}

fn profile(extra: &str) -> Profile {
    Profile::default()
        .with_yaml(&format!("max_tokens: 20\nseed: 7\n{extra}"), "test.yaml")
        .unwrap()
}

#[test]
fn independent_batched_equals_sequential_and_refine_runs() {
    let lm = lm();
    let gen = || EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let p = profile("iterations: 4\nmin_temperature: 0.1\nenergy_plateau_delta: 0\n");
    let q = "What is the capital of France?";
    let batched = Irp::new(p.clone(), gen()).run(q, &[]).unwrap();
    let mut seq = Irp::new(p.clone(), gen());
    seq.batch = false;
    let sequential = seq.run(q, &[]).unwrap();
    let (a, b) = (&batched.info, &sequential.info);
    assert_eq!(batched.answer, sequential.answer);
    assert_eq!(a.best_index, b.best_index);
    assert_eq!(a.halt_reason, b.halt_reason);
    assert_eq!(a.temperatures, b.temperatures);
    for (x, y) in a.candidates.iter().zip(&b.candidates) {
        assert_eq!(x.text, y.text, "same seed, same tokens");
        assert!(
            (x.energy - y.energy).abs() < 1e-5,
            "{} vs {}",
            x.energy,
            y.energy
        );
    }
    assert_eq!(a.energies.len(), a.iterations);
    assert!(a.energies.iter().all(|e| (0.0..=1.0).contains(e)));
    assert!(!batched.answer.is_empty());
    let names: Vec<&str> = a.energy_terms.terms.iter().map(|t| t.name).collect();
    assert_eq!(names, ["surprisal", "repetition", "truncation", "length"]);
    let nll = a.energy_terms.terms[0].raw;
    assert!(nll > 0.0 && nll < 10.0, "mean surprisal {nll} nats");

    // Refine mode: sequential, each step sees the best so far.
    let r = Irp::new(
        profile("iterations: 2\nmode: refine\nmin_temperature: 0.1\n"),
        gen(),
    )
    .run(q, &[])
    .unwrap();
    assert_eq!(r.info.iterations, 2);
    assert!(
        r.info.prompt_tokens > 2 * a.candidates[0].prompt_tokens,
        "the second prompt holds a draft"
    );

    // Score and store the exchange.
    let dir = std::env::temp_dir().join(format!("kiln-irp-real-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut mem = Memory::open(&dir.join("m.db")).unwrap();
    let rec = kiln_irp::score_and_store(
        &p,
        Some(&mut mem),
        &NewExchange {
            source: "test",
            session: None,
            question: q,
            answer: &batched.answer,
            irp: Some(&batched.info),
        },
        None,
    )
    .unwrap();
    assert!((rec.snarc.reward.value - (1.0 - a.best_energy)).abs() < 1e-12);
    let stored = mem.get(rec.id.unwrap()).unwrap().unwrap();
    assert_eq!(stored.answer, batched.answer);
    assert_eq!(stored.irp.unwrap()["best_index"], a.best_index);
    let _ = std::fs::remove_dir_all(&dir);
    lm.engine.shutdown();
}

/// Refinement speculates with a draft model (profile key `draft_max`): its sampled
/// candidates, decoded as one batch, are token for token those of plain decoding, with the
/// same energies (their log-probabilities come from the verified rows), and the draft's
/// proposals are taken.
#[test]
fn refinement_with_a_draft_model_gives_the_same_candidates() {
    let plain = lm();
    let fast = lm_with(true);
    fn gen(lm: &Lm) -> EngineGenerator<'_> {
        EngineGenerator {
            engine: &lm.engine,
            tokenizer: &lm.tokenizer,
            template: &lm.template,
        }
    }
    let q = "What is the capital of France?";
    let p = profile("iterations: 4\nmin_temperature: 0.1\nenergy_plateau_delta: 0\n");
    let want = Irp::new(p.clone(), gen(&plain)).run(q, &[]).unwrap();
    let mut with = p.clone();
    with.set("draft_max", "4", "test").unwrap();
    let got = Irp::new(with, gen(&fast)).run(q, &[]).unwrap();
    assert_eq!(got.answer, want.answer);
    for (x, y) in got.info.candidates.iter().zip(&want.info.candidates) {
        assert_eq!(x.text, y.text);
        assert!(
            (x.energy - y.energy).abs() < 1e-5,
            "{} vs {}",
            x.energy,
            y.energy
        );
    }
    let st = fast.engine.stats();
    assert!(
        st.draft_tokens > 10 && st.accepted_tokens == st.draft_tokens,
        "{st:?}"
    );
}

#[test]
fn model_surprise_is_lower_for_a_question_the_history_predicts() {
    let lm = lm();
    let gen = EngineGenerator {
        engine: &lm.engine,
        tokenizer: &lm.tokenizer,
        template: &lm.template,
    };
    let counting = conversation(
        &[],
        &[(
            "Count from one to five.".into(),
            "One, two, three, four, five.".into(),
        )],
    );
    let volcano = conversation(
        &[],
        &[(
            "Which volcano erupted in Iceland in 2010?".into(),
            "Eyjafjallajokull erupted in April 2010.".into(),
        )],
    );
    let again = "Count from one to five.";
    let unrelated = "Recommend a good pasta recipe with mushrooms.";
    let s =
        |conv: &[kiln_tokenizer::chat::Message], q: &str| model_surprise(&gen, conv, q).unwrap();
    let repeat = s(&counting, again);
    let other = s(&counting, unrelated);
    let elsewhere = s(&volcano, again);
    eprintln!("repeat {repeat:?}\nunrelated {other:?}\nsame question, other history {elsewhere:?}");
    for x in [&repeat, &other, &elsewhere] {
        assert!(x.why.starts_with("model: mean surprisal"), "{x:?}");
        assert!(x.value > 0.0 && x.value < 1.0, "{x:?}");
    }
    assert!(
        repeat.value + 0.2 < other.value,
        "a question the history predicts: {repeat:?}; an unrelated one: {other:?}"
    );
    assert!(
        repeat.value + 0.2 < elsewhere.value,
        "the same question is less surprising after the history that asked it: {repeat:?} vs {elsewhere:?}"
    );
    let first = s(&[], again);
    assert_eq!(first.value, 0.0, "{first:?}");

    // Stored with the model's Surprise.
    let rec = kiln_irp::score_and_store_with_model(
        &Profile::default(),
        None,
        &NewExchange {
            source: "test",
            session: None,
            question: again,
            answer: "One, two, three, four, five.",
            irp: None,
        },
        &counting,
        &gen,
    )
    .unwrap();
    assert!((rec.snarc.surprise.value - repeat.value).abs() < 1e-9);
    assert_eq!(rec.snarc.surprise.why, repeat.why);
    lm.engine.shutdown();
}
