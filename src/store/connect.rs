//! Opening a Postgres connection, with TLS as the URL's `sslmode` and `sslrootcert` ask
//! (libpq semantics, see [`PgTlsUrl`]). Every connection the process opens — pools, the
//! dedicated LISTEN connections, migrations — comes from here, so a URL means the same thing
//! everywhere.
//!
//! TLS is rustls with the ring provider (the only crypto provider compiled in: no OpenSSL,
//! no aws-lc, the binary stays static). The connection is built with
//! `try_from_client_and_connection`, which keeps the connection driver and with it
//! LISTEN/NOTIFY notifications.
//!
//! Depends on `config` only. Reads no env vars (the URL arrives from `config`).

use std::sync::Arc;

use diesel::{ConnectionError, ConnectionResult};
use diesel_async::AsyncPgConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::pg_url::{PgRootCert, PgSslMode, PgTlsUrl};
use crate::config::read_pem_certs;

/// Opens one connection to `url`. For many connections to the same URL build a
/// [`Connector`] once (it reads the roots once).
pub async fn establish(url: &str) -> ConnectionResult<AsyncPgConnection> {
    Connector::new(url)?.connect().await
}

/// A parsed URL plus its TLS client configuration; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl Connector {
    /// Parses `url` and loads the roots its `sslmode` needs. Errors never contain the URL.
    pub fn new(url: &str) -> ConnectionResult<Self> {
        let parsed = PgTlsUrl::parse(url).map_err(ConnectionError::InvalidConnectionUrl)?;
        let mut config: tokio_postgres::Config =
            parsed.rest.parse().map_err(|e: tokio_postgres::Error| {
                ConnectionError::InvalidConnectionUrl(error_chain(&e))
            })?;
        config.ssl_mode(match parsed.mode {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => SslMode::Require,
        });
        let tls = client_config(parsed.mode, parsed.root_cert.as_ref())
            .map_err(ConnectionError::BadConnection)?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Opens a connection (TLS handshake included when the mode asks for it).
    pub async fn connect(&self) -> ConnectionResult<AsyncPgConnection> {
        let (client, connection) = self
            .config
            .connect(self.tls.clone())
            .await
            .map_err(|e| ConnectionError::BadConnection(error_chain(&e)))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

/// tokio-postgres's `Display` is only the error kind ("db error"); the server's message and
/// the TLS failure are in the source chain. None of it contains the URL.
fn error_chain(e: &tokio_postgres::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The rustls configuration for `mode`. Without roots, modes below `verify-ca` accept any
/// certificate: they protect against eavesdropping, not impersonation, exactly as in libpq.
fn client_config(mode: PgSslMode, roots: Option<&PgRootCert>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match (mode, roots) {
        (PgSslMode::Disable, _)
        | (PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider })),
        (_, roots) => {
            let roots = root_store(roots.unwrap_or(&PgRootCert::System))?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if mode == PgSslMode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(IgnoreHostName { inner: webpki }))
            }
        }
    };
    Ok(config.with_no_client_auth())
}

fn root_store(source: &PgRootCert) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match source {
        PgRootCert::File(path) => {
            for cert in read_pem_certs(path).map_err(|e| format!("sslrootcert: {e}"))? {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
        }
        PgRootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(format!(
                    "no system root certificates ({why}); set sslrootcert=<CA file>"
                ));
            }
        }
    }
    Ok(roots)
}

/// `sslmode=prefer|require`: any certificate is accepted, but the handshake signatures are
/// still checked, so the session is encrypted to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
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
    ) -> Result<HandshakeSignatureValid, TlsError> {
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

/// `sslmode=verify-ca`: the full webpki check, minus the host name. rustls verifies the
/// chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
