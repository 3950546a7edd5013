//! Services of a test's own, beside the shared ones: a PostgreSQL cluster
//! made with `initdb` in a temporary directory and a `redis-server`, each on
//! a free port, optionally speaking TLS with a certificate from a test CA.
//! Stopping or restarting them disturbs no other test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::{free_port, wait_until};

/// A certificate authority made for one test, written to `<dir>/<name>-ca.pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem_file: PathBuf,
    dir: PathBuf,
    name: String,
}

/// A server certificate and its key, as files.
pub struct ServerCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("payfleet test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        let pem_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem_file, certificate.pem())?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            pem_file,
            dir: dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// A certificate for `localhost` and 127.0.0.1, signed by this CA.
    pub fn issue(&self, server: &str) -> anyhow::Result<ServerCertificate> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        let stem = format!("{}-{server}", self.name);
        let cert_file = self.dir.join(format!("{stem}.crt"));
        let key_file = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, certificate.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok(ServerCertificate {
            cert_file,
            key_file,
        })
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("payfleet-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: as root, its tools run as `postgres`.
fn postgres_tool(bin_dir: &Path, tool: &str) -> std::process::Command {
    let path = bin_dir.join(tool);
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        std::process::Command::new(path)
    }
}

fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL's server tools (/usr/lib/postgresql/<version>/bin)")?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn run(mut command: std::process::Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| what.to_owned())?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A PostgreSQL cluster of the test's own, stopped and removed on drop.
pub struct OwnPostgres {
    pub port: u16,
    bin_dir: PathBuf,
    data: PathBuf,
    _dir: TempDir,
}

impl OwnPostgres {
    /// A cluster on a free port; with `tls`, it takes connections over TLS
    /// only (`hostssl`), with that certificate.
    pub fn start(tls: Option<&ServerCertificate>) -> anyhow::Result<Self> {
        let bin_dir = postgres_bin_dir()?;
        let dir = TempDir::new("pg")?;
        let data = dir.0.join("data");
        if is_root() {
            run(
                {
                    let mut c = std::process::Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir.0);
                    c
                },
                "chown of the cluster directory",
            )?;
        }
        let mut initdb = postgres_tool(&bin_dir, "initdb");
        initdb
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data);
        run(initdb, "initdb")?;
        let mut hba = String::new();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 60\n",
            0,
            dir.0.display()
        );
        if let Some(certificate) = tls {
            // the server reads its key as the postgres user, mode 0600
            let cert = dir.0.join("server.crt");
            let key = dir.0.join("server.key");
            std::fs::copy(&certificate.cert_file, &cert)?;
            std::fs::copy(&certificate.key_file, &key)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            if is_root() {
                let mut chown = std::process::Command::new("chown");
                chown.arg("postgres:postgres").arg(&cert).arg(&key);
                run(chown, "chown of the server certificate")?;
            }
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.display(),
                key.display()
            ));
            hba.push_str("hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n");
        } else {
            hba.push_str("host all all 127.0.0.1/32 trust\n");
        }
        hba.push_str("local all all trust\n");
        let port = free_port();
        let conf = conf.replace("port = 0", &format!("port = {port}"));
        append(&data.join("postgresql.conf"), &conf)?;
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        let cluster = Self {
            port,
            bin_dir,
            data,
            _dir: dir,
        };
        cluster.start_again()?;
        Ok(cluster)
    }

    /// Starts the (stopped) cluster and waits until it takes connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut start = postgres_tool(&self.bin_dir, "pg_ctl");
        start
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .arg("start");
        run(start, "pg_ctl start").with_context(|| self.log())
    }

    /// Stops at once, as a crash would (`-m immediate`).
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut stop = postgres_tool(&self.bin_dir, "pg_ctl");
        stop.args(["-w", "-D"])
            .arg(&self.data)
            .args(["-m", "immediate", "stop"]);
        run(stop, "pg_ctl stop")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// A `redis-server` of the test's own, killed on drop; it keeps nothing on disk.
pub struct OwnRedis {
    pub port: u16,
    args: Vec<String>,
    child: Option<tokio::process::Child>,
    /// While stopped, the port is held by a listener that drops every
    /// connection: another test's server started meanwhile cannot take the
    /// freed port and answer this test's clients as if Redis were back.
    placeholder: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl OwnRedis {
    /// On a free port; with `tls` (and the CA it trusts for clients, which
    /// are not asked for certificates), on a TLS port only.
    pub async fn start(tls: Option<(&ServerCertificate, &TestCa)>) -> anyhow::Result<Self> {
        let dir = TempDir::new("redis")?;
        let port = free_port();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(["--dir".to_owned(), dir.0.display().to_string()]);
        match tls {
            Some((certificate, ca)) => args.extend([
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port.to_string(),
                "--tls-cert-file".to_owned(),
                certificate.cert_file.display().to_string(),
                "--tls-key-file".to_owned(),
                certificate.key_file.display().to_string(),
                "--tls-ca-cert-file".to_owned(),
                ca.pem_file.display().to_string(),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]),
            None => args.extend(["--port".to_owned(), port.to_string()]),
        }
        let mut redis = Self {
            port,
            args,
            child: None,
            placeholder: None,
            _dir: dir,
        };
        redis.start_again().await?;
        Ok(redis)
    }

    /// Starts the (stopped) server on the same port and waits until it listens.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if let Some(placeholder) = self.placeholder.take() {
            placeholder.abort();
            let _ = placeholder.await;
        }
        let child = tokio::process::Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let port = self.port;
        wait_until(
            Duration::from_secs(10),
            "redis-server listening",
            || async move {
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok())
            },
        )
        .await
    }

    /// Kills the server (nothing it held survives), keeping its port.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        // The killed server's socket may linger a moment: hold the port as
        // soon as it is free.
        for _ in 0..100 {
            if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                self.placeholder = Some(tokio::spawn(async move {
                    while let Ok((connection, _)) = listener.accept().await {
                        drop(connection);
                    }
                }));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
