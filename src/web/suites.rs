//! TLS cipher suites and key-exchange groups by their Go names (exporter-toolkit's web
//! config names them as Go's crypto/tls does). Shared by the web config's validation and
//! the TLS builder, so neither imports the other.

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::SupportedCipherSuite;

/// Go's `tls.CipherSuites()` names with their IANA numbers.
pub(super) const GO_SUITES: [(&str, u16); 13] = [
    ("TLS_AES_128_GCM_SHA256", 0x1301),
    ("TLS_AES_256_GCM_SHA384", 0x1302),
    ("TLS_CHACHA20_POLY1305_SHA256", 0x1303),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 0xc009),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", 0xc00a),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xc013),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 0xc014),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xc02b),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xc02c),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xc02f),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xc030),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca8),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca9),
];

pub(super) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS 1.2 cipher suite called `name` in Go. `Ok(None)` for a TLS 1.3 suite: those
/// are always enabled (Go ignores them in `cipher_suites` too).
///
/// # Errors
/// An unknown name, or one rustls does not implement (the CBC suites).
pub fn cipher_suite_by_name(name: &str) -> Result<Option<SupportedCipherSuite>, String> {
    let p = provider();
    let tls12: Vec<&str> = GO_SUITES
        .iter()
        .filter(|(_, id)| {
            p.cipher_suites
                .iter()
                .any(|s| u16::from(s.suite()) == *id && s.tls13().is_none())
        })
        .map(|(n, _)| *n)
        .collect();
    let Some(&(_, id)) = GO_SUITES.iter().find(|(n, _)| *n == name) else {
        return Err(format!(
            "unknown cipher suite {name:?} (supported: {})",
            tls12.join(", ")
        ));
    };
    match p.cipher_suites.iter().find(|s| u16::from(s.suite()) == id) {
        Some(s) if s.tls13().is_some() => Ok(None),
        Some(s) => Ok(Some(*s)),
        None => Err(format!(
            "{name} is not supported by rustls, bindwatch's TLS library (supported: {})",
            tls12.join(", ")
        )),
    }
}

/// The key exchange group called `name` in Go's `curve_preferences`.
///
/// # Errors
/// An unknown name, or one the `ring` provider lacks.
pub fn kx_group_by_name(name: &str) -> Result<&'static dyn SupportedKxGroup, String> {
    use rustls::crypto::ring::kx_group;
    match name {
        "X25519" => Ok(kx_group::X25519),
        "CurveP256" => Ok(kx_group::SECP256R1),
        "CurveP384" => Ok(kx_group::SECP384R1),
        "CurveP521" | "X25519MLKEM768" => Err(format!(
            "{name} is not supported by rustls, bindwatch's TLS library (supported: X25519, CurveP256, CurveP384)"
        )),
        _ => Err(format!(
            "unknown curve {name:?} (supported: X25519, CurveP256, CurveP384)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_map_to_rustls_suites() {
        let s = cipher_suite_by_name("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256")
            .unwrap()
            .unwrap();
        assert_eq!(u16::from(s.suite()), 0xcca9);
        assert!(cipher_suite_by_name("TLS_AES_256_GCM_SHA384")
            .unwrap()
            .is_none());
        let e = cipher_suite_by_name("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA").unwrap_err();
        assert!(e.contains("not supported by rustls"), "{e}");
        assert!(
            e.contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "lists the supported: {e}"
        );
        let e = cipher_suite_by_name("TLS_RSA_WITH_RC4_128_SHA").unwrap_err();
        assert!(e.starts_with("unknown cipher suite"), "{e}");
        // Every Go name is either supported or refused with the rustls message.
        for (n, _) in GO_SUITES {
            match cipher_suite_by_name(n) {
                Ok(_) => {}
                Err(e) => assert!(e.contains("not supported by rustls"), "{n}: {e}"),
            }
        }
    }

    #[test]
    fn curves() {
        assert!(kx_group_by_name("X25519").is_ok());
        assert!(kx_group_by_name("CurveP384").is_ok());
        assert!(kx_group_by_name("CurveP521")
            .unwrap_err()
            .contains("not supported by rustls"));
        assert!(kx_group_by_name("P256")
            .unwrap_err()
            .starts_with("unknown curve"));
    }
}
