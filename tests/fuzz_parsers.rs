//! Fuzzing the parsers of untrusted input with proptest (stable Rust has no cargo-fuzz):
//! netlink sock_diag dumps, /proc/net tables, the watched-services YAML, the web config
//! YAML and the basic-auth header. Each gets arbitrary bytes and structured mutations
//! of valid input; the property is always "no panic, a bad input is an error".
//!
//! Case counts are bounded so the whole file runs in seconds. A failing case is
//! recorded in `proptest-regressions/fuzz_parsers.txt` (committed) and replayed first on
//! every later run; hand-picked inputs live in `tests/fixtures/fuzz/` and are replayed
//! by [`corpus_replays_without_panics`].

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use bindwatch::model::{Protocol, Socket};
use bindwatch::source::{netlink, procnet};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_parsers.txt",
        ))),
        ..ProptestConfig::default()
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

// ---------------------------------------------------------------- netlink

/// Runs a receive buffer through the decoder; returns how many sockets it yielded.
fn decode(buf: &[u8], p: Protocol) -> Result<usize, netlink::NetlinkError> {
    let mut n = 0;
    netlink::decode_batch(buf, p, "fuzz", &mut |_s: &Socket| n += 1).map(|_| n)
}

/// One netlink message as the fuzzer builds it: header fields that may lie.
#[derive(Debug, Clone)]
struct Msg {
    /// `None`: the true length.
    len: Option<u32>,
    ty: u16,
    flags: u16,
    body: Vec<u8>,
}

fn attr() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![3 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop_oneof![Just(5u16), any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(len, ty, payload)| {
            let true_len = (4 + payload.len()) as u16;
            let mut a = Vec::new();
            a.extend_from_slice(&len.unwrap_or(true_len).to_ne_bytes());
            a.extend_from_slice(&ty.to_ne_bytes());
            a.extend_from_slice(&payload);
            while a.len() % 4 != 0 {
                a.push(0);
            }
            a
        })
}

/// An `inet_diag_msg`: plausible family and state, random rest, random attributes.
fn diag_body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(2u8), Just(10u8), any::<u8>()],
        prop_oneof![1u8..=12, any::<u8>()],
        prop::collection::vec(any::<u8>(), 70),
        prop::collection::vec(attr(), 0..4),
        0usize..80,
    )
        .prop_map(|(family, state, rest, attrs, cut)| {
            let mut b = vec![family, state];
            b.extend_from_slice(&rest);
            for a in attrs {
                b.extend_from_slice(&a);
            }
            // Sometimes cut short, inside the fixed part or an attribute.
            if cut < 8 {
                b.truncate(b.len().saturating_sub(cut * 9));
            }
            b
        })
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![4 => Just(None), 1 => any::<u32>().prop_map(Some), 1 => (0u32..40).prop_map(Some)],
        prop_oneof![Just(20u16), Just(2u16), Just(3u16), any::<u16>()],
        prop_oneof![Just(2u16), Just(0u16), Just(0x10u16), any::<u16>()],
        prop_oneof![4 => diag_body(), 1 => prop::collection::vec(any::<u8>(), 0..8)],
    )
        .prop_map(|(len, ty, flags, body)| Msg {
            len,
            ty,
            flags,
            body,
        })
}

