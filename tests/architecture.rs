//! The import rules of ARCHITECTURE.md, checked on the source: the data model imports
//! nothing else of the crate, the engine only the model, the server never the poller,
//! and no cycle among the top-level modules of `src/`. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the crate modules its non-test code names (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    walk(&src, &mut files);
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("utf-8 path")
            .trim_end_matches(".rs")
            .to_string();
        // A `tests.rs` is a unit-test module (`#[cfg(test)] mod tests;`) in a file
        // of its own: unit tests may use anything.
        if top == "main" || top == "lib" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        // Unit tests may use anything; doc comments and comments are not imports.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let entry = out.entry(top.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for name in crate_paths(line) {
                if name != top {
                    entry.insert(name);
                }
            }
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Modules named by `crate::name` and by `use crate::{a::.., b, ..}` in one line.
fn crate_paths(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for part in group.split(',') {
                let n = ident(part.trim());
                if !n.is_empty() {
                    names.push(n);
                }
            }
        } else {
            let n = ident(rest);
            if !n.is_empty() {
                names.push(n);
            }
        }
    }
    names
}

fn allowed(module: &str, may: &[&str], graph: &BTreeMap<String, BTreeSet<String>>) {
    let got = graph.get(module).cloned().unwrap_or_default();
    let extra: Vec<&String> = got.iter().filter(|m| !may.contains(&m.as_str())).collect();
    assert!(
        extra.is_empty(),
        "{module} imports {extra:?}; ARCHITECTURE.md allows only {may:?}"
    );
}

#[test]
fn layers_import_only_what_the_map_allows() {
    let g = imports();
    assert!(g.contains_key("model") && g.contains_key("rebind"), "{g:?}");
    allowed("model", &[], &g);
    allowed("rebind", &["model"], &g);
    allowed("conflict", &["model", "rebind"], &g);
    allowed("unixbind", &["model"], &g);
    allowed("tally", &["model", "fasthash"], &g);
    allowed("fasthash", &[], &g);
    allowed("yaml", &[], &g);
    allowed("fsread", &[], &g);
    allowed("publish", &["metrics", "model"], &g);
    // The renderer reads snapshots; it never reaches back into the poll.
    allowed("metrics", &["model", "conflict"], &g);
    assert!(
        !g["server"].contains("poller"),
        "the server talks to the poller only through publish: {:?}",
        g["server"]
    );
}

#[test]
fn no_cycle_among_top_level_modules() {
    let g = imports();
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
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
    for m in g.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(m, &g, &mut stack, &mut done) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_scanner_sees_imports() {
    // The checks above could pass on a scanner that finds nothing.
    assert_eq!(
        crate_paths("use crate::model::{Protocol, Socket};"),
        vec!["model"]
    );
    assert_eq!(
        crate_paths("use crate::{config::Service, rebind, source::owners};"),
        vec!["config", "rebind", "source"]
    );
    let g = imports();
    assert!(g["collect"].contains("rebind"), "{:?}", g["collect"]);
}
