//! A real SMTP server for tests (RFC 5321's happy path: EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT) on 127.0.0.1:0, keeping every message it accepts. It can refuse recipients
//! with a permanent 550, to test how the e-mail node fails.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// MAIL FROM.
    pub from: String,
    /// RCPT TO, in order.
    pub to: Vec<String>,
    /// The DATA, dot-unstuffed, without the final dot line.
    pub data: String,
}

/// The running server.
pub struct SmtpServer {
    /// `smtp://127.0.0.1:<port>`.
    pub url: String,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse: Arc<Mutex<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    /// Starts listening.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
        let refuse: Arc<Mutex<bool>> = Arc::default();
        let (m, r) = (mails.clone(), refuse.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (m, r) = (m.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = session(sock, m, r).await;
                });
            }
        });
        Self {
            url,
            mails,
            refuse,
            task,
        }
    }

    /// Messages accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// From now on answer every RCPT with 550.
    pub fn refuse_recipients(&self) {
        *self.refuse.lock().unwrap() = true;
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse: Arc<Mutex<bool>>,
) -> std::io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    wr.write_all(b"220 localhost test SMTP\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            wr.write_all(b"250-localhost\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            wr.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().trim_matches(['<', '>']).to_owned();
            to.clear();
            wr.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            if *refuse.lock().unwrap() {
                wr.write_all(b"550 5.1.1 mailbox unavailable\r\n").await?;
            } else {
                to.push(cmd[8..].trim().trim_matches(['<', '>']).to_owned());
                wr.write_all(b"250 OK\r\n").await?;
            }
        } else if upper == "DATA" {
            wr.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if rd.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(
                    line.strip_prefix('.')
                        .filter(|_| line.starts_with(".."))
                        .unwrap_or(&line),
                );
            }
            mails.lock().unwrap().push(Mail {
                from: from.clone(),
                to: to.clone(),
                data,
            });
            wr.write_all(b"250 OK queued\r\n").await?;
        } else if upper.starts_with("RSET") {
            to.clear();
            wr.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("QUIT") {
            wr.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            wr.write_all(b"502 command not implemented\r\n").await?;
        }
    }
}