fn encode(msgs: &[Msg]) -> Vec<u8> {
    let mut buf = Vec::new();
    for m in msgs {
        let len = m.len.unwrap_or((16 + m.body.len()) as u32);
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&m.ty.to_ne_bytes());
        buf.extend_from_slice(&m.flags.to_ne_bytes());
        buf.extend_from_slice(&[0u8; 8]); // seq, pid
        buf.extend_from_slice(&m.body);
        while buf.len() % 4 != 0 {
            buf.push(0);
        }
    }
    buf
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn netlink_batch_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..1024), p in protocol()) {
        let _ = decode(&buf, p);
    }

    #[test]
    fn netlink_batch_structured(msgs in prop::collection::vec(msg(), 0..6), p in protocol()) {
        let buf = encode(&msgs);
        if let Ok(n) = decode(&buf, p) {
            // Every socket came from a message of its own.
            prop_assert!(n <= msgs.len());
        }
    }

    #[test]
    fn netlink_diag_msg(body in prop_oneof![diag_body(), prop::collection::vec(any::<u8>(), 0..200)], p in protocol()) {
        match netlink::decode_diag_msg(&body, p) {
            Ok(Some(s)) => prop_assert_eq!(s.protocol, p),
            Ok(None) => {}
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }
}

// ---------------------------------------------------------------- /proc/net

const TCP_LINE: &str = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 55123 1 0000000000000000 100 0 0 10 0";
const TCP6_LINE: &str = "   0: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0";
const TW_LINE: &str = "   1: 0100007F:1F90 0100007F:D3A2 06 00000000:00000000 03:0000176F 00000000     0        0 0 3 0000000000000000";

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, String),
    Remove(usize),
    Truncate(usize),
    Insert(usize, String),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9A-Fa-f]{0,40}",
        "[0-9A-F]{1,8}:[0-9A-F]{1,8}",
        "[+-]?[0-9]{1,25}",
        "[:+-]{0,3}",
        any::<String>(),
        Just("é€😀".to_string()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..20, token()).prop_map(|(i, t)| Mutation::Replace(i, t)),
        (0usize..20).prop_map(Mutation::Remove),
        (0usize..200).prop_map(Mutation::Truncate),
        (0usize..200, token()).prop_map(|(i, t)| Mutation::Insert(i, t)),
    ]
}

fn mutate(line: &str, muts: &[Mutation]) -> String {
    let mut fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let mut text;
    for m in muts {
        match m {
            Mutation::Replace(i, t) if !fields.is_empty() => {
                let i = i % fields.len();
                fields[i] = t.clone();
            }
            Mutation::Remove(i) if !fields.is_empty() => {
                let i = i % fields.len();
                fields.remove(i);
            }
            _ => {}
        }
    }
    text = fields.join(" ");
    for m in muts {
        match m {
            Mutation::Truncate(at) => {
                let mut at = (*at).min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.truncate(at);
            }
            Mutation::Insert(at, t) => {
                let mut at = (*at).min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, t);
            }
            _ => {}
        }
    }
    text
}

fn table(text: &[u8], p: Protocol) -> (Result<(), procnet::ProcNetError>, usize, usize) {
    let (mut ok, mut bad) = (0, 0);
    let r = procnet::parse_table(
        text,
        Path::new("/proc/net/tcp"),
        p,
        &mut |_s: &Socket| ok += 1,
        &mut |e| {
            assert!(
                e.to_string().contains("/proc/net/tcp:"),
                "errors name file and line: {e}"
            );
            bad += 1;
        },
    );
    (r, ok, bad)
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn procnet_line_arbitrary(line in any::<String>(), p in protocol()) {
        let _ = procnet::parse_line(&line, p);
    }

    #[test]
    fn procnet_line_mutated(
        base in prop_oneof![Just(TCP_LINE), Just(TCP6_LINE), Just(TW_LINE)],
        muts in prop::collection::vec(mutation(), 0..4),
        p in protocol(),
    ) {
        let line = mutate(base, &muts);
        match procnet::parse_line(&line, p) {
            Ok(s) => prop_assert_eq!(s.protocol, p),
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn procnet_table_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), p in protocol()) {
        let _ = table(&bytes, p);
    }

    #[test]
    fn procnet_table_mutated_lines(
        lines in prop::collection::vec(
            (prop_oneof![Just(TCP_LINE), Just(TCP6_LINE), Just(TW_LINE)], prop::collection::vec(mutation(), 0..3)),
            0..12,
        ),
        p in protocol(),
    ) {
        let mut text = String::from("  sl  local_address rem_address   st ...\n");
        for (base, muts) in &lines {
            text.push_str(&mutate(base, muts));
            text.push('\n');
        }
        let (r, ok, bad) = table(text.as_bytes(), p);
        prop_assert!(r.is_ok(), "text input never fails as a whole");
        prop_assert!(ok + bad <= lines.len());
    }
}

