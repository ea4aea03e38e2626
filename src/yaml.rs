//! A YAML tree that keeps line numbers, shared by the two YAML files bindwatch reads
//! ([`crate::config`] and [`crate::web::config`]), and checking helpers for validators
//! that report every problem at once, each with its line.
//!
//! serde stops at the first error and forgets where a value stood, hence a tree. It is
//! built from `yaml-rust2`'s parser events in a loop, not with its recursive `load`:
//! a file nested a few thousand levels deep would otherwise overflow the stack (found by
//! tests/fuzz_parsers.rs); nesting is capped at [`MAX_DEPTH`] instead.

use std::collections::BTreeMap;

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

/// Collects problems, each with the line of the node it is about.
#[derive(Default)]
pub(crate) struct Problems(pub Vec<Problem>);

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

    /// A single value; `None` (and a problem) for lists, mappings and aliases.
    pub fn scalar<'a>(&mut self, n: &'a Node, key: &str) -> Option<&'a str> {
        match &n.value {
            Value::Scalar(s, _) => Some(s),
            Value::Alias => {
                self.add(n, key, "YAML aliases are not supported here");
                None
            }
            _ => {
                self.add(n, key, "expected a single value");
                None
            }
        }
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

    pub fn boolean(&mut self, n: &Node, key: &str) -> Option<bool> {
        match &n.value {
            Value::Scalar(s, false) if s == "true" => Some(true),
            Value::Scalar(s, false) if s == "false" => Some(false),
            _ => {
                self.add(n, key, "expected true or false");
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
                self.add(n, key, "expected a mapping (key: value lines)");
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
                self.add(n, key, "expected a list");
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
}
