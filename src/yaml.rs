//! A YAML tree that keeps line numbers, shared by the two YAML files bindwatch reads
//! ([`crate::config`] and [`crate::web::config`]), and the one set of checking helpers
//! ([`Problems`]) both validate with, reporting every problem at once, each with its
//! line, the same way in both files; [`ConfigError`] names the file.
//!
//! serde stops at the first error and forgets where a value stood, hence a tree. It is
//! built from `yaml-rust2`'s parser events in a loop, not with its recursive `load`:
//! a file nested a few thousand levels deep would otherwise overflow the stack (found by
//! tests/fuzz_parsers.rs); nesting is capped at [`MAX_DEPTH`] instead.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    /// Where in the document, e.g. `services[1].port`.
    pub key: String,
    pub message: String,
}

/// A YAML value with the (1-based) line it starts on.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// Text and whether it was quoted (a quoted `"true"` is a string, not a bool).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Alias,
}

impl Node {
    /// `~`, `null` or nothing at all: the key is present but unset.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s, false) if s.is_empty() || s == "~" || s == "null")
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                // Only the first document counts.
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, pending_key)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                _ => {}
            },
        }
    }

    fn open(&mut self, line: usize, value: Value) {
        self.stack.push((Node { line, value }, None));
    }
}

impl TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(s, style, _, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_value(Node {
                    line,
                    value: Value::Scalar(s, quoted),
                });
            }
            Event::SequenceStart(..) => self.open(line, Value::Seq(Vec::new())),
            Event::MappingStart(..) => self.open(line, Value::Map(Vec::new())),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            Event::Alias(_) => self.push_value(Node {
                line,
                value: Value::Alias,
            }),
            _ => {}
        }
    }
}

/// Deeper nesting is refused: no config needs it, and the tree is dropped recursively.
pub(crate) const MAX_DEPTH: usize = 64;

/// Parses the one document of YAML text into a tree; `Ok(None)` for an empty one.
///
/// # Errors
/// A syntax error, nesting deeper than [`MAX_DEPTH`], or a second document (which
/// would otherwise be silently ignored), with its line.
pub(crate) fn parse_tree(text: &str) -> Result<Option<Node>, Problem> {
    // A byte order mark (as some editors write) would otherwise join the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut b = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0usize;
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| Problem {
            line: e.marker().line().max(1),
            key: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        match ev {
            Event::StreamEnd => return Ok(b.root),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(Problem {
                        line: mark.line().max(1),
                        key: String::new(),
                        message: "a second YAML document starts here; bindwatch reads exactly one (remove the `---` and what follows, or merge them)".to_string(),
                    });
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if b.stack.len() >= MAX_DEPTH => {
                return Err(Problem {
                    line: mark.line().max(1),
                    key: String::new(),
                    message: format!("nested more than {MAX_DEPTH} levels deep"),
                });
            }
            ev => b.on_event(ev, mark),
        }
    }
}