// ---------------------------------------------------------------- YAML

/// A YAML document as a tree, rendered in block or flow style.
#[derive(Debug, Clone)]
enum Y {
    Scalar(String),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_./-]{0,12}",
        "-?[0-9]{1,7}",
        Just("true".to_string()),
        Just("false".to_string()),
        Just("~".to_string()),
        Just("\"\"".to_string()),
        "\"[^\"\\\\]{0,10}\"",
        "'[^']{0,10}'",
        "\\$2y\\$1[0-4]\\$[./A-Za-z0-9]{53}",
        Just("TLS12".to_string()),
        Just("TLS13".to_string()),
        Just("RequireAndVerifyClientCert".to_string()),
        Just("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".to_string()),
        Just("X25519".to_string()),
        Just("1s".to_string()),
        Just("&a x".to_string()),
        Just("*a".to_string()),
        Just("!!str 5".to_string()),
        Just("|\n  text".to_string()),
    ]
}

fn yaml(keys: &'static [&'static str]) -> impl Strategy<Value = Y> {
    let key = prop_oneof![
        8 => prop::sample::select(keys).prop_map(str::to_string),
        1 => "[a-zA-Z-]{1,8}",
    ];
    scalar()
        .prop_map(Y::Scalar)
        .prop_recursive(4, 40, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Y::Seq),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(Y::Map),
            ]
        })
}

fn block(y: &Y, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match y {
        Y::Scalar(s) => {
            out.push_str(&pad);
            out.push_str(s);
            out.push('\n');
        }
        Y::Seq(items) if items.is_empty() => out.push_str(&format!("{pad}[]\n")),
        Y::Map(items) if items.is_empty() => out.push_str(&format!("{pad}{{}}\n")),
        Y::Seq(items) => {
            for it in items {
                match it {
                    Y::Scalar(s) => out.push_str(&format!("{pad}- {s}\n")),
                    _ => {
                        out.push_str(&format!("{pad}-\n"));
                        block(it, indent + 2, out);
                    }
                }
            }
        }
        Y::Map(items) => {
            for (k, v) in items {
                match v {
                    Y::Scalar(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                    _ => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        block(v, indent + 2, out);
                    }
                }
            }
        }
    }
}

