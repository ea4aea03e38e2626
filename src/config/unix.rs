//! A watched service with a unix-domain address: `unix: /run/app.sock` (or
//! `unix: "@name"`, quoted: a bare `@` is reserved in YAML) instead of
//! `protocol`/`port`, with an optional socket `type` and the same `owner`.

use crate::model::{UnixName, UnixService, UnixType};
use crate::unixbind::{self, UnixTarget};
use crate::yaml::{join, Node, Problems, Value};

const KEYS: [&str; 4] = ["name", "unix", "type", "owner"];

/// Keys of an IP service that mean nothing beside `unix`, with why.
const NOT_WITH_UNIX: [(&str, &str); 5] = [
    (
        "protocol",
        "a unix service has no protocol (`unix` replaces protocol and port)",
    ),
    (
        "port",
        "a unix service has no port (`unix` replaces protocol and port)",
    ),
    (
        "addresses",
        "a unix service's address is its `unix` path or @name",
    ),
    (
        "reuseaddr",
        "SO_REUSEADDR changes nothing for a unix socket",
    ),
    (
        "reuseport",
        "SO_REUSEPORT changes nothing for a unix socket",
    ),
];

/// Whether the item declares a unix service (has a `unix` key).
pub(super) fn is_unix(item: &Node) -> bool {
    match &item.value {
        Value::Map(m) => m
            .iter()
            .any(|(k, _)| matches!(&k.value, Value::Scalar(s, _) if s == "unix")),
        _ => false,
    }
}

/// One unix item of `services`. With problems, only its name (for the duplicate-name
/// check) in an otherwise empty service, and the problems in `p`.
pub(super) fn service(item: &Node, at: &str, p: &mut Problems) -> Option<UnixService> {
    let entries = p.mapping(item, at)?;
    let before = p.len();
    let f = p.fields(entries, &KEYS, &NOT_WITH_UNIX, at);
    let key = |k: &str| join(at, k);
    let name = super::required(&f, "name", item, at, p).and_then(|n| p.string(n, &key("name")));
    let address = f.get("unix").and_then(|n| {
        let s = p.scalar(n, &key("unix"))?;
        match unixbind::parse_target(&format!("unix:{s}")) {
            Some(Ok(UnixTarget::Path(path))) => Some(UnixName::Path(
                std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec(),
            )),
            Some(Ok(UnixTarget::Abstract(n))) => Some(UnixName::Abstract(n)),
            Some(Err(e)) => {
                p.add(n, &key("unix"), e);
                None
            }
            None => None,
        }
    });
    let kind = f.get("type").map_or(Some(UnixType::Stream), |n| {
        let s = p.scalar(n, &key("type"))?;
        let t = UnixType::ALL.into_iter().find(|t| t.as_str() == s);
        if t.is_none() {
            p.add(
                n,
                &key("type"),
                format!("{s:?} is not stream, dgram or seqpacket"),
            );
        }
        t
    });
    let owner = f
        .get("owner")
        .map(|n| super::owner(n, &key("owner"), p))
        .unwrap_or_default();
    let name = name?;
    if p.len() > before {
        return Some(UnixService {
            name,
            address: UnixName::Path(Vec::new()),
            kind: UnixType::Stream,
            owner,
        });
    }
    Some(UnixService {
        name,
        address: address?,
        kind: kind?,
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use crate::model::{UnixName, UnixType};

    #[test]
    fn unix_services_parse_beside_ip_ones() {
        let c = parse(
            "services:\n  - name: app\n    unix: /run/app.sock\n    owner: {process: nginx}\n\
             \x20 - name: bus\n    unix: \"@bus\"\n    type: seqpacket\n\
             \x20 - name: web\n    port: 443\n",
        )
        .unwrap();
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.unix_services.len(), 2);
        let app = &c.unix_services[0];
        assert_eq!(app.address, UnixName::Path(b"/run/app.sock".to_vec()));
        assert_eq!(app.kind, UnixType::Stream);
        assert_eq!(app.owner.process.as_deref(), Some("nginx"));
        let bus = &c.unix_services[1];
        assert_eq!(bus.address, UnixName::Abstract(b"bus".to_vec()));
        assert_eq!(bus.kind, UnixType::Seqpacket);
    }

    #[test]
    fn bad_unix_services_name_key_and_line() {
        let long = format!("/{}", "a".repeat(108));
        let cases = [
            ("    unix: \"\"\n", 3, "services[0].unix", "needs a path"),
            ("    unix: \"@\"\n", 3, "services[0].unix", "needs a name"),
            (
                "    unix: run/app.sock\n",
                3,
                "services[0].unix",
                "absolute",
            ),
            ("    unix: \"/run/a\\0b\"\n", 3, "services[0].unix", "NUL"),
            (
                &format!("    unix: {long}\n"),
                3,
                "services[0].unix",
                "at most 108 bytes",
            ),
            (
                "    unix: /a.sock\n    port: 80\n",
                4,
                "services[0].port",
                "no port",
            ),
            (
                "    unix: /a.sock\n    reuseaddr: true\n",
                4,
                "services[0].reuseaddr",
                "changes nothing",
            ),
            (
                "    unix: /a.sock\n    type: raw\n",
                4,
                "services[0].type",
                "not stream",
            ),
            ("    unix: [1]\n", 3, "services[0].unix", "single value"),
        ];
        for (body, line, key, says) in cases {
            let text = format!("services:\n  - name: a\n{body}");
            let p = parse(&text).unwrap_err();
            assert!(
                p.iter()
                    .any(|p| p.line == line && p.key == key && p.message.contains(says)),
                "{text:?}: {p:#?}"
            );
        }
        // A unix service and an IP one may not share a name.
        let p =
            parse("services:\n  - name: a\n    port: 80\n  - name: a\n    unix: /a\n").unwrap_err();
        assert!(p[0].message.contains("duplicate service name"), "{p:?}");
    }
}
