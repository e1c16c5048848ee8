//! libpq-style Postgres URLs: `sslmode` and `sslrootcert` are split off here (tokio-postgres
//! knows only `sslmode=disable|prefer|require` and rejects `sslrootcert`) and applied by
//! [`super::connect`]; [`check_pg_url`] is the start-up check of every Postgres URL setting.
//! Pure parsing: no I/O except reading the `sslrootcert` file to check it.

use std::path::PathBuf;
use std::str::FromStr;

use crate::config::{ConfigError, read_pem_certs};

/// Checks a Postgres URL at start-up: the scheme, libpq's `sslmode`/`sslrootcert` (the root
/// file must hold a PEM certificate) and every option tokio-postgres would reject. The
/// message names `var` and the option, never the URL.
pub fn check_pg_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new(
            var,
            "must be a postgres:// or postgresql:// URL",
        ));
    }
    let parsed = PgTlsUrl::parse(url).map_err(|e| ConfigError::new(var, e))?;
    if let Some(PgRootCert::File(path)) = &parsed.root_cert {
        read_pem_certs(path).map_err(|e| ConfigError::new(var, format!("sslrootcert: {e}")))?;
    }
    // Everything else in the URL is tokio-postgres's to parse: an unknown option or a bad
    // port is reported now. Its messages name the option, never the value.
    tokio_postgres::Config::from_str(&parsed.rest).map_err(|e| {
        // tokio-postgres's Display is only the kind ("invalid connection string"); the
        // cause says which option.
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        ConfigError::new(var, format!("{e}: {}", cause.unwrap_or_default()))
    })?;
    Ok(())
}

/// libpq's `sslmode` values, with libpq's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP only.
    Disable,
    /// libpq tries plain first, then TLS; here the same as [`PgSslMode::Prefer`] (TLS when the
    /// server offers it), which connects wherever `allow` would.
    Allow,
    /// TLS when the server offers it, else plain (default); the certificate is not checked
    /// unless an `sslrootcert` file is given (then its chain is, as in libpq).
    Prefer,
    /// TLS or no connection; the certificate is not checked (an `sslrootcert` file makes it
    /// `verify-ca`, as in libpq).
    Require,
    /// TLS with the certificate chain verified against the roots; the host name is not.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

/// Where the trusted roots of `verify-ca`/`verify-full` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgRootCert {
    /// `sslrootcert=<path>`: a PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system` (as in libpq 16), or no `sslrootcert`: the operating system's
    /// trust store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
    System,
}

/// A Postgres URL split into the TLS settings itsur applies itself and the rest, which
/// tokio-postgres parses (it knows only `sslmode=disable|prefer|require` and rejects
/// `sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTlsUrl {
    /// The effective mode: `require` with an `sslrootcert` file is `verify-ca`, as in libpq.
    pub mode: PgSslMode,
    /// Roots to verify the chain against: the given `sslrootcert` (any mode but `disable`),
    /// else the system store for `verify-ca`/`verify-full`; None = the chain is not checked.
    pub root_cert: Option<PgRootCert>,
    /// The URL without `sslmode` and `sslrootcert` (may hold a password: never log it).
    pub rest: String,
}