fn flow(y: &Y) -> String {
    match y {
        Y::Scalar(s) => s.replace('\n', " "),
        Y::Seq(items) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Y::Map(items) => format!(
            "{{{}}}",
            items
                .iter()
                .map(|(k, v)| format!("{k}: {}", flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A rendered document with a few byte-level edits on top.
fn document(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        yaml(keys),
        any::<bool>(),
        prop::collection::vec(
            (
                0usize..400,
                prop_oneof![
                    Just(""),
                    Just(":"),
                    Just("\n"),
                    Just("- "),
                    Just("  "),
                    Just("\t"),
                    Just("["),
                    Just("#"),
                    Just("\u{feff}")
                ],
            ),
            0..3,
        ),
    )
        .prop_map(|(y, use_flow, edits)| {
            let mut s = String::new();
            if use_flow {
                s = flow(&y);
                s.push('\n');
            } else {
                block(&y, 0, &mut s);
            }
            for (at, ins) in edits {
                let mut at = at.min(s.len());
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, ins);
            }
            s
        })
}

const SERVICE_KEYS: &[&str] = &[
    "services",
    "name",
    "protocol",
    "port",
    "addresses",
    "owner",
    "process",
    "unit",
    "user",
    "reuseaddr",
    "reuseport",
];

const WEB_KEYS: &[&str] = &[
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "rate_limit",
    "auth_excluded_paths",
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
    "client_allowed_sans",
    "http2",
    "headers",
    "X-Frame-Options",
    "Strict-Transport-Security",
    "Authorization",
    "interval",
    "burst",
    "alice",
];

fn check_services(text: &str) {
    if let Err(problems) = bindwatch::config::parse(text) {
        assert!(!problems.is_empty(), "an error has at least one problem");
    }
}

fn check_web(text: &str) -> Result<(), TestCaseError> {
    match bindwatch::web::config::parse(text, Path::new("/etc/bindwatch")) {
        Ok(cfg) => {
            if let Some(t) = &cfg.tls {
                prop_assert!(t.min_version <= t.max_version);
            }
            for (user, hash) in &cfg.users {
                prop_assert!(!user.contains(':'));
                prop_assert!(bindwatch::web::config::check_bcrypt_hash(hash).is_ok());
            }
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            for p in &problems {
                prop_assert!(p.line >= 1, "lines are 1-based: {:?}", p);
                prop_assert!(!p.message.is_empty());
            }
            let mut sorted = problems.clone();
            sorted.sort_by_key(|p| p.line);
            prop_assert_eq!(sorted, problems, "problems in line order");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn services_config_arbitrary(text in any::<String>()) {
        check_services(&text);
    }

    #[test]
    fn services_config_structured(text in document(SERVICE_KEYS)) {
        check_services(&text);
    }

    #[test]
    fn web_config_arbitrary(text in any::<String>()) {
        check_web(&text)?;
    }

    #[test]
    fn web_config_structured(text in document(WEB_KEYS)) {
        check_web(&text)?;
    }

    #[test]
    fn basic_auth_header(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        "(Basic|basic|BASIC) [A-Za-z0-9+/=]{0,40}".prop_map(String::into_bytes),
    ]) {
        if let Some((user, _)) = bindwatch::web::auth::parse_basic(&bytes) {
            prop_assert!(!user.contains(':'));
        }
    }
}

// ---------------------------------------------------------------- corpus

/// Every file under `tests/fixtures/fuzz/<target>/` goes through its parser. For the
/// YAML targets a name ending in `.ok.yml` must parse and `.err.yml` must be refused.
#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut seen = 0;
    for target in ["netlink", "procnet", "config", "webconfig"] {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name == "README" {
                continue;
            }
            let bytes = std::fs::read(&f).expect("read corpus file");
            let text = String::from_utf8_lossy(&bytes);
            seen += 1;
            match target {
                "netlink" => {
                    for p in Protocol::ALL {
                        let _ = decode(&bytes, p);
                        let _ = netlink::decode_diag_msg(&bytes, p);
                        if bytes.len() > 16 {
                            let _ = netlink::decode_diag_msg(&bytes[16..], p);
                        }
                    }
                }
                "procnet" => {
                    for p in Protocol::ALL {
                        let _ = table(&bytes, p);
                        for line in text.lines() {
                            let _ = procnet::parse_line(line, p);
                        }
                    }
                }
                "config" => {
                    let r = bindwatch::config::parse(&text);
                    if name.ends_with(".ok.yml") {
                        assert!(r.is_ok(), "{name}: {r:?}");
                    } else if name.ends_with(".err.yml") {
                        assert!(r.is_err(), "{name}: {r:?}");
                    }
                }
                _ => {
                    check_web(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                    let r = bindwatch::web::config::parse(&text, Path::new("/etc/bindwatch"));
                    if name.ends_with(".ok.yml") {
                        assert!(r.is_ok(), "{name}: {r:?}");
                    } else if name.ends_with(".err.yml") {
                        assert!(r.is_err(), "{name}: {r:?}");
                    }
                }
            }
        }
    }
    assert!(seen >= 20, "the corpus is there: {seen} files");
}
