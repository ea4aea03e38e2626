//! The unix-socket parsers of untrusted input under proptest: unix_diag messages and
//! dump buffers, the tracer's unix records, `unix:` addresses (flags and config).
//! The property is always "no panic; a bad input is an error". No root needed.

use proptest::prelude::*;

use bindwatch::config;
use bindwatch::events::unix as events_unix;
use bindwatch::source::unix;
use bindwatch::unixbind;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unix_diag_messages_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = unix::decode_unix_msg(&b);
        let _ = unix::decode_unix_batch(&b, &mut |_| {});
    }

    /// A valid message header with arbitrary attributes: decoded or refused.
    #[test]
    fn unix_diag_attributes_never_panic(
        kind in prop_oneof![Just(1u8), Just(2), Just(5), any::<u8>()],
        state in any::<u8>(),
        attrs in prop::collection::vec((any::<u16>(), 0u16..8, prop::collection::vec(any::<u8>(), 0..120)), 0..6),
    ) {
        let mut m = vec![libc::AF_UNIX as u8, kind, state, 0];
        m.extend_from_slice(&[0u8; 12]);
        for (len, ty, payload) in attrs {
            let len = if len % 2 == 0 { (4 + payload.len()) as u16 } else { len };
            m.extend_from_slice(&len.to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(&payload);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        }
        if let Ok(Some(s)) = unix::decode_unix_msg(&m) {
            // A decoded name fits sun_path.
            prop_assert!(s.name.map_or(0, |n| n.to_string().len()) <= 2 * 108 + 1);
        }
    }

    #[test]
    fn tracer_unix_records_never_panic(
        mut b in prop::collection::vec(any::<u8>(), events_unix::UNIX_EVENT_SIZE..=events_unix::UNIX_EVENT_SIZE),
        len in any::<u32>(),
    ) {
        b[30] = 1;
        b[31] = 1;
        b[16..20].copy_from_slice(&(-libc::EADDRINUSE).to_ne_bytes());
        b[72..76].copy_from_slice(&len.to_ne_bytes());
        if events_unix::decode(&b).is_ok() {
            prop_assert!((1..=108).contains(&len));
        }
        let _ = events_unix::decode(&b[..b.len() - 1]);
    }

    #[test]
    fn unix_addresses_parse_or_say_why(s in "\\PC{0,130}") {
        let text = format!("unix:{s}");
        match unixbind::parse_target(&text) {
            Some(Ok(unixbind::UnixTarget::Path(p))) => {
                prop_assert!(p.as_os_str().len() <= 108 && s.starts_with('/'));
            }
            Some(Ok(unixbind::UnixTarget::Abstract(n))) => {
                prop_assert!(!n.is_empty() && n.len() <= 107);
            }
            Some(Err(e)) => prop_assert!(!e.is_empty()),
            None => prop_assert!(false, "a unix: address"),
        }
        let yaml = format!("services:\n  - name: a\n    unix: {:?}\n", s);
        let _ = config::parse(&yaml);
    }
}
