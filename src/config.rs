//! The watched-services file (`--config.file`): YAML in, validated [`Config`] out.
//!
//! serde stops at the first error and forgets where a value stood; an operator
//! fixing a file wants every problem at once, each with its line. So the YAML is read
//! into a small tree that keeps line numbers (the private `yaml` module, shared with the
//! web config) and
//! validated by hand, collecting every error. Pure apart from [`load`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::model::Protocol;
pub use crate::model::{OwnerMatch, Service};
use crate::yaml::{join, parse_tree, Node, Problems};
pub use crate::yaml::{ConfigError, Problem};

mod unix;

pub use crate::model::UnixService;

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub services: Vec<Service>,
    /// Services with a `unix:` address instead of protocol and port.
    pub unix_services: Vec<UnixService>,
}

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
    .map_err(|e| ConfigError::unreadable(path, e.reason()))?;
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
    let root = match parse_tree(text).map_err(|p| vec![p])? {
        // An empty file is refused: on a reload it would silently drop every watched
        // service (a truncated write, a config management run gone wrong).
        None => {
            return Err(vec![Problem {
                line: 1,
                key: String::new(),
                message: "no YAML document (the file is empty or only whitespace and comments); to watch nothing, write `services: []`".to_string(),
            }])
        }
        // A lone `~` or `---` is as empty.
        Some(root) if root.is_null() => {
            return Err(vec![Problem {
                line: root.line.max(1),
                key: String::new(),
                message: "the document is empty (null); to watch nothing, write `services: []`".to_string(),
            }])
        }
        Some(root) => root,
    };
    let mut p = Problems::default();
    let cfg = validate(&root, &mut p);
    p.finish(cfg)
}

fn validate(root: &Node, p: &mut Problems) -> Config {
    let Some(top) = p.mapping(root, "") else {
        return Config::default();
    };
    let f = p.fields(top, &["services"], &[], "");
    let Some(items) = f.get("services").and_then(|n| p.list(n, "services")) else {
        return Config::default();
    };
    let mut services: Vec<Service> = Vec::new();
    let mut unix_services: Vec<UnixService> = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("services[{i}]");
        if unix::is_unix(item) {
            if let Some(s) = unix::service(item, &at, p) {
                if let Some(first) = names.get(&s.name) {
                    p.add(
                        item,
                        &join(&at, "name"),
                        format!(
                            "duplicate service name {:?} (first defined on line {first})",
                            s.name
                        ),
                    );
                    continue;
                }
                names.insert(s.name.clone(), item.line);
                unix_services.push(s);
            }
            continue;
        }
        if let Some(s) = service(item, &at, p) {
            if let Some(first) = names.get(&s.name) {
                p.add(
                    item,
                    &join(&at, "name"),
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
    Config {
        services,
        unix_services,
    }
}

const SERVICE_KEYS: [&str; 7] = [
    "name",
    "protocol",
    "port",
    "addresses",
    "owner",
    "reuseaddr",
    "reuseport",
];

/// One item of `services`. With problems, only its name (for the duplicate-name check).
fn service(item: &Node, at: &str, p: &mut Problems) -> Option<Service> {
    let entries = p.mapping(item, at)?;
    let before = p.len();
    let f = p.fields(entries, &SERVICE_KEYS, &[], at);
    let key = |k: &str| join(at, k);
    let name = required(&f, "name", item, at, p).and_then(|n| p.string(n, &key("name")));
    let protocol = f
        .get("protocol")
        .map_or(Some(Protocol::Tcp), |n| protocol(n, &key("protocol"), p));
    let port = required(&f, "port", item, at, p).and_then(|n| port(n, &key("port"), p));
    let addresses = f
        .get("addresses")
        .map(|n| addresses(n, &key("addresses"), p))
        .unwrap_or_default();
    let owner = f
        .get("owner")
        .map(|n| owner(n, &key("owner"), p))
        .unwrap_or_default();
    let reuseaddr = f
        .get("reuseaddr")
        .map_or(Some(false), |n| p.boolean(n, &key("reuseaddr")));
    let reuseport = f
        .get("reuseport")
        .map_or(Some(false), |n| p.boolean(n, &key("reuseport")));
    if p.len() > before {
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

/// A key the service must have; a problem on the item's line when it is missing.
fn required<'a>(
    f: &BTreeMap<&str, &'a Node>,
    name: &str,
    item: &Node,
    at: &str,
    p: &mut Problems,
) -> Option<&'a Node> {
    let n = f.get(name).copied();
    if n.is_none() {
        p.add(item, at, format!("missing required key {name:?}"));
    }
    n
}

fn protocol(n: &Node, key: &str, p: &mut Problems) -> Option<Protocol> {
    let s = p.scalar(n, key)?;
    match s.parse() {
        Ok(proto) => Some(proto),
        Err(_) => {
            p.add(n, key, format!("{s:?} is not tcp or udp"));
            None
        }
    }
}

fn port(n: &Node, key: &str, p: &mut Problems) -> Option<u16> {
    let s = p.scalar(n, key)?;
    match s.parse::<u16>() {
        Ok(port) if port >= 1 => Some(port),
        _ => {
            p.add(n, key, format!("{s} is not a port (1-65535)"));
            None
        }
    }
}

fn addresses(n: &Node, key: &str, p: &mut Problems) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (j, a) in p.list(n, key).unwrap_or_default().iter().enumerate() {
        let k = format!("{key}[{j}]");
        if let Some(s) = p.scalar(a, &k) {
            match s.parse::<IpAddr>() {
                Ok(ip) => out.push(ip),
                Err(_) => p.add(a, &k, format!("{s:?} is not an IP address")),
            }
        }
    }
    out
}

fn owner(n: &Node, key: &str, p: &mut Problems) -> OwnerMatch {
    let mut owner = OwnerMatch::default();
    let Some(entries) = p.mapping(n, key) else {
        return owner;
    };
    let o = p.fields(entries, &["process", "unit", "user"], &[], key);
    let mut get = |k: &str| o.get(k).and_then(|v| p.string(v, &join(key, k)));
    owner.process = get("process");
    owner.unit = get("unit");
    owner.user = get("user");
    owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
