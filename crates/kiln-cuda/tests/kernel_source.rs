//! Checks on the CUDA kernels' source that need no GPU.
//!
//! The CUDA backend launches every kernel with programmatic dependent launch allowed, so a
//! kernel can start while the one before it still runs. That is only correct if each kernel
//! waits (`pdl_wait`, or `pdl_enter` which waits first) before it touches activations; a
//! kernel that forgot would read stale data on sm_90 only, and only sometimes.

const SOURCES: [(&str, &str); 9] = [
    ("prelude.cu", include_str!("../src/kernels/prelude.cu")),
    (
        "elementwise.cu",
        include_str!("../src/kernels/elementwise.cu"),
    ),
    ("matvec.cu", include_str!("../src/kernels/matvec.cu")),
    ("rope_kv.cu", include_str!("../src/kernels/rope_kv.cu")),
    ("attention.cu", include_str!("../src/kernels/attention.cu")),
    (
        "matvec_rows.cu",
        include_str!("../src/kernels/matvec_rows.cu"),
    ),
    ("argmax.cu", include_str!("../src/kernels/argmax.cu")),
    ("quant.cu", include_str!("../src/kernels/quant.cu")),
    ("sample.cu", include_str!("../src/kernels/sample.cu")),
];

/// The files above are the whole program NVRTC compiles, in its order.
#[test]
fn the_checks_read_every_kernel_file() {
    let all: String = SOURCES.iter().map(|(_, s)| *s).collect();
    assert_eq!(all, kiln_cuda::KERNEL_SOURCE);
}

/// The body of the function whose header starts at `at`: from its first `{` to the matching `}`.
fn body(src: &str, at: usize) -> &str {
    let open = at + src[at..].find('{').expect("a function body");
    let mut depth = 0usize;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..open + i + 1];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced braces after byte {at}");
}

/// (name, body) of every function marked `marker` in `src`.
fn functions<'a>(src: &'a str, marker: &str) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find(marker) {
        let at = from + i;
        let head_end = at + src[at..].find('(').expect("a parameter list");
        let name = src[at..head_end]
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#'))
            .rfind(|w| !w.is_empty())
            .unwrap_or_default()
            .to_string();
        out.push((name, body(src, head_end)));
        from = head_end;
    }
    out
}

fn waits(body: &str, helpers: &[String]) -> bool {
    body.contains("pdl_wait()")
        || body.contains("pdl_enter()")
        || helpers
            .iter()
            .any(|h| body.contains(&format!("{h}<")) || body.contains(&format!("{h}(")))
}

#[test]
fn every_kernel_waits_for_the_kernel_before_it() {
    let all: String = SOURCES.iter().map(|(_, s)| *s).collect();
    // Device functions that wait, so that a kernel calling one of them waits too.
    let helpers: Vec<String> = functions(&all, "__device__")
        .into_iter()
        .filter(|(n, b)| {
            n != "pdl_enter" && (b.contains("pdl_enter()") || b.contains("pdl_wait()"))
        })
        .map(|(n, _)| n)
        .collect();
    let mut kernels = 0;
    for (file, src) in SOURCES {
        for (name, b) in functions(src, "__global__") {
            kernels += 1;
            assert!(
                waits(b, &helpers),
                "{file}: kernel {name} never calls pdl_wait()/pdl_enter(): under programmatic \
                 dependent launch it could read the previous kernel's output before it is written"
            );
        }
    }
    assert!(
        kernels >= 20,
        "found only {kernels} kernels: the parser is broken"
    );
}

#[test]
fn the_check_catches_a_kernel_that_does_not_wait() {
    let src = "extern \"C\" __global__ void k_x(float *a) { a[0] = 1.0f; }";
    let (name, b) = functions(src, "__global__").remove(0);
    assert_eq!(name, "k_x");
    assert!(!waits(b, &[]));
    let src = "extern \"C\" __global__ void k_y(float *a) { pdl_enter(); a[0] = 1.0f; }";
    assert!(waits(functions(src, "__global__")[0].1, &[]));
}

/// The value of `#define NAME value` in `src`.
fn define(src: &str, name: &str) -> String {
    src.lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("no #define {name}"))
        .trim()
        .to_string()
}

/// The value of `const NAME: usize = value;` in `src` (the first one after `after`).
fn rust_const(src: &str, after: &str, name: &str) -> String {
    let from = src.find(after).unwrap_or_else(|| panic!("no `{after}`"));
    let pat = format!("const {name}: usize = ");
    let at = from
        + src[from..]
            .find(&pat)
            .unwrap_or_else(|| panic!("no const {name}"))
        + pat.len();
    src[at..].split(';').next().unwrap().trim().to_string()
}

/// The sampling buffers are sized on the host from copies of `sample.cu`'s layout: a drift
/// would let the kernels write past them without an error.
#[test]
fn the_host_sizes_buffers_with_the_kernels_layouts() {
    let cu = include_str!("../src/kernels/sample.cu");
    let rs = include_str!("../src/lib.rs");
    for (c, r) in [
        ("SAMPLE_ROW_WORDS", "ROW"),
        ("SAMPLE_PARTS", "PARTS"),
        ("SAMPLE_INFO", "INFO"),
        ("SAMPLE_CAP", "CAP"),
    ] {
        assert_eq!(
            define(cu, c),
            rust_const(rs, "fn sample(", r),
            "{c} and {r}"
        );
    }
    assert_eq!(
        define(cu, "SAMPLE_TOP").parse::<usize>().unwrap(),
        kiln_model::sample::MAX_TOP_LOGPROBS
    );
    // k_mvr's outputs per warp, used for its grid on the host.
    let k = include_str!("../src/kernels/matvec_rows.cu");
    assert_eq!(define(k, "MVR_OUT(N)"), "((N) <= 4 ? 4 : 2)");
    assert!(rs.contains("fn mvr_out(n: usize) -> usize {\n    if n <= 4 {\n        4\n    } else {\n        2\n    }"));
}