/// Every problem found in a file, for the error message: the file, then one line per
/// problem with its line number and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The file cannot be read at all: a problem with no line.
    pub fn unreadable(path: &Path, reason: impl fmt::Display) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                key: String::new(),
                message: format!("cannot read the file: {reason}"),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.path.display())?;
            // Line 0: a problem with the file as a whole (unreadable), not a line of it.
            if p.line > 0 {
                write!(f, ":{}", p.line)?;
            }
            if !p.key.is_empty() {
                write!(f, ": {}", p.key)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems, each with the line of the node it is about. These helpers are
/// the one way both YAML files check a value, so they answer alike:
/// - an alias (`*name`) is refused wherever a value is expected;
/// - null (`~`, `null`, nothing) is an empty mapping or an empty list, and the empty
///   string for a scalar;
/// - a key given twice is reported on its second line, naming the first; an unknown
///   key lists the known ones.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<Problem>);

/// What an alias gets wherever a value is expected.
pub(crate) const ALIAS: &str = "YAML aliases are not supported here";

impl Problems {
    pub fn add(&mut self, node: &Node, key: &str, message: impl Into<String>) {
        self.add_line(node.line, key, message);
    }

    pub fn add_line(&mut self, line: usize, key: &str, message: impl Into<String>) {
        self.0.push(Problem {
            line: line.max(1),
            key: key.to_string(),
            message: message.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `value` when nothing was found, else every problem sorted by line.
    ///
    /// # Errors
    /// The problems found.
    pub fn finish<T>(mut self, value: T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            self.0.sort_by_key(|p| p.line);
            Err(self.0)
        }
    }

    /// A value of the wrong kind: an alias says so, anything else what was expected.
    fn wrong(&mut self, n: &Node, key: &str, expected: &str) {
        let message = match n.value {
            Value::Alias => ALIAS,
            _ => expected,
        };
        self.add(n, key, message);
    }

    /// A single value; `None` (and a problem) for lists, mappings and aliases.
    pub fn scalar<'a>(&mut self, n: &'a Node, key: &str) -> Option<&'a str> {
        match &n.value {
            Value::Scalar(s, _) => Some(s),
            _ => {
                self.wrong(n, key, "expected a single value");
                None
            }
        }
    }

    /// A required text: null and the empty string are problems.
    pub fn string(&mut self, n: &Node, key: &str) -> Option<String> {
        let s = self.scalar(n, key)?;
        if s.is_empty() || n.is_null() {
            self.add(n, key, "must not be empty");
            return None;
        }
        Some(s.to_string())
    }

    /// A scalar where null and the empty string mean "not set" (Go's zero value).
    pub fn optional_string(&mut self, n: &Node, key: &str) -> Option<String> {
        if n.is_null() {
            return None;
        }
        self.scalar(n, key)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// `true` or `false`, unquoted (a quoted `"true"` is a string).
    pub fn boolean(&mut self, n: &Node, key: &str) -> Option<bool> {
        match &n.value {
            Value::Scalar(s, false) if s == "true" => Some(true),
            Value::Scalar(s, false) if s == "false" => Some(false),
            _ => {
                self.wrong(n, key, "expected true or false");
                None
            }
        }
    }

    /// A mapping's entries; null counts as an empty mapping.
    pub fn mapping<'a>(&mut self, n: &'a Node, key: &str) -> Option<&'a [(Node, Node)]> {
        match &n.value {
            Value::Map(m) => Some(m),
            _ if n.is_null() => Some(&[]),
            _ => {
                self.wrong(n, key, "expected a mapping (key: value lines)");
                None
            }
        }
    }

    /// A list's items; null counts as an empty list.
    pub fn list<'a>(&mut self, n: &'a Node, key: &str) -> Option<&'a [Node]> {
        match &n.value {
            Value::Seq(items) => Some(items),
            _ if n.is_null() => Some(&[]),
            _ => {
                self.wrong(n, key, "expected a list");
                None
            }
        }
    }

    /// Every key of a mapping with its value, reporting non-scalar and duplicate keys.
    pub fn entries<'a>(
        &mut self,
        entries: &'a [(Node, Node)],
        prefix: &str,
    ) -> Vec<(&'a str, &'a Node, &'a Node)> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (k, v) in entries {
            let Value::Scalar(name, _) = &k.value else {
                self.add(k, prefix, "keys must be plain names");
                continue;
            };
            let full = join(prefix, name);
            if let Some(first) = seen.get(name.as_str()) {
                self.add(k, &full, format!("given twice (first on line {first})"));
                continue;
            }
            seen.insert(name, k.line);
            out.push((name.as_str(), k, v));
        }
        out
    }

    /// Looks up known keys; reports unknown, unsupported and duplicate keys.
    pub fn fields<'a>(
        &mut self,
        entries: &'a [(Node, Node)],
        known: &[&str],
        unsupported: &[(&str, &str)],
        prefix: &str,
    ) -> BTreeMap<&'a str, &'a Node> {
        let mut out = BTreeMap::new();
        for (name, k, v) in self.entries(entries, prefix) {
            let full = join(prefix, name);
            if let Some((_, why)) = unsupported.iter().find(|(u, _)| *u == name) {
                self.add(k, &full, format!("not supported by bindwatch: {why}"));
            } else if !known.contains(&name) {
                self.add(
                    k,
                    &full,
                    format!("unknown key (known keys: {})", known.join(", ")),
                );
            } else {
                out.insert(name, v);
            }
        }
        out
    }
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

