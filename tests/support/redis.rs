//! A private `redis-server` per test: on a port it picked, without persistence
//! (`--save "" --appendonly no`) unless asked, stopped by pid when dropped. Include it with
//! `#[path = "support/redis.rs"] mod redis_server;`.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The arguments beside the port (TLS, password, persistence).
    extra: Vec<String>,
    url: String,
}

impl RedisServer {
    /// Starts one on a free port and waits until it accepts connections. Panics with the
    /// install command when `redis-server` is not on PATH: never a silent skip.
    pub fn start() -> RedisServer {
        RedisServer::start_with(vec![
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
        ])
    }

    /// One that logs every write to an append-only file in `dir` before it answers, so a
    /// [`restart`](Self::restart) (even after a SIGKILL) finds its data again.
    pub fn start_persistent(dir: &std::path::Path) -> RedisServer {
        let dir = dir.to_string_lossy().into_owned();
        RedisServer::start_with(
            [
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
    }

    fn start_with(persistence: Vec<String>) -> RedisServer {
        let port = free_port();
        let mut extra = vec!["--port".into(), port.to_string()];
        extra.extend(persistence);
        let mut server = RedisServer {
            child: None,
            port,
            extra,
            url: format!("redis://127.0.0.1:{port}"),
        };
        server.spawn();
        server
    }

    /// One that speaks only TLS (a self-signed certificate made in `dir` with the
    /// `openssl` command) and wants `password`; its URL skips the certificate check.
    pub fn start_tls(dir: &std::path::Path, password: &str) -> RedisServer {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the openssl command");
        assert!(made.success(), "openssl could not make a certificate");
        let port = free_port();
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path(&cert),
            "--tls-key-file",
            &path(&key),
            "--tls-ca-cert-file",
            &path(&cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        let mut server = RedisServer {
            child: None,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            url: format!("rediss://:{password}@127.0.0.1:{port}/#insecure"),
        };
        server.spawn();
        server
    }

    /// A Redis Cluster of one node that serves every slot (its node file in `dir`): a
    /// command or script touching keys of two slots fails there as it would on a real
    /// cluster (CROSSSLOT, or "keys that do not hash to the same slot").
    pub fn start_cluster(dir: &std::path::Path) -> RedisServer {
        let port = free_port();
        let nodes = dir.join("nodes.conf").to_string_lossy().into_owned();
        let extra = vec![
            "--port".to_owned(),
            port.to_string(),
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-config-file".to_owned(),
            nodes,
            "--save".to_owned(),
            "".to_owned(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ];
        let mut server = RedisServer {
            child: None,
            port,
            extra,
            url: format!("redis://127.0.0.1:{port}"),
        };
        server.spawn();
        let cli = |args: &[&str]| {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string()])
                .args(args)
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        cli(&["CLUSTER", "ADDSLOTSRANGE", "0", "16383"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.extra)
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the broker tests need it on PATH; \
                     install it with `apt-get install -y redis-server`"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:PORT` (or the TLS one).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Kills the server (SIGKILL: its data is gone, unless it persists).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port: empty, or with its data when it
    /// persists.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
