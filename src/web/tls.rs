//! TLS for the HTTP server: rustls with the `ring` provider, configured from
//! [`TlsSettings`]. Names (cipher suites, curves, client auth types) are Go's, as
//! exporter-toolkit writes them; the ones rustls does not implement are refused with
//! a message that says so.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};

use super::config::{ClientAuth, Pem, PemSource, TlsSettings, TlsVersion};
use super::suites::provider;
use crate::yaml::Problem;

fn problem(pem: &Pem, message: impl Into<String>) -> Problem {
    Problem {
        line: pem.line,
        key: format!("tls_server_config.{}", pem.key),
        message: message.into(),
    }
}

fn read_pem(pem: &Pem) -> Result<Vec<u8>, Problem> {
    match &pem.source {
        PemSource::Inline(text) => Ok(text.as_bytes().to_vec()),
        PemSource::File(path) => crate::fsread::read(
            path,
            crate::fsread::Symlinks::Follow,
            crate::fsread::PEM_MAX,
        )
        .map_err(|e| {
            problem(
                pem,
                format!("cannot read {}: {}", path.display(), e.reason()),
            )
        }),
    }
}

fn where_(pem: &Pem) -> String {
    match &pem.source {
        PemSource::File(p) => p.display().to_string(),
        PemSource::Inline(_) => "the inline PEM".to_string(),
    }
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, Problem> {
    let bytes = read_pem(pem)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(pem, format!("{}: bad PEM: {e}", where_(pem))))?;
    if certs.is_empty() {
        return Err(problem(
            pem,
            format!("{}: no CERTIFICATE block found", where_(pem)),
        ));
    }
    Ok(certs)
}

/// Builds the rustls server configuration, reading certificate, key and client CA.
///
/// # Errors
/// Every file that cannot be read or used, on the line of the key that named it.
pub fn build(s: &TlsSettings) -> Result<Arc<ServerConfig>, Vec<Problem>> {
    let mut problems = Vec::new();
    let chain = certificates(&s.cert).map_err(|p| problems.push(p)).ok();
    let key = private_key(&s.key).map_err(|p| problems.push(p)).ok();
    let p = Arc::new(crypto_provider(s));
    let verifier = client_verifier(s, &p).map_err(|p| problems.push(p)).ok();
    let (Some(chain), Some(key), Some(verifier)) = (chain, key, verifier) else {
        return Err(problems);
    };
    let builder = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&versions(s))
        .map_err(|e| {
            vec![problem(
                &s.cert,
                format!("TLS settings do not fit together: {e}"),
            )]
        })?;
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            let msg = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{} does not belong to the certificate in {}",
                    where_(&s.key),
                    where_(&s.cert)
                ),
                other => format!("{}: unusable certificate or key: {other}", where_(&s.key)),
            };
            vec![problem(&s.key, msg)]
        })?;
    cfg.ignore_client_order = s.prefer_server_cipher_suites;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn private_key(pem: &Pem) -> Result<PrivateKeyDer<'static>, Problem> {
    let bytes = read_pem(pem)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        problem(
            pem,
            format!(
                "{}: no usable private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block): {e}",
                where_(pem)
            ),
        )
    })
}

/// The `ring` provider with the configured TLS 1.2 suites (TLS 1.3 suites always on,
/// as in Go) and curves; rustls's defaults where none are configured.
fn crypto_provider(s: &TlsSettings) -> rustls::crypto::CryptoProvider {
    let mut p = provider();
    if !s.cipher_suites.is_empty() {
        let mut suites: Vec<SupportedCipherSuite> = p
            .cipher_suites
            .iter()
            .filter(|c| c.tls13().is_some())
            .copied()
            .collect();
        suites.extend(s.cipher_suites.iter().copied());
        p.cipher_suites = suites;
    }
    if !s.curves.is_empty() {
        p.kx_groups = s.curves.clone();
    }
    p
}

/// `min_version..=max_version`.
fn versions(s: &TlsSettings) -> Vec<&'static SupportedProtocolVersion> {
    [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (s.min_version..=s.max_version).contains(v))
    .map(|(_, v)| v)
    .collect()
}

/// What `client_auth_type` asks of clients; the verifying modes read `client_ca`.
fn client_verifier(
    s: &TlsSettings,
    p: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Problem> {
    let verify_if_given = match s.client_auth {
        ClientAuth::NoClientCert => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            return Ok(Arc::new(AnyClientCert {
                mandatory: s.client_auth == ClientAuth::RequireAnyClientCert,
                algs: p.signature_verification_algorithms,
            }))
        }
        ClientAuth::VerifyClientCertIfGiven => true,
        ClientAuth::RequireAndVerifyClientCert => false,
    };
    // The parser refuses verifying modes without a CA; this is not reached without one.
    let Some(ca) = s.client_ca.as_ref() else {
        return Err(problem(
            &s.cert,
            format!("{:?} needs client_ca_file (or client_ca)", s.client_auth),
        ));
    };
    let mut roots = RootCertStore::empty();
    let mut bad = None;
    for c in certificates(ca)? {
        if let Err(e) = roots.add(c) {
            bad = Some(e);
        }
    }
    if let Some(e) = bad {
        return Err(problem(
            ca,
            format!("{}: unusable CA certificate: {e}", where_(ca)),
        ));
    }
    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p.clone());
    let b = if verify_if_given {
        b.allow_unauthenticated()
    } else {
        b
    };
    b.build()
        .map_err(|e| problem(ca, format!("{}: {e}", where_(ca))))
}

/// `RequestClientCert` / `RequireAnyClientCert`: a certificate is asked for (and, when
/// `mandatory`, required) but not checked against any CA; only the handshake signature
/// proving possession of its key is verified. Go's semantics; insecure for
/// authentication, as exporter-toolkit's docs warn.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_reported_on_their_lines() {
        let pem = |key: &'static str, line: usize| Pem {
            source: PemSource::File(format!("/nonexistent/{key}").into()),
            line,
            key,
        };
        let s = TlsSettings {
            cert: pem("cert_file", 2),
            key: pem("key_file", 3),
            client_auth: ClientAuth::RequireAndVerifyClientCert,
            client_ca: Some(pem("client_ca_file", 5)),
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
            prefer_server_cipher_suites: true,
        };
        let p = build(&s).unwrap_err();
        let got: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (2, "tls_server_config.cert_file"),
                (3, "tls_server_config.key_file"),
                (5, "tls_server_config.client_ca_file")
            ]
        );
        assert!(
            p[0].message.contains("cannot read /nonexistent/cert_file"),
            "{p:#?}"
        );
    }

    #[test]
    fn inline_garbage_is_a_problem_not_a_panic() {
        let inline = |key: &'static str, text: &str| Pem {
            source: PemSource::Inline(text.to_string()),
            line: 1,
            key,
        };
        let s = TlsSettings {
            cert: inline(
                "cert",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            key: inline("key", "nothing here"),
            client_auth: ClientAuth::NoClientCert,
            client_ca: None,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
            curves: Vec::new(),
            prefer_server_cipher_suites: true,
        };
        let p = build(&s).unwrap_err();
        assert_eq!(p.len(), 2, "{p:#?}");
    }
}