// The tests also show that both YAML files (the services config and the web config)
// answer the same bad input the same way, because they check with these helpers.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut block = String::from("services:\n");
        for i in 0..5000 {
            block.push_str(&" ".repeat(i));
            block.push_str("-\n");
        }
        let flow = format!("a: {}", "[".repeat(100_000));
        for text in [block, flow] {
            let p = parse_tree(&text).unwrap_err();
            assert!(p.line >= 1, "{p:?}");
            assert!(
                p.message.contains("levels deep") || p.message.contains("recursion limit"),
                "{p:?}"
            );
        }
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_tree(&ok).is_ok());
    }

    #[test]
    fn one_document_only_and_lines() {
        let p = parse_tree("a: 1\nb:\n  - x\n---\nc: [\n").unwrap_err();
        assert_eq!(p.line, 4, "{p:?}");
        assert!(p.message.contains("second YAML document"), "{p:?}");
        let t = parse_tree("a: 1\nb:\n  - x\n...\n").unwrap().unwrap();
        let Value::Map(m) = &t.value else {
            panic!("{t:?}")
        };
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].1.line, 3);
        assert!(parse_tree("").unwrap().is_none());
        assert!(parse_tree("# only a comment\n").unwrap().is_none());
        let bom = parse_tree("\u{feff}a: 1\n").unwrap().unwrap();
        let Value::Map(m) = &bom.value else {
            panic!("{bom:?}")
        };
        assert!(matches!(&m[0].0.value, Value::Scalar(k, _) if k == "a"));
    }

    /// The services config's and the web config's problems, as `line key: message`.
    fn services(text: &str) -> Vec<String> {
        lines(crate::config::parse(text).err().unwrap_or_default())
    }

    fn web(text: &str) -> Vec<String> {
        let base = Path::new("/etc/bindwatch");
        lines(
            crate::web::config::parse(text, base)
                .err()
                .unwrap_or_default(),
        )
    }

    fn lines(problems: Vec<Problem>) -> Vec<String> {
        let line = |p: Problem| format!("{} {}: {}", p.line, p.key, p.message);
        problems.into_iter().map(line).collect()
    }

    const ONE_SERVICE: &str = "services:\n  - name: a\n    port: 80\n";
    // Puts a fragment on line 4 as ONE_SERVICE does, and defines the anchor `t`.
    const WEB_PREFIX: &str = "http_server_config:\n  http2: &t true\nbasic_auth_users:\n";

    /// One bad input in both files: (what, services fragment and where its problem is,
    /// web fragment and where, the one message both give).
    #[rustfmt::skip]
    const CASES: [(&str, &str, &str, &str, &str, &str); 11] = [
        ("alias for a mapping",
         "    reuseaddr: &t true\n    owner: *t\n", "5 services[0].owner",
         "rate_limit: *t\n", "4 rate_limit", ALIAS),
        ("alias for a single value",
         "    owner:\n      user: &u x\n      unit: *u\n", "6 services[0].owner.unit",
         "rate_limit:\n  interval: &i 1s\n  burst: *i\n", "6 rate_limit.burst", ALIAS),
        ("alias for a list",
         "    reuseaddr: &t true\n    addresses: *t\n", "5 services[0].addresses",
         "auth_excluded_paths: *t\n", "4 auth_excluded_paths", ALIAS),
        ("alias for true or false",
         "    reuseaddr: &t true\n    reuseport: *t\n", "5 services[0].reuseport",
         "tls_server_config:\n  prefer_server_cipher_suites: *t\n",
         "5 tls_server_config.prefer_server_cipher_suites", ALIAS),
        ("duplicate key",
         "    owner:\n      user: x\n      user: y\n", "6 services[0].owner.user",
         "rate_limit:\n  burst: 1\n  burst: 2\n", "6 rate_limit.burst",
         "given twice (first on line 5)"),
        ("duplicate key at the top",
         "services: []\n", "4 services",
         "http_server_config:\n", "4 http_server_config", "given twice (first on line 1)"),
        ("mapping expected, list given",
         "    owner: [a]\n", "4 services[0].owner",
         "rate_limit: [a]\n", "4 rate_limit", "expected a mapping (key: value lines)"),
        ("list expected, single value given",
         "    addresses: 5\n", "4 services[0].addresses",
         "auth_excluded_paths: 5\n", "4 auth_excluded_paths", "expected a list"),
        ("single value expected, mapping given",
         "    owner:\n      user: {a: 1}\n", "5 services[0].owner.user",
         "rate_limit:\n  burst: {a: 1}\n", "5 rate_limit.burst", "expected a single value"),
        ("true or false expected, a quoted string given",
         "    reuseaddr: \"true\"\n", "4 services[0].reuseaddr",
         "tls_server_config:\n  prefer_server_cipher_suites: \"true\"\n",
         "5 tls_server_config.prefer_server_cipher_suites", "expected true or false"),
        ("a key that is not a name",
         "    owner:\n      [a]: 1\n", "5 services[0].owner",
         "rate_limit:\n  [a]: 1\n", "5 rate_limit", "keys must be plain names"),
    ];

    #[test]
    fn both_files_answer_bad_input_alike() {
        for (what, s_frag, s_at, w_frag, w_at, message) in CASES {
            let s = services(&format!("{ONE_SERVICE}{s_frag}"));
            assert_eq!(s, [format!("{s_at}: {message}")], "services config, {what}");
            let w = web(&format!("{WEB_PREFIX}{w_frag}"));
            assert_eq!(w, [format!("{w_at}: {message}")], "web config, {what}");
        }
    }

    #[test]
    fn both_files_list_their_known_keys_for_an_unknown_one() {
        let s = services(&format!(
            "{ONE_SERVICE}    owner:\n      pid: 1\n      pid: 2\n"
        ));
        let w = web("rate_limit:\n  interval: 1s\n  burst: 1\n  pid: 1\n  pid: 2\n");
        assert_eq!(
            s,
            [
                "5 services[0].owner.pid: unknown key (known keys: process, unit, user)",
                "6 services[0].owner.pid: given twice (first on line 5)",
            ]
        );
        assert_eq!(
            w,
            [
                "4 rate_limit.pid: unknown key (known keys: interval, burst)",
                "5 rate_limit.pid: given twice (first on line 4)",
            ]
        );
    }

    #[test]
    fn null_is_an_empty_mapping_or_list_in_both_files() {
        for frag in ["    owner:\n", "    owner: ~\n", "    addresses: null\n"] {
            let c = crate::config::parse(&format!("{ONE_SERVICE}{frag}"))
                .unwrap_or_else(|p| panic!("{frag:?}: {p:?}"));
            assert!(c.services[0].owner.is_empty() && c.services[0].addresses.is_empty());
        }
        for text in [
            "rate_limit:\n",
            "http_server_config: ~\n",
            "auth_excluded_paths: null\n",
        ] {
            let c = crate::web::config::parse(text, Path::new("/"))
                .unwrap_or_else(|p| panic!("{text:?}: {p:?}"));
            assert!(c.rate_limit.is_none() && c.headers.is_empty());
            assert!(c.auth_excluded_paths.is_empty());
        }
        // A required text is not null in either file's sense of "set".
        assert_eq!(
            services("services:\n  - name: ~\n    port: 80\n"),
            ["2 services[0].name: must not be empty"]
        );
    }

    #[test]
    fn both_loaders_name_file_line_and_key() {
        let dir = std::env::temp_dir().join(format!("bindwatch-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svc = dir.join("bindwatch.yml");
        let webf = dir.join("web.yml");
        std::fs::write(&svc, "services: []\nservices: []\n").unwrap();
        std::fs::write(&webf, "rate_limit:\nrate_limit:\n").unwrap();
        let s = crate::config::load(&svc).unwrap_err().to_string();
        let w = crate::web::load(&webf).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            s,
            format!(
                "{0}: 1 problem\n  {0}:2: services: given twice (first on line 1)",
                svc.display()
            )
        );
        assert_eq!(
            w,
            format!(
                "{0}: 1 problem\n  {0}:2: rate_limit: given twice (first on line 1)",
                webf.display()
            )
        );
        let missing = Path::new("/nonexistent/a.yml");
        let s = crate::config::load(missing).unwrap_err().to_string();
        let w = crate::web::load(missing).unwrap_err().to_string();
        assert_eq!(s, w);
        assert!(
            s.ends_with(
                "\n  /nonexistent/a.yml: cannot read the file: No such file or directory (os error 2)"
            ),
            "{s}"
        );
    }
}
