//! Checks on the CUDA kernels' source that need no GPU.
//!
//! The CUDA backend launches every kernel with programmatic dependent launch allowed, so a
//! kernel can start while the one before it still runs. That is only correct if each kernel
//! waits (`pdl_wait`, or `pdl_enter` which waits first) before it touches activations; a
//! kernel that forgot would read stale data on sm_90 only, and only sometimes.

const SOURCES: [(&str, &str); 10] = [
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
    (
        "attention_mma.cu",
        include_str!("../src/kernels/attention_mma.cu"),
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
    // The words of one row of x rounded by k_quant_x, which k_mvqr steps by and the host
    // checks the scratch against.
    let q = include_str!("../src/kernels/quant.cu");
    assert_eq!(
        define(q, "QX_WORDS(cols)"),
        "(((cols) >> 2) + 2 * ((cols) >> 4))"
    );
    assert!(rs.contains("fn qx_words(cols: usize) -> usize {\n    cols / 4 + 2 * (cols / 16)\n}"));
    assert!(rs.contains("n * qx_words(w.cols) <= 2 * half_words"));
}

/// The script that writes each kernel's typed argument struct from its signature.
#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

/// Every kernel of the program gets an argument struct (a macro-stamped one with its stamps),
/// with the parameters in the signature's order.
#[test]
fn every_kernel_gets_its_arguments_in_order() {
    let mut found = Vec::new();
    for (file, src) in SOURCES {
        for k in build_script::kernels(&build_script::strip_comments(src), file) {
            match &k.stamps {
                Some(s) => found.extend(s.iter().map(|n| format!("{}{n}", k.name))),
                None => found.push(k.name.clone()),
            }
        }
    }
    // Read independently: the `k_` word between each `__global__` and the body's `{`.
    let mut expected: Vec<String> = Vec::new();
    for (_, src) in SOURCES {
        for (i, _) in src.match_indices("__global__") {
            let head = &src[i..i + src[i..].find('{').expect("a body")];
            let name = head
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#'))
                .find(|w| w.starts_with("k_"))
                .expect("a kernel name");
            expected.push(name.to_string());
        }
    }
    // A macro-stamped kernel appears once, by its pasted name.
    let stamped: Vec<&String> = expected.iter().filter(|n| n.contains("##")).collect();
    assert_eq!(stamped, ["k_mvr##N", "k_attn_mma##HD", "k_mvqr##N"]);
    expected.retain(|n| !n.contains("##"));
    expected.extend((2..=8).map(|n| format!("k_mvr{n}")));
    expected.extend((2..=8).map(|n| format!("k_mvqr{n}")));
    expected.extend([64, 96, 128].map(|hd| format!("k_attn_mma{hd}")));
    found.sort();
    expected.sort();
    assert_eq!(found, expected);

    let src = build_script::strip_comments(include_str!("../src/kernels/matvec_rows.cu"));
    let mvt = build_script::kernels(&src, "matvec_rows.cu")
        .into_iter()
        .find(|k| k.name == "k_mvt")
        .expect("k_mvt");
    let names: Vec<&str> = mvt.params.iter().map(|p| p.rust_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "w",
            "bias",
            "outs",
            "cols",
            "x",
            "n",
            "nw",
            "eps",
            "out",
            "out_stride",
            "mode",
            "ks",
            "splits",
            "ws",
            "cnt",
            "pf",
            "early",
            "cluster"
        ]
    );
}

#[test]
fn parameter_types_map_to_rust_types() {
    let src = "/* a comment with extern \"C\" __global__ void k_no(int a) */\n\
        extern \"C\" __global__ void __launch_bounds__(256, 2)\n\
        k_x(const float *a, u16 *b, const u32 *c, const unsigned char *Q, int n, long long len,\n\
            float eps, Epi mode) {}";
    let ks = build_script::kernels(&build_script::strip_comments(src), "t.cu");
    assert_eq!(ks.len(), 1, "the commented-out kernel is not one");
    let got: Vec<(&str, &str)> = ks[0]
        .params
        .iter()
        .map(|p| (p.rust_name.as_str(), p.rust_ty.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "Dev<f32>"),
            ("b", "Dev<u16>"),
            ("c", "Dev<u32>"),
            ("q", "Dev<u8>"),
            ("n", "i32"),
            ("len", "i64"),
            ("eps", "f32"),
            ("mode", "Epilogue")
        ]
    );
}

#[test]
#[should_panic(expected = "k_y: parameter `h` of type `double` has no Rust type")]
fn an_unknown_parameter_type_stops_the_build() {
    let src = "extern \"C\" __global__ void k_y(const float *x, double h) {}";
    build_script::kernels(src, "t.cu");
}

#[test]
#[should_panic(expected = "two parameters named `q`")]
fn parameters_that_differ_only_in_case_stop_the_build() {
    let src = "extern \"C\" __global__ void k_z(const float *Q, float *q) {}";
    build_script::kernels(src, "t.cu");
}
