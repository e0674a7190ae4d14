//! Writes one typed argument struct per kernel of `src/kernels/*.cu`, read from the kernels'
//! own signatures, so that a launch names each argument and cannot pass them in another order
//! or of another type than the kernel takes (`$OUT_DIR/kernel_args.rs`, included by
//! `src/launch.rs`).
//!
//! A signature is `extern "C" __global__ void [__launch_bounds__(...)] k_NAME(PARAMS)`; a
//! kernel stamped out by a macro (`k_mvr##N` inside `#define MVR_KERNEL(N)`) is found with the
//! macro's uses (`MVR_KERNEL(2)` ...). Parameter types map as: pointers to `float`, `u16`,
//! `u32`, `unsigned char` to `Dev<f32|u16|u32|u8>`; `int`, `long long`, `float` to `i32`,
//! `i64`, `f32`; `Epi` (the matrix-vector epilogue) to `Epilogue`. Anything else stops the
//! build with the kernel and parameter named. Kernels with the same parameter list share one
//! struct (`k_attn` and `k_attn_gqa`).

use std::fmt::Write as _;
use std::path::Path;

pub(crate) struct Param {
    pub(crate) rust_name: String,
    pub(crate) rust_ty: String,
    /// How the value becomes a launch argument (`A::P(..)` ...).
    pub(crate) arg: &'static str,
    pub(crate) c: String,
}

pub(crate) struct KernelSig {
    /// The kernel's name, or for a macro-stamped one its stem (`k_mvr`).
    pub(crate) name: String,
    pub(crate) file: String,
    pub(crate) params: Vec<Param>,
    /// For a macro-stamped kernel: the values it is stamped with (`2..=8`).
    pub(crate) stamps: Option<Vec<u32>>,
}

#[allow(dead_code)] // also compiled by tests/kernel_source.rs, which has its own main
fn main() {
    let dir = Path::new("src/kernels");
    println!("cargo:rerun-if-changed=src/kernels");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("src/kernels")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let mut sigs = Vec::new();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let src = std::fs::read_to_string(f).expect("a kernel file");
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        sigs.extend(kernels(&strip_comments(&src), &file));
    }
    assert!(!sigs.is_empty(), "no kernels found in src/kernels");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("kernel_args.rs");
    std::fs::write(out, generate(&sigs)).expect("writing kernel_args.rs");
}

/// The source with `//` and `/* */` comments blanked out (line breaks kept).
pub(crate) fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else {
            let c = src[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The text inside the parentheses that open at `open`, and the index after the closing one.
fn parens(s: &str, open: usize) -> (&str, usize) {
    assert_eq!(&s[open..open + 1], "(");
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[open + 1..open + i], open + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses")
}

pub(crate) fn kernels(src: &str, file: &str) -> Vec<KernelSig> {
    const MARK: &str = "extern \"C\" __global__ void";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find(MARK) {
        let mut at = from + i + MARK.len();
        let rest = src[at..].trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
        at = src.len() - rest.len();
        if rest.starts_with("__launch_bounds__") {
            let open = at + rest.find('(').unwrap();
            at = parens(src, open).1;
        }
        let rest = src[at..].trim_start_matches(|c: char| c.is_whitespace() || c == '\\');
        at = src.len() - rest.len();
        let open = at + rest.find('(').expect("a parameter list");
        let name = src[at..open].trim().to_string();
        let (list, end) = parens(src, open);
        from = end;
        let (name, stamps) = match name.split_once("##") {
            Some((stem, _)) => (stem.to_string(), Some(stamps(src, at))),
            None => (name, None),
        };
        assert!(
            name.starts_with("k_") && name.chars().all(|c| c.is_alphanumeric() || c == '_'),
            "{file}: kernel `{name}`: kiln's kernels are named k_..."
        );
        let params = list
            .replace('\\', " ")
            .split(',')
            .map(|p| param(p, &name, file))
            .collect::<Vec<_>>();
        for (j, p) in params.iter().enumerate() {
            assert!(
                !params[..j].iter().any(|q| q.rust_name == p.rust_name),
                "{file}: {name}: two parameters named `{}` (case is ignored)",
                p.rust_name
            );
        }
        out.push(KernelSig {
            name,
            file: file.to_string(),
            params,
            stamps,
        });
    }
    out
}

/// The values a macro-stamped kernel is stamped with: the `#define M(N)` before `at`, used
/// as `M(2)` on lines of their own.
fn stamps(src: &str, at: usize) -> Vec<u32> {
    let def = src[..at]
        .rfind("#define ")
        .expect("a #define around a ## kernel");
    let head = &src[def + "#define ".len()..];
    let macro_name = &head[..head.find('(').expect("a macro with a parameter")];
    let call = format!("{macro_name}(");
    let v: Vec<u32> = src
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix(&call)?
                .strip_suffix(')')?
                .parse()
                .ok()
        })
        .collect();
    assert!(!v.is_empty(), "{macro_name} is never used");
    v
}

