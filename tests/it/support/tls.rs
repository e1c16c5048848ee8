//! TLS test servers: a throw-away CA and server certificate (openssl CLI), a private Postgres
//! (any installed major version, see [`pg_bin`]) with `ssl=on` whose pg_hba refuses plaintext
//! TCP, and a `redis-server` listening on TLS only.
//! Everything lives in a temp dir removed on Drop; servers are stopped on Drop.
//!
//! A missing binary is not a pass: the constructors return `Err(reason)` and the test prints
//! a `SKIP` line straight to stderr (not captured by the test harness), see [`skip`].

use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The directory of `initdb` and `pg_ctl`: `TEST_PG_BIN` when set, else `pg_config
/// --bindir`, else the newest `/usr/lib/postgresql/<major>/bin` (Debian installs servers
/// there, outside PATH). Any major version with TLS support will do.
pub fn pg_bin() -> Result<PathBuf, String> {
    let has_tools = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Some(dir) = std::env::var_os("TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_tools(&dir) {
            Ok(dir)
        } else {
            Err(format!(
                "TEST_PG_BIN={}: no initdb/pg_ctl there",
                dir.display()
            ))
        };
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_tools(d)) {
        return Ok(dir);
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_tools(bin))
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no initdb/pg_ctl (set TEST_PG_BIN, or install a postgresql server package)".to_owned()
    })
}

/// Prints a visible SKIP line (bypassing the harness's capture) for `test`.
pub fn skip(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// A directory under the system temp dir, removed with everything in it on Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "itsur-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for `DNS:localhost` only (no IP address), and an
/// unrelated second CA.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// Generates the certificates (EC P-256, valid two days); Err when openssl is missing.
    pub fn new() -> Result<Self, String> {
        if !have("openssl") {
            return Err(
                "the openssl CLI is not installed (needed to make test certificates)".into(),
            );
        }
        let dir = TempDir::new("pki");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            run(Command::new("openssl")
                .current_dir(d)
                .args(["req", "-x509", "-new", "-days", "2"])
                .args(ec)
                .args([
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ])
                .args(["-subj", &format!("/CN=itsur test {ca}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        }
        run(Command::new("openssl")
            .current_dir(d)
            .args(["req", "-new"])
            .args(ec)
            .args([
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ]));
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl").current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]));
        Ok(Self { dir })
    }

    /// The CA that signed the server certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A CA that signed nothing here (PEM).
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    /// The server certificate for `DNS:localhost` (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server certificate's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

/// A port that was free a moment ago (Postgres cannot listen on port 0).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True when this process runs as root (Postgres then runs as the `postgres` user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().unwrap();
    assert!(out.status.success(), "no user {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A private Postgres with TLS on; plaintext TCP is refused by pg_hba.
pub struct TlsPostgres {
    bin: PathBuf,
    port: u16,
    data: PathBuf,
    as_postgres: bool,
    _dir: TempDir,
}

impl TlsPostgres {
    /// initdb + start (a second or two); Err when no Postgres server binaries are found.
    pub fn start(pki: &Pki) -> Result<Self, String> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        std::fs::copy(pki.cert(), &cert).unwrap();
        std::fs::copy(pki.key(), &key).unwrap();
        // Postgres insists that its key is private to the server's user.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if as_postgres {
            let (uid, gid) = (id_of("postgres", "-u"), id_of("postgres", "-g"));
            for p in [dir.path(), &cert, &key] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let port = free_port();
        let pg = Self {
            bin,
            port,
            data,
            as_postgres,
            _dir: dir,
        };
        run(pg.pg_command("initdb").arg("-D").arg(&pg.data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n\
             fsync = off\nmax_connections = 30\nshared_buffers = 16MB\n",
            pg._dir.path().display(),
            cert.display(),
            key.display(),
        );
        pg.write_conf("postgresql.conf", &conf, false);
        pg.write_conf(
            "pg_hba.conf",
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
            true,
        );
        run(pg
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(pg._dir.path().join("postgres.log"))
            .args(["-w", "-t", "30", "start"]));
        Ok(pg)
    }

    fn pg_command(&self, tool: &str) -> Command {
        let bin = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.current_dir("/");
        cmd
    }

    /// Writes (as root, before start) into a file of the data directory.
    fn write_conf(&self, file: &str, text: &str, replace: bool) {
        let path = self.data.join(file);
        let mut f = std::fs::OpenOptions::new()
            .append(!replace)
            .write(true)
            .truncate(replace)
            .open(&path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// `postgres://postgres@{host}:{port}/{db}?{query}`.
    pub fn url(&self, host: &str, db: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/{db}?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A `redis-server` listening on TLS only (`--port 0`), not asking for client certificates.
pub struct TlsRedis {
    port: u16,
    child: Child,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts it; Err when redis-server is missing. Returns before it accepts connections:
    /// callers poll.
    pub fn start(pki: &Pki) -> Result<Self, String> {
        if !have("redis-server") {
            return Err("redis-server is not installed".into());
        }
        let dir = TempDir::new("redis");
        let port = free_port();
        let child = Command::new("redis-server")
            .current_dir(dir.path())
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(pki.cert())
            .arg("--tls-key-file")
            .arg(pki.key())
            .arg("--tls-ca-cert-file")
            .arg(pki.ca())
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        Ok(Self {
            port,
            child,
            _dir: dir,
        })
    }

    /// `rediss://localhost:{port}` (the certificate names localhost only).
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// Fails the test with redis-server's own words when it exited (e.g. built without TLS).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("redis-server exited ({status}): {err}");
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
