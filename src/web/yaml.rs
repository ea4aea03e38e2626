//! A YAML tree that keeps line numbers, and the checking helpers the web config
//! validator needs (unknown and duplicate keys, scalars, lists, booleans).
//!
//! A small copy of the one in [`crate::config`]: the two files share the approach
//! (every problem at once, each with its line) but not code, so that the watched-services
//! parser stays untouched by the web config.

use std::collections::BTreeMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::config::Problem;

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

impl MarkedEventReceiver for TreeBuilder {
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

/// Parses YAML text into a tree; `Ok(None)` for an empty document.
///
/// # Errors
/// A syntax error, with its line.
pub(crate) fn parse_tree(text: &str) -> Result<Option<Node>, Problem> {
    let mut b = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, false) {
        return Err(Problem {
            line: e.marker().line().max(1),
            key: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        });
    }
    Ok(b.root)
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