fn param(p: &str, kernel: &str, file: &str) -> Param {
    let words: Vec<&str> = p
        .split(|c: char| c.is_whitespace() || c == '*')
        .filter(|w| !w.is_empty())
        .collect();
    let pointer = p.contains('*');
    let (name, ty) = words.split_last().unwrap_or_else(|| {
        panic!("{file}: {kernel}: an empty parameter");
    });
    let ty: Vec<&str> = ty.iter().copied().filter(|w| *w != "const").collect();
    let ty = ty.join(" ");
    let (rust_ty, arg) = match (pointer, ty.as_str()) {
        (true, "float") => ("Dev<f32>", "P"),
        (true, "u16") => ("Dev<u16>", "P"),
        (true, "u32") => ("Dev<u32>", "P"),
        (true, "unsigned char") => ("Dev<u8>", "P"),
        (false, "int") => ("i32", "I"),
        (false, "long long") => ("i64", "L"),
        (false, "float") => ("f32", "F"),
        (false, "Epi") => ("Epilogue", "E"),
        _ => panic!(
            "{file}: {kernel}: parameter `{}` of type `{ty}{}` has no Rust type in build.rs",
            name,
            if pointer { " *" } else { "" }
        ),
    };
    Param {
        rust_name: name.to_ascii_lowercase(),
        rust_ty: rust_ty.into(),
        arg,
        c: p.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

fn camel(name: &str) -> String {
    name.trim_start_matches("k_")
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub(crate) fn generate(sigs: &[KernelSig]) -> String {
    let mut s = String::from("// Written by build.rs from src/kernels/*.cu: do not edit.\n\n");
    let same = |a: &KernelSig, b: &KernelSig| {
        a.params.len() == b.params.len()
            && a.params
                .iter()
                .zip(&b.params)
                .all(|(x, y)| x.rust_name == y.rust_name && x.rust_ty == y.rust_ty)
    };
    let mut owner = Vec::new();
    for (i, k) in sigs.iter().enumerate() {
        let first = sigs[..i].iter().position(|o| same(o, k)).unwrap_or(i);
        owner.push(first);
        let ty = camel(&sigs[first].name);
        if first != i {
            let _ = writeln!(
                s,
                "/// The arguments of `{}` ({}): the same parameters as `{}`.\npub(crate) type {} = {ty};\n",
                k.name, k.file, sigs[first].name, camel(&k.name)
            );
            continue;
        }
        let _ = writeln!(s, "/// The arguments of `{}` ({}).", k.name, k.file);
        s.push_str("#[derive(Clone, Copy)]\n");
        let _ = writeln!(s, "pub(crate) struct {ty} {{");
        for p in &k.params {
            let _ = writeln!(s, "    /// `{}`", p.c);
            let _ = writeln!(s, "    pub {}: {},", p.rust_name, p.rust_ty);
        }
        s.push_str("}\n\n");
        let _ = writeln!(s, "impl KernelArgs for {ty} {{");
        s.push_str("    fn args(&self) -> ArgList {\n        ArgList::new(&[\n");
        for p in &k.params {
            let v = match p.arg {
                "P" => format!("A::P(self.{}.addr())", p.rust_name),
                "E" => format!("A::I(self.{} as i32)", p.rust_name),
                a => format!("A::{a}(self.{})", p.rust_name),
            };
            let _ = writeln!(s, "            {v},");
        }
        s.push_str("        ])\n    }\n}\n\n");
    }
    s.push_str("/// Every kernel of the program, each typed by its arguments.\npub(crate) struct Kernels {\n");
    for k in sigs {
        let field = k.name.trim_start_matches("k_");
        match &k.stamps {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "    /// `{}N` for N in {v:?}, in that order.\n    pub {field}: Vec<Kernel<{}>>,",
                    k.name,
                    camel(&k.name)
                );
            }
            None => {
                let _ = writeln!(s, "    pub {field}: Kernel<{}>,", camel(&k.name));
            }
        }
    }
    s.push_str("}\n\nimpl Kernels {\n");
    s.push_str("    /// Each kernel looked up by name through `f`.\n");
    s.push_str("    pub(crate) fn load(\n        f: impl Fn(&'static str) -> Result<CudaFunction, ModelError>,\n    ) -> Result<Self, ModelError> {\n        Ok(Kernels {\n");
    for k in sigs {
        let field = k.name.trim_start_matches("k_");
        match &k.stamps {
            Some(v) => {
                let names: Vec<String> = v.iter().map(|n| format!("\"{}{n}\"", k.name)).collect();
                let _ = writeln!(
                    s,
                    "            {field}: [{}]\n                .into_iter()\n                .map(|n| Kernel::new(n, &f))\n                .collect::<Result<_, _>>()?,",
                    names.join(", ")
                );
            }
            None => {
                let _ = writeln!(s, "            {field}: Kernel::new(\"{}\", &f)?,", k.name);
            }
        }
    }
    s.push_str("        })\n    }\n");
    for k in sigs {
        if let Some(v) = &k.stamps {
            let field = k.name.trim_start_matches("k_");
            let _ = writeln!(
                s,
                "\n    /// `{}N` for `n` rows, if there is one.\n    pub(crate) fn {field}(&self, n: usize) -> Option<&Kernel<{}>> {{\n        const STAMPS: [usize; {}] = {v:?};\n        STAMPS.iter().position(|&m| m == n).map(|i| &self.{field}[i])\n    }}",
                k.name,
                camel(&k.name),
                v.len()
            );
        }
    }
    s.push_str("}\n");
    s
}
