//! The watched-services file (`--config.file`): YAML in, validated [`Config`] out.
//!
//! serde stops at the first error and forgets where a value stood; an operator
//! fixing a file wants every problem at once, each with its line. So the YAML is read
//! into a small tree that keeps line numbers (the private `yaml` module, shared with the
//! web config) and
//! validated by hand, collecting every error. Pure apart from [`load`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::model::Protocol;
pub use crate::model::{OwnerMatch, Service};
pub use crate::yaml::Problem;
use crate::yaml::{parse_tree, Node, Value};

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<Service>,
}

/// Every problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
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

/// Reads and validates `path`.
///
/// # Errors
/// Unreadable file, YAML syntax errors, or every validation problem found.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = crate::fsread::read_to_string(
        path,
        crate::fsread::Symlinks::Follow,
        crate::fsread::CONFIG_MAX,
    )
    .map_err(|e| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem {
            line: 0,
            key: String::new(),
            message: format!("cannot read the file: {}", e.reason()),
        }],
    })?;
    parse(&text).map_err(|problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    })
}

/// Parses and validates config text.
///
/// # Errors
/// Every problem found, in document order.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let root = parse_tree(text).map_err(|p| vec![p])?;
    let mut problems = Vec::new();
    let cfg = match root {
        // An empty file is refused: on a reload it would silently drop every watched
        // service (a truncated write, a config management run gone wrong).
        None => {
            return Err(vec![Problem {
                line: 1,
                key: String::new(),
                message: "no YAML document (the file is empty or only whitespace and comments); to watch nothing, write `services: []`".to_string(),
            }])
        }
        Some(root) => validate(&root, &mut problems),
    };
    if problems.is_empty() {
        Ok(cfg)
    } else {
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

fn problem(problems: &mut Vec<Problem>, node: &Node, key: &str, message: impl Into<String>) {
    problems.push(Problem {
        line: node.line,
        key: key.to_string(),
        message: message.into(),
    });
}

fn scalar<'a>(n: &'a Node, key: &str, problems: &mut Vec<Problem>) -> Option<&'a str> {
    match &n.value {
        Value::Scalar(s, _) => Some(s),
        _ => {
            problem(problems, n, key, "expected a single value");
            None
        }
    }
}

fn string(n: &Node, key: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let s = scalar(n, key, problems)?;
    if s.is_empty() {
        problem(problems, n, key, "must not be empty");
        return None;
    }
    Some(s.to_string())
}

fn boolean(n: &Node, key: &str, problems: &mut Vec<Problem>) -> Option<bool> {
    match &n.value {
        Value::Scalar(s, false) if s == "true" => Some(true),
        Value::Scalar(s, false) if s == "false" => Some(false),
        _ => {
            problem(problems, n, key, "expected true or false");
            None
        }
    }
}

fn mapping<'a>(n: &'a Node, key: &str, problems: &mut Vec<Problem>) -> Option<&'a [(Node, Node)]> {
    match &n.value {
        Value::Map(m) => Some(m),
        _ => {
            problem(problems, n, key, "expected a mapping (key: value lines)");
            None
        }
    }
}

/// Looks up known keys; reports unknown and duplicate keys.
fn fields<'a>(
    entries: &'a [(Node, Node)],
    known: &[&str],
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<&'a str, &'a Node> {
    let mut out = BTreeMap::new();
    let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, v) in entries {
        let Value::Scalar(name, _) = &k.value else {
            problem(problems, k, prefix, "keys must be plain names");
            continue;
        };
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if !known.contains(&name.as_str()) {
            problem(
                problems,
                k,
                &full,
                format!("unknown key (known keys: {})", known.join(", ")),
            );
        } else if let Some(first) = first_line.get(name.as_str()) {
            problem(
                problems,
                k,
                &full,
                format!("given twice (first on line {first})"),
            );
        } else {
            first_line.insert(name.as_str(), k.line);
            out.insert(name.as_str(), v);
        }
    }
    out
}

