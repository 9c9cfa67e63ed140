//! TLS for [`PgStore`](crate::PgStore) connections, with rustls, the way
//! libpq's `sslmode` says:
//!
//! * `disable`: plain TCP.
//! * `prefer` (the default) and `require`: TLS when the server offers it
//!   (`require`: or fail). Like libpq, these encrypt without checking who
//!   the server is (the server's signature over the handshake is checked,
//!   its certificate is not).
//! * `verify-ca`: TLS, and the server's certificate must chain to a
//!   trusted root (whatever host it names).
//! * `verify-full`: as `verify-ca`, and the certificate must also name the
//!   host connected to.
//!
//! The roots are the system's, or the certificates in the PEM file
//! `sslrootcert` names. Under either verify mode the connection is TLS or
//! nothing: a server (or someone in between) answering that it has no TLS
//! is refused, not talked to in plain text.
//!
//! tokio-postgres parses neither verify mode nor `sslrootcert`, so they
//! are taken out of the connection string here first.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing (`prefer`, `require`, `disable`).
    #[default]
    No,
    /// That it chains to a trusted root (`verify-ca`).
    Chain,
    /// That, and that it names the host (`verify-full`).
    Full,
}

/// The TLS settings orch reads itself from a connection string.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Settings {
    /// `sslmode=verify-ca` or `verify-full`.
    pub(crate) verify: Verify,
    /// `sslrootcert`: the roots to trust instead of the system's.
    pub(crate) root_cert: Option<PathBuf>,
}

/// Takes `sslmode=verify-ca`/`verify-full` and `sslrootcert=...` out of
/// `url` (a `postgres://` URL's query, or a key-value string's unquoted
/// `key=value` words); returns the rest, for tokio-postgres, and them.
///
/// # Errors
/// A quoted value of either, or `sslrootcert` without a verify mode (libpq
/// would verify the chain under `require` then; say which you mean).
pub(crate) fn split(url: &str) -> Result<(Cow<'_, str>, Settings), String> {
    let mut s = Settings::default();
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match (key, value) {
            ("sslmode", "verify-full") => s.verify = Verify::Full,
            ("sslmode", "verify-ca") => s.verify = Verify::Chain,
            ("sslrootcert", v) if v != "system" => s.root_cert = Some(PathBuf::from(v)),
            ("sslrootcert", _) => {}
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest: Cow<'_, str> = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => Cow::Borrowed(url),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    Cow::Owned(base.to_owned())
                } else {
                    Cow::Owned(format!("{base}?{}", kept.join("&")))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            if matches!(k, "sslmode" | "sslrootcert") && v.starts_with('\'') {
                return Err(format!(
                    "write {k}=VALUE as one word without quotes or spaces, or use a postgres:// URL"
                ));
            }
            if !take(k, v)? {
                kept.push(word);
            }
        }
        Cow::Owned(kept.join(" "))
    };
    if s.root_cert.is_some() && s.verify == Verify::No {
        return Err(
            "sslrootcert is only used with sslmode=verify-ca or verify-full here \
                    (add one, or drop sslrootcert)"
                .into(),
        );
    }
    Ok((rest, s))
}

/// `%XX` escapes of a URL query value (paths in `sslrootcert`).
fn percent_decode(v: &str) -> Cow<'_, str> {
    if !v.contains('%') {
        return Cow::Borrowed(v);
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The rustls connector for `settings`.
///
/// # Errors
/// A root certificate file that cannot be read or holds no certificate;
/// no system roots to verify against.
pub(crate) fn connector(settings: &Settings) -> Result<MakeRustlsConnect, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let config = match settings.verify {
        Verify::Full => builder
            .with_root_certificates(roots(settings)?)
            .with_no_client_auth(),
        Verify::Chain | Verify::No => {
            let roots = match settings.verify {
                Verify::Chain => Some(Arc::new(roots(settings)?)),
                _ => None,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier { provider, roots }))
                .with_no_client_auth()
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The roots a verify mode trusts: `sslrootcert`'s, or the system's.
fn roots(settings: &Settings) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &settings.root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no usable certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "sslmode=verify-ca/verify-full: no trusted root certificates \
                            found on this system; name a file with sslrootcert"
                        .into(),
                );
            }
        }
    }
    Ok(roots)
}

/// Checks the server's certificate for `prefer`/`require` (any
/// certificate) and `verify-ca` (one that chains to `roots`, whatever it
/// names); either way the handshake must be signed by its key.
/// (`verify-full` uses rustls' own verifier.)
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    roots: Option<Arc<RootCertStore>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &ParsedCertificate::try_from(end_entity)?,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orch_takes_its_own_settings_out_of_either_form() {
        let (rest, s) = split(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(
            s,
            Settings {
                verify: Verify::Full,
                root_cert: Some("/tmp/ca.pem".into())
            }
        );
        let (rest, s) = split("host=h user=u sslmode=verify-full sslrootcert=system").unwrap();
        assert_eq!(rest, "host=h user=u");
        assert_eq!(
            s,
            Settings {
                verify: Verify::Full,
                root_cert: None
            }
        );
        let (rest, s) = split("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u@h/db?sslmode=require");
        assert_eq!(s, Settings::default());
        let (rest, _) = split("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        let (rest, s) = split("postgres://u@h/db?sslrootcert=ca.pem&sslmode=verify-ca").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(
            s,
            Settings {
                verify: Verify::Chain,
                root_cert: Some("ca.pem".into())
            }
        );
        let e = split("host=h sslrootcert='/my certs/ca.pem' sslmode=verify-full").unwrap_err();
        assert!(e.contains("without quotes"), "{e}");
        // Spaces around `=` are tokio-postgres' to read, as before.
        let (rest, s) = split("host=h sslmode = require").unwrap();
        assert_eq!(
            (rest.as_ref(), s),
            ("host=h sslmode = require", Settings::default())
        );
        let e = split("postgres://u@h/db?sslrootcert=/ca.pem").unwrap_err();
        assert!(
            e.contains("only used with sslmode=verify-ca or verify-full"),
            "{e}"
        );
    }
}
