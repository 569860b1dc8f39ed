//! Real memcached servers for tests: started on free loopback ports, stopped, killed, restarted.
//!
//! Shared by the integration tests (`mod support;`), the crate's own unit tests and the examples'
//! tests (`#[path]`). Needs the `memcached` binary on `PATH` (`apt-get install memcached`); its
//! absence fails the test, with that hint, rather than skipping it.
#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use async_memcached::AsciiProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A memcached process on `127.0.0.1:port`, killed when dropped.
#[derive(Debug)]
pub struct Memcached {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Memcached {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts `N` servers, one after another.
    pub async fn start_many<const N: usize>() -> [Self; N] {
        let mut servers = Vec::with_capacity(N);
        for _ in 0..N {
            servers.push(Self::start().await);
        }
        servers
            .try_into()
            .unwrap_or_else(|_| unreachable!("N servers were started"))
    }

    /// Starts a server with extra arguments (such as `-I 2m`).
    pub async fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for _ in 0..20 {
            // The port may be taken between asking the kernel and memcached binding it, by a
            // test running in parallel: then memcached exits, and we try another.
            let port = free_port();
            let mut server = Memcached {
                child: None,
                port,
                args: args.clone(),
            };
            if server.spawn_and_wait().await {
                return server;
            }
        }
        panic!("could not start memcached on a free port in 20 attempts");
    }

    /// Starts a server that asks for a login (`-Y`), with one user in its authfile.
    pub async fn start_with_auth(username: &str, password: &str) -> Self {
        static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("distcache-authfile-{}-{n}", std::process::id()));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| writeln!(file, "{username}:{password}"))
                .expect("write the authfile");
        }
        Self::start_with(&["-Y", path.to_str().expect("a UTF-8 temp path")]).await
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the server is gone, its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: connections hang without an answer. Returns once the process is stopped: `kill`
    /// returns when the signal is sent, and a running server may answer a little longer.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.child.as_ref().expect("the server runs").id();
        let stat = format!("/proc/{pid}/stat");
        let started = std::time::Instant::now();
        loop {
            let stopped = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|rest| rest.trim_start().starts_with('T'))
                })
                .unwrap_or(false);
            if stopped {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "memcached {pid} did not stop"
            );
            std::thread::yield_now();
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Starts a killed server again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn_and_wait().await {
                return;
            }
            // The old socket may linger for a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not restart memcached on port {}", self.port);
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("the server runs")
            .id()
            .to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    async fn spawn_and_wait(&mut self) -> bool {
        let mut command = Command::new("memcached");
        command
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
                "-m",
                "64",
                "-c",
                "4096",
            ])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if running_as_root() {
            // memcached refuses to run as root unless told which user to be.
            command.args(["-u", "root"]);
        }
        let mut child = command.spawn().unwrap_or_else(|err| {
            panic!("cannot start memcached ({err}): install it with `apt-get install memcached`")
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if answers(self.port, self.args.iter().any(|a| a == "-Z")).await {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server must be resumed to die cleanly on some kernels.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|out| out.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    })
}

/// Whether the server on `port` answers; a TLS server (`-Z`) only when it accepts a connection.
async fn answers(port: u16, tls: bool) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if tls {
        return true;
    }
    if stream.write_all(b"version\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // A server that asks for a login (`-Y`) answers too, with `CLIENT_ERROR unauthenticated`.
    matches!(
        tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"VERSION") || buf[..n].starts_with(b"CLIENT_ERROR unauthenticated")
    )
}

/// A client that is not distcache's (async-memcached), to count and inspect from outside.
pub struct Outside {
    client: tokio::sync::Mutex<async_memcached::Client>,
}

impl Outside {
    pub async fn connect(addr: &str) -> Self {
        let client = async_memcached::Client::new(format!("tcp://{addr}"))
            .await
            .expect("connect to memcached");
        Outside {
            client: tokio::sync::Mutex::new(client),
        }
    }

    /// Sets `key` to `value` with client flags `flags`.
    pub async fn set(&self, key: &str, value: &[u8], flags: u32) {
        self.client
            .lock()
            .await
            .set(key, value, None, Some(flags))
            .await
            .expect("set");
    }

    /// The value and client flags of `key`.
    pub async fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let value = self.client.lock().await.get(key).await.expect("get")?;
        Some((
            value.data.unwrap_or_default(),
            value.flags.unwrap_or_default(),
        ))
    }

    /// Deletes `key`; whether it was there.
    pub async fn delete(&self, key: &str) -> bool {
        self.client.lock().await.delete(key).await.is_ok()
    }

    /// Adds one to the counter `key`, creating it at 0 first.
    pub async fn incr(&self, key: &str) -> u64 {
        let mut client = self.client.lock().await;
        // `add` fails harmlessly if the counter exists.
        let _ = client.add(key, "0", None, None).await;
        client.increment(key, 1).await.expect("increment")
    }

    /// Adds one to the counter `key`, which must exist.
    pub async fn increment(&self, key: &str) -> u64 {
        self.client
            .lock()
            .await
            .increment(key, 1)
            .await
            .expect("increment")
    }

    /// The counter `key`, 0 if absent.
    pub async fn count(&self, key: &str) -> u64 {
        match self.get(key).await {
            Some((value, _)) => String::from_utf8(value).unwrap().trim().parse().unwrap(),
            None => 0,
        }
    }
}

/// The seconds `key` has left on the server at `addr` (`mg <key> t`), asked on a connection of
/// its own.
pub async fn remaining_ttl(addr: &str, key: &str) -> i64 {
    use tokio::io::AsyncBufReadExt;
    let mut stream = tokio::io::BufReader::new(TcpStream::connect(addr).await.unwrap());
    stream
        .get_mut()
        .write_all(format!("mg {key} t\r\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).await.unwrap();
    let ttl = line.split_whitespace().find_map(|f| f.strip_prefix('t'));
    ttl.unwrap_or_else(|| panic!("no TTL in {line:?}"))
        .parse()
        .unwrap()
}

/// The server at `addr`'s `stats` counter `name` (`curr_items`, `cmd_get`), asked on a connection
/// of its own.
pub async fn stat(addr: &str, name: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).await.expect("connect for stats");
    stream.write_all(b"stats\r\n").await.expect("ask stats");
    let mut answer = Vec::new();
    while !answer.ends_with(b"END\r\n") {
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("read stats");
        assert!(n > 0, "{addr} closed before answering stats");
        answer.extend_from_slice(&chunk[..n]);
    }
    let prefix = format!("STAT {name} ");
    String::from_utf8_lossy(&answer)
        .lines()
        .find_map(|line| {
            line.strip_prefix(prefix.as_str())
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in stats"))
}
