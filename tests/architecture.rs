//! The code map of ARCHITECTURE.md, checked on the source: every row's "may import"
//! column is parsed from the file itself, so the map and this test cannot drift apart.
//! Every top-level module of `src/` must have a row, every row must name a module, no
//! module may import a crate module its row does not list, and there is no cycle among
//! the top-level modules. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One row of the code map: module -> the modules it may import (`None`: everything).
type Map = BTreeMap<String, Option<BTreeSet<String>>>;

/// Parses the `## Code map` table of an ARCHITECTURE.md text.
fn parse_map(text: &str) -> Result<Map, String> {
    let section = text
        .split("\n## Code map")
        .nth(1)
        .ok_or("no `## Code map` section")?;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut map = Map::new();
    let mut header_seen = false;
    for (n, line) in section.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        // `\|` is a pipe inside a cell (Markdown), not a column border.
        let line = line.replace("\\|", "\u{0}");
        let cols: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cols.len() != 3 {
            return Err(format!(
                "code map line {n}: {} columns, want 3: {line}",
                cols.len()
            ));
        }
        if !header_seen {
            if cols[0] != "module" || cols[2] != "may import" {
                return Err(format!(
                    "code map header is not module|job|may import: {line}"
                ));
            }
            header_seen = true;
            continue;
        }
        if cols[0].starts_with("---") {
            continue;
        }
        let module = cols[0]
            .trim_matches('`')
            .trim_end_matches(".rs")
            .to_string();
        let may = match cols[2] {
            "everything" => None,
            "nothing" => Some(BTreeSet::new()),
            list => {
                let mut set = BTreeSet::new();
                for item in list.split(',') {
                    let item = item.trim();
                    let name = item
                        .strip_prefix('`')
                        .and_then(|s| s.strip_suffix('`'))
                        .ok_or_else(|| format!("row {module}: `{item}` is not a `module`"))?;
                    set.insert(name.to_string());
                }
                Some(set)
            }
        };
        if map.insert(module.clone(), may).is_some() {
            return Err(format!("module {module} has two rows"));
        }
    }
    if map.is_empty() {
        return Err("the code map has no rows".into());
    }
    Ok(map)
}

fn code_map() -> Map {
    let path = repo().join("ARCHITECTURE.md");
    let text = std::fs::read_to_string(&path).expect("read ARCHITECTURE.md");
    parse_map(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Top-level module -> the crate modules its non-test code names (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = repo().join("src");
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
        if top == "lib" || f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let entry = out.entry(top.clone()).or_default();
        // `bindwatch::x` in main.rs is the same as `crate::x` elsewhere.
        for name in crate_paths(&strip_comments(code)) {
            if name != top {
                entry.insert(name);
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

/// The code without `//` comments (doc comments included): they are not imports.
fn strip_comments(code: &str) -> String {
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Modules named by `crate::name`, `bindwatch::name` and by `use crate::{a::.., b, ..}`,
/// also where a group spans several lines.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for root in ["crate::", "bindwatch::"] {
        for (i, _) in code.match_indices(root) {
            // `foo_crate::` or `my_bindwatch::` are other paths.
            if code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let rest = &code[i + root.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // The top-level items of the group, up to its closing brace.
                let mut depth = 0usize;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            names.push(ident(item.trim()));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                names.push(ident(item.trim()));
            } else {
                names.push(ident(rest));
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Every breach of `map` by `graph`, one line each.
fn breaches(map: &Map, graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (module, got) in graph {
        match map.get(module) {
            None => out.push(format!("{module} has no row in the code map")),
            Some(None) => {}
            Some(Some(may)) => {
                let extra: Vec<&String> = got.difference(may).collect();
                if !extra.is_empty() {
                    out.push(format!(
                        "{module} imports {extra:?}; the code map allows only {may:?}"
                    ));
                }
            }
        }
    }
    for module in map.keys() {
        if !graph.contains_key(module) {
            out.push(format!(
                "the code map's row {module} names no module of src/"
            ));
        }
    }
    out
}

#[test]
fn every_row_of_the_code_map_holds() {
    let map = code_map();
    let graph = imports();
    let found = breaches(&map, &graph);
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md's code map is broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_map_rules_the_core_layers() {
    // A map that lost its rows, or allows everything, would pass the test above.
    let map = code_map();
    assert!(map.len() >= 25, "only {} rows", map.len());
    assert_eq!(
        map["model"],
        Some(BTreeSet::new()),
        "the data model must import nothing"
    );
    assert_eq!(
        map["rebind"],
        Some(BTreeSet::from(["model".to_string()])),
        "the engine imports only the model"
    );
    let server = map["server"].as_ref().expect("server has a list");
    assert!(
        !server.contains("poller"),
        "the server never imports the poller"
    );
}

#[test]
fn a_broken_row_is_found() {
    // The same check on a map with one row narrowed must report that row.
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("read");
    let mut map = parse_map(&text).expect("parse");
    map.insert(
        "collect".into(),
        Some(BTreeSet::from(["model".to_string()])),
    );
    let found = breaches(&map, &imports());
    assert!(
        found.iter().any(|l| l.starts_with("collect imports")),
        "{found:?}"
    );
    map.remove("tally");
    let found = breaches(&map, &imports());
    assert!(
        found
            .iter()
            .any(|l| l == "tally has no row in the code map"),
        "{found:?}"
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
    assert_eq!(
        crate_paths("use crate::{\n    model::{A, B},\n    netns,\n};"),
        vec!["model", "netns"]
    );
    assert_eq!(
        crate_paths("let x = bindwatch::serve::run();"),
        vec!["serve"]
    );
    assert!(crate_paths("use other_crate::x;").is_empty());
    let g = imports();
    assert!(g["collect"].contains("rebind"), "{:?}", g["collect"]);
}

#[test]
fn the_parser_reads_rows() {
    let text = "x\n## Code map\n\n| module | job | may import |\n|---|---|---|\n\
                | `a` | j | nothing |\n| `b` | j | `a`, `c` |\n| `main.rs` | j | everything |\n\n## Next\n| `z` | j | nothing |\n";
    let map = parse_map(text).expect("parse");
    assert_eq!(map.len(), 3);
    assert_eq!(map["a"], Some(BTreeSet::new()));
    assert_eq!(
        map["b"],
        Some(BTreeSet::from(["a".to_string(), "c".to_string()]))
    );
    assert_eq!(map["main"], None);
    assert!(parse_map("## Code map\n| module | job | may import |\n| `a` | j | a, b |\n").is_err());
}
