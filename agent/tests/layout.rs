//! The source tree keeps its layers: every `crate::…` path a module of the
//! agent (or of the filter) names is a module at its own layer or below,
//! and no modules name each other in a circle. Read from the `use` lines
//! and paths in the source, test modules left out.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, as (module path, text without test modules).
fn modules(src: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // Test modules may reach anywhere; the shipped code may not.
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            (parts.join("::"), text)
        })
        .collect()
}

/// The modules `text` names through `crate::` paths (and grouped
/// `use crate::{a, b::c}`), resolved to the longest known module.
fn references(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let paths: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|s| s.trim().to_string())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            vec![rest[..end].to_string()]
        };
        for path in paths {
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(m) = (1..=segs.len())
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|m| known.contains(m))
            {
                out.insert(m);
            }
        }
    }
    out
}

/// (module → modules it names), without self-references.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(m, text)| {
            let mut refs = references(text, &known);
            refs.remove(m);
            refs.remove("");
            (m.clone(), refs)
        })
        .collect()
}

/// One circle of modules, if there is any.
fn circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut c = stack[i..].to_vec();
            c.push(m.to_string());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for n in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(n, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(m, g, &mut Vec::new(), &mut done))
}

/// The agent's layers, lowest first (`lib` and `main` wire them all).
const AGENT_LAYERS: [&[&str]; 6] = [
    &["config", "clock", "http", "forecast", "learn"],
    &["data"],
    &["plan"],
    &["write"],
    &["app"],
    &["k8s"],
];

fn layer(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    AGENT_LAYERS.iter().position(|l| l.contains(&top))
}

#[test]
fn the_agent_imports_only_downwards_and_in_no_circle() {
    let g = graph(&repo().join("agent/src"));
    assert!(
        g.contains_key("plan::traffic") && g.contains_key("write::guard"),
        "{:?}",
        g.keys()
    );
    let mut wrong = Vec::new();
    for (m, refs) in &g {
        let Some(lm) = layer(m) else { continue };
        for r in refs {
            if layer(r).is_some_and(|lr| lr > lm) {
                wrong.push(format!("{m} → {r}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "modules naming a layer above them: {wrong:?}"
    );
    assert_eq!(circle(&g), None, "a circle of imports");
}

#[test]
fn the_filter_has_no_import_circle() {
    for src in ["wasm-filter/src", "wasm-filter/core/src"] {
        let g = graph(&repo().join(src));
        assert!(g.len() > 3, "{src}: {:?}", g.keys());
        assert_eq!(circle(&g), None, "{src}: a circle of imports");
    }
}

#[test]
fn the_checker_sees_circles_and_layers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plan")).unwrap();
    std::fs::write(dir.path().join("plan/mod.rs"), "pub mod a;").unwrap();
    std::fs::write(dir.path().join("plan/a.rs"), "use crate::{app::b, data};").unwrap();
    std::fs::create_dir_all(dir.path().join("app")).unwrap();
    std::fs::write(
        dir.path().join("app/b.rs"),
        "fn f() { crate::plan::a::g() }",
    )
    .unwrap();
    std::fs::write(dir.path().join("data.rs"), "// crate::app::b in a comment").unwrap();
    let g = graph(dir.path());
    assert_eq!(
        g["plan::a"],
        BTreeSet::from(["app::b".to_string(), "data".to_string()])
    );
    assert!(g["data"].is_empty(), "comments are not imports");
    assert!(circle(&g).is_some());
    assert!(layer("plan::a") < layer("app::b"));
}
