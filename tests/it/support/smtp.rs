//! A real SMTP server for tests (RFC 5321's happy path: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT) on 127.0.0.1:0, keeping every message it accepts. It can refuse recipients
//! with a permanent 550, to test how the e-mail node fails, and it can speak TLS with the
//! throw-away certificate of [`Pki`] (`DNS:localhost`): STARTTLS (RFC 3207) or implicit TLS
//! (RFC 8314), through rustls with ring like the rest of the project.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::tls::Pki;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// MAIL FROM.
    pub from: String,
    /// RCPT TO, in order.
    pub to: Vec<String>,
    /// The DATA, dot-unstuffed, without the final dot line.
    pub data: String,
    /// True when the message came over TLS (implicit, or after STARTTLS).
    pub tls: bool,
}

impl Mail {
    /// The value of header `name` (case-insensitive, folded lines joined), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self
            .data
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .replace("\r\n ", " ")
            .replace("\r\n\t", " ");
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// How the server offers TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP; EHLO advertises STARTTLS and the client upgrades.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

#[derive(Default)]
struct Shared {
    mails: Mutex<Vec<Mail>>,
    refuse: AtomicBool,
}

/// The running server.
pub struct SmtpServer {
    /// `smtp://127.0.0.1:<port>`; with TLS `smtp://localhost:<port>?tls=required` or
    /// `smtps://localhost:<port>` (the certificate names localhost only).
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    /// Starts listening, plain SMTP only (no STARTTLS offered).
    pub async fn start() -> Self {
        Self::spawn(None).await
    }

    /// Starts listening with TLS in `mode`, presenting `pki`'s server certificate.
    pub async fn start_tls(pki: &Pki, mode: TlsMode) -> Self {
        Self::spawn(Some((mode, acceptor(pki)))).await
    }

    async fn spawn(tls: Option<(TlsMode, TlsAcceptor)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            None => format!("smtp://127.0.0.1:{port}"),
            Some((TlsMode::StartTls, _)) => format!("smtp://localhost:{port}?tls=required"),
            Some((TlsMode::Implicit, _)) => format!("smtps://localhost:{port}"),
        };
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (s, tls) = (s.clone(), tls.clone());
                tokio::spawn(async move {
                    // A client that hangs up or fails the handshake ends only its session.
                    let _ = connection(sock, &s, tls).await;
                });
            }
        });
        Self { url, shared, task }
    }

    /// Messages accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.shared.mails.lock().unwrap().clone()
    }

    /// From now on answer every RCPT with 550.
    pub fn refuse_recipients(&self) {
        self.shared.refuse.store(true, Ordering::SeqCst);
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A rustls server config (ring) with `pki`'s server certificate and key.
fn acceptor(pki: &Pki) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(pki.cert())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.key()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// How a session ended.
enum End {
    Closed,
    StartTls,
}

async fn connection(
    sock: TcpStream,
    shared: &Shared,
    tls: Option<(TlsMode, TlsAcceptor)>,
) -> std::io::Result<()> {
    const GREETING: &[u8] = b"220 localhost test SMTP\r\n";
    match tls {
        None => {
            let mut io = BufReader::new(sock);
            io.write_all(GREETING).await?;
            session(&mut io, shared, false, false).await?;
        }
        Some((TlsMode::Implicit, acceptor)) => {
            let mut io = BufReader::new(acceptor.accept(sock).await?);
            io.write_all(GREETING).await?;
            session(&mut io, shared, false, true).await?;
        }
        Some((TlsMode::StartTls, acceptor)) => {
            let mut io = BufReader::new(sock);
            io.write_all(GREETING).await?;
            if let End::StartTls = session(&mut io, shared, true, false).await? {
                // RFC 3207: the client waits for our 220 before the handshake, so nothing
                // it sent is left in the buffer; the session starts over (new EHLO).
                let mut io = BufReader::new(acceptor.accept(io.into_inner()).await?);
                session(&mut io, shared, false, true).await?;
            }
        }
    }
    Ok(())
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    shared: &Shared,
    offer_starttls: bool,
    tls: bool,
) -> std::io::Result<End> {
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(End::Closed);
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            let ext: &[u8] = if offer_starttls {
                b"250-localhost\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
            } else {
                b"250-localhost\r\n250 8BITMIME\r\n"
            };
            io.write_all(ext).await?;
        } else if upper == "STARTTLS" && offer_starttls {
            io.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
            io.flush().await?;
            return Ok(End::StartTls);
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            io.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().trim_matches(['<', '>']).to_owned();
            to.clear();
            io.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            if shared.refuse.load(Ordering::SeqCst) {
                io.write_all(b"550 5.1.1 mailbox unavailable\r\n").await?;
            } else {
                to.push(cmd[8..].trim().trim_matches(['<', '>']).to_owned());
                io.write_all(b"250 OK\r\n").await?;
            }
        } else if upper == "DATA" {
            io.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let Some(data) = read_data(io).await? else {
                return Ok(End::Closed);
            };
            shared.mails.lock().unwrap().push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
                tls,
            });
            io.write_all(b"250 OK queued\r\n").await?;
        } else if upper.starts_with("RSET") {
            to.clear();
            io.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("QUIT") {
            io.write_all(b"221 bye\r\n").await?;
            io.flush().await?;
            return Ok(End::Closed);
        } else {
            io.write_all(b"502 command not implemented\r\n").await?;
        }
        io.flush().await?;
    }
}

/// The DATA lines up to the final dot, dot-unstuffed; None when the client hung up.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> std::io::Result<Option<String>> {
    let mut data = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if io.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line == ".\r\n" || line == ".\n" {
            return Ok(Some(data));
        }
        data.push_str(line.strip_prefix('.').unwrap_or(&line));
    }
}