impl PgTlsUrl {
    /// Splits `url`; the error is one line naming the bad parameter, never the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => {
                    mode = Some(match percent_decode(value)?.as_str() {
                        "disable" => PgSslMode::Disable,
                        "allow" => PgSslMode::Allow,
                        "prefer" => PgSslMode::Prefer,
                        "require" => PgSslMode::Require,
                        "verify-ca" => PgSslMode::VerifyCa,
                        "verify-full" => PgSslMode::VerifyFull,
                        _ => {
                            return Err("sslmode must be one of disable, allow, prefer, require, \
                                        verify-ca, verify-full"
                                .to_owned());
                        }
                    });
                }
                "sslrootcert" => {
                    let value = percent_decode(value)?;
                    root_cert = Some(match value.as_str() {
                        "" => return Err("sslrootcert is empty".to_owned()),
                        "system" => PgRootCert::System,
                        _ => PgRootCert::File(PathBuf::from(value)),
                    });
                }
                _ => kept.push(pair),
            }
        }
        // libpq: a root file upgrades `require` to `verify-ca`; `sslrootcert=system` defaults
        // to, and only allows, `verify-full` (anything weaker would trust any public CA's
        // certificate for any name).
        let mode = match (mode, &root_cert) {
            (Some(PgSslMode::Require), Some(PgRootCert::File(_))) => PgSslMode::VerifyCa,
            (None, Some(PgRootCert::System)) => PgSslMode::VerifyFull,
            (Some(m), Some(PgRootCert::System)) if m != PgSslMode::VerifyFull => {
                return Err("sslrootcert=system requires sslmode=verify-full".to_owned());
            }
            (m, _) => m.unwrap_or(PgSslMode::Prefer),
        };
        let root_cert = match mode {
            PgSslMode::Disable => None,
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => {
                Some(root_cert.unwrap_or(PgRootCert::System))
            }
            // libpq loads a given root file in every TLS mode and then verifies the chain.
            PgSslMode::Allow | PgSslMode::Prefer | PgSslMode::Require => root_cert,
        };
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok(Self {
            mode,
            root_cert,
            rest,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "a URL query parameter is not valid UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_url_tls_params_follow_libpq() {
        let p = PgTlsUrl::parse("postgres://u:pw@h/db").unwrap();
        assert_eq!(
            (p.mode, p.root_cert, p.rest.as_str()),
            (PgSslMode::Prefer, None, "postgres://u:pw@h/db")
        );

        // Stripped for tokio-postgres; the other parameters are kept in order.
        let p = PgTlsUrl::parse(
            "postgres://h/db?application_name=x&sslmode=require&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(p.mode, PgSslMode::VerifyCa, "a root file upgrades require");
        assert_eq!(
            p.root_cert,
            Some(PgRootCert::File("/etc/ca dir/ca.pem".into()))
        );
        assert_eq!(
            p.rest,
            "postgres://h/db?application_name=x&connect_timeout=3"
        );

        let p = PgTlsUrl::parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(
            (p.mode, p.root_cert),
            (PgSslMode::VerifyFull, Some(PgRootCert::System))
        );
        assert_eq!(p.rest, "postgres://h/db");
        let p = PgTlsUrl::parse("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(
            p.mode,
            PgSslMode::VerifyFull,
            "libpq 16: system implies verify-full"
        );
        let p = PgTlsUrl::parse("postgres://h/db?sslmode=disable&sslrootcert=/x.pem").unwrap();
        assert_eq!((p.mode, p.root_cert), (PgSslMode::Disable, None));

        assert!(PgTlsUrl::parse("postgres://h/db?sslmode=require&sslrootcert=system").is_err());
        assert!(PgTlsUrl::parse("postgres://h/db?sslmode=verify").is_err());
    }

    #[test]
    fn bad_pg_tls_settings_are_one_line_start_up_errors() {
        let err = check_pg_url("DATABASE_URL", "postgres://u:hunter2@h/db?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("DATABASE_URL: sslmode must be one of"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");

        let err = check_pg_url(
            "DATABASE_READ_URL",
            "postgres://u:hunter2@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("DATABASE_READ_URL: sslrootcert: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(!err.contains("hunter2") && !err.contains('\n'), "{err}");

        // Not a certificate: refused too.
        let err = check_pg_url("DATABASE_URL", "postgres://h/db?sslrootcert=/dev/null")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");

        // Whatever tokio-postgres would reject is reported at start-up as well.
        let err = check_pg_url("DATABASE_URL", "postgres://u:hunter2@h/db?sslmod=require")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmod") && !err.contains("hunter2"), "{err}");

        check_pg_url("DATABASE_URL", "postgres://u:pw@h:5432/db?sslmode=require").unwrap();
    }
}