fn validate(root: &Node, problems: &mut Vec<Problem>) -> Config {
    let Some(top) = mapping(root, "", problems) else {
        return Config::default();
    };
    let f = fields(top, &["services"], "", problems);
    let mut services: Vec<Service> = Vec::new();
    let Some(list) = f.get("services") else {
        return Config::default();
    };
    let items = match &list.value {
        Value::Seq(items) => items.as_slice(),
        Value::Scalar(s, false) if s.is_empty() || s == "null" || s == "~" => &[],
        _ => {
            problem(problems, list, "services", "expected a list of services");
            return Config::default();
        }
    };
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("services[{i}]");
        if let Some(s) = service(item, &at, problems) {
            if let Some(first) = names.get(&s.name) {
                problem(
                    problems,
                    item,
                    &format!("{at}.name"),
                    format!(
                        "duplicate service name {:?} (first defined on line {first})",
                        s.name
                    ),
                );
                continue;
            }
            names.insert(s.name.clone(), item.line);
            services.push(s);
        }
    }
    Config { services }
}

fn service(item: &Node, at: &str, problems: &mut Vec<Problem>) -> Option<Service> {
    let entries = mapping(item, at, problems)?;
    let before = problems.len();
    let f = fields(
        entries,
        &[
            "name",
            "protocol",
            "port",
            "addresses",
            "owner",
            "reuseaddr",
            "reuseport",
        ],
        at,
        problems,
    );
    let key = |k: &str| format!("{at}.{k}");
    let name = match f.get("name") {
        Some(n) => string(n, &key("name"), problems),
        None => {
            problem(problems, item, at, "missing required key \"name\"");
            None
        }
    };
    let protocol = match f.get("protocol") {
        None => Some(Protocol::Tcp),
        Some(n) => scalar(n, &key("protocol"), problems).and_then(|s| match s.parse() {
            Ok(p) => Some(p),
            Err(_) => {
                problem(
                    problems,
                    n,
                    &key("protocol"),
                    format!("{s:?} is not tcp or udp"),
                );
                None
            }
        }),
    };
    let port = match f.get("port") {
        None => {
            problem(problems, item, at, "missing required key \"port\"");
            None
        }
        Some(n) => scalar(n, &key("port"), problems).and_then(|s| match s.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => Some(p as u16),
            _ => {
                problem(
                    problems,
                    n,
                    &key("port"),
                    format!("{s} is not a port (1-65535)"),
                );
                None
            }
        }),
    };
    let mut addresses = Vec::new();
    if let Some(n) = f.get("addresses") {
        match &n.value {
            Value::Seq(list) => {
                for (j, a) in list.iter().enumerate() {
                    let k = format!("{at}.addresses[{j}]");
                    if let Some(s) = scalar(a, &k, problems) {
                        match s.parse::<IpAddr>() {
                            Ok(ip) => addresses.push(ip),
                            Err(_) => {
                                problem(problems, a, &k, format!("{s:?} is not an IP address"))
                            }
                        }
                    }
                }
            }
            _ => problem(
                problems,
                n,
                &key("addresses"),
                "expected a list of IP addresses",
            ),
        }
    }
    let mut owner = OwnerMatch::default();
    if let Some(n) = f.get("owner") {
        if let Some(entries) = mapping(n, &key("owner"), problems) {
            let o = fields(
                entries,
                &["process", "unit", "user"],
                &key("owner"),
                problems,
            );
            owner.process = o
                .get("process")
                .and_then(|v| string(v, &key("owner.process"), problems));
            owner.unit = o
                .get("unit")
                .and_then(|v| string(v, &key("owner.unit"), problems));
            owner.user = o
                .get("user")
                .and_then(|v| string(v, &key("owner.user"), problems));
        }
    }
    let reuseaddr = f
        .get("reuseaddr")
        .map_or(Some(false), |n| boolean(n, &key("reuseaddr"), problems));
    let reuseport = f
        .get("reuseport")
        .map_or(Some(false), |n| boolean(n, &key("reuseport"), problems));
    if problems.len() > before {
        // Still report a duplicate name for a service with other problems.
        return name.map(|name| Service {
            name,
            protocol: Protocol::Tcp,
            port: 0,
            addresses: Vec::new(),
            owner: OwnerMatch::default(),
            reuseaddr: false,
            reuseport: false,
        });
    }
    Some(Service {
        name: name?,
        protocol: protocol?,
        port: port?,
        addresses,
        owner,
        reuseaddr: reuseaddr?,
        reuseport: reuseport?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
services:
  - name: web
    protocol: tcp
    port: 443
    addresses: ["0.0.0.0", "::"]
    owner:
      process: nginx
      unit: nginx.service
      user: www-data
    reuseaddr: true
    reuseport: false
  - name: dns
    protocol: udp
    port: 53
"#;

    #[test]
    fn parses_a_full_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.port, 443);
        assert_eq!(web.addresses.len(), 2);
        assert_eq!(web.owner.process.as_deref(), Some("nginx"));
        assert!(web.reuseaddr);
        let dns = &c.services[1];
        assert_eq!(dns.protocol, Protocol::Udp);
        assert!(dns.addresses.is_empty() && dns.owner.is_empty() && !dns.reuseaddr);
    }

    #[test]
    fn empty_files_are_refused_explicit_nothing_is_not() {
        for text in ["", "  \n\t\n", "# nothing yet\n", "\u{feff}"] {
            let p = parse(text).unwrap_err();
            assert_eq!(p.len(), 1, "{text:?}");
            assert!(p[0].message.contains("no YAML document"), "{text:?}: {p:?}");
        }
        assert_eq!(parse("services:\n").unwrap(), Config::default());
        assert_eq!(parse("services: []\n").unwrap(), Config::default());
    }

    #[test]
    fn duplicate_keys_name_the_first_line() {
        let p = parse("services:\n  - name: a\n    port: 80\n    port: 81\n").unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, 4);
        assert_eq!(p[0].message, "given twice (first on line 3)");
        let p = parse("services: []\nservices: []\n").unwrap_err();
        assert_eq!(p[0].message, "given twice (first on line 1)");
    }

    #[test]
    fn a_second_document_is_refused() {
        let p = parse("services: []\n---\nservices:\n  - name: a\n    port: 80\n").unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, 2, "{p:?}");
        assert!(p[0].message.contains("second YAML document"), "{p:?}");
        // A leading `---` and a trailing `...` are one document.
        assert!(parse("---\nservices: []\n...\n").is_ok());
    }

    #[test]
    fn unreadable_file_has_no_fake_line() {
        let e = load(Path::new("/nonexistent/bindwatch.yml")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("\n  /nonexistent/bindwatch.yml: cannot read the file: No such file"),
            "{s}"
        );
        assert!(!s.contains(":0:"), "{s}");
        let e = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            e.contains("/dev/zero: cannot read the file: is a character device"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "services:\n  - name: web\n    prot: tcp\n    port: 80\n  - name: big\n    port: 70000\n  - name: web\n    port: 81\n";
        let p = parse(text).unwrap_err();
        let lines: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            lines,
            vec![
                (3, "services[0].prot"),
                (6, "services[1].port"),
                (7, "services[2].name")
            ],
            "{p:#?}"
        );
        assert!(p[0].message.contains("unknown key"));
        assert!(p[1].message.contains("70000 is not a port"));
        assert!(p[2]
            .message
            .contains("duplicate service name \"web\" (first defined on line 2)"));
    }

    #[test]
    fn value_errors_table() {
        let cases = [
            ("services: 5\n", "expected a list"),
            ("services:\n  - port: 80\n", "missing required key \"name\""),
            ("services:\n  - name: a\n", "missing required key \"port\""),
            (
                "services:\n  - name: a\n    port: 80\n    protocol: sctp\n",
                "is not tcp or udp",
            ),
            ("services:\n  - name: a\n    port: x\n", "is not a port"),
            (
                "services:\n  - name: a\n    port: 80\n    reuseaddr: \"true\"\n",
                "expected true or false",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    addresses: [\"nope\"]\n",
                "is not an IP address",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    owner: {pid: 1}\n",
                "unknown key",
            ),
            (
                "services:\n  - name: a\n    port: 80\n    port: 81\n",
                "given twice",
            ),
            ("services: [\n", "YAML syntax error"),
            ("watched: []\n", "unknown key"),
            ("- 1\n", "expected a mapping"),
        ];
        for (text, want) in cases {
            let p = parse(text).unwrap_err();
            assert!(
                p.iter().any(|p| p.message.contains(want)),
                "{text:?}: {p:#?}"
            );
            assert!(
                p.iter().all(|p| p.line >= 1),
                "{text:?}: lines are 1-based: {p:#?}"
            );
        }
    }

    #[test]
    fn display_names_file_and_line() {
        let e = ConfigError {
            path: PathBuf::from("/etc/bindwatch.yml"),
            problems: parse("services:\n  - name: a\n    port: 70000\n").unwrap_err(),
        };
        let s = e.to_string();
        assert!(
            s.contains("/etc/bindwatch.yml:3: services[0].port: 70000 is not a port"),
            "{s}"
        );
    }
}
