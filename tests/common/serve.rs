//! `kiln serve` started on a free loopback port, and a minimal HTTP/1.1 client over
//! std's TcpStream (keep-alive, Content-Length bodies only: what the server sends).
//! Shared by tests/serve.rs and benches/serve.rs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any one read or write on a connection may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `kiln serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on, such as 127.0.0.1:40123.
    pub addr: String,
}

impl Server {
    /// Starts `kiln serve --checkpoint DIR --addr 127.0.0.1:0` with `extra` options and
    /// waits (two minutes at most) for the address it prints.
    pub fn start(kiln: &str, checkpoint: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(kiln)
            .args(["serve", "--checkpoint", checkpoint.to_str().unwrap()])
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("kiln serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("kiln serve prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("kiln serve printed {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// A new keep-alive connection to the server.
    pub fn client(&self) -> Client {
        Client::connect(&self.addr).expect("connects to kiln serve")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a child's own pid and a plain signal number.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }

    /// Waits (one minute at most) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("kiln serve did not exit within a minute");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A response: status code and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{e}: not JSON: {:?}", self.body))
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `addr`.
    pub fn connect(addr: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
        })
    }

    /// `GET path`.
    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        self.send("GET", path, None, b"")
    }

    /// `POST path` with this body and Content-Type.
    pub fn post(&mut self, path: &str, kind: &str, body: &[u8]) -> std::io::Result<Reply> {
        self.send("POST", path, Some(kind), body)
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        kind: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(kind) = kind {
            head += &format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", body.len());
        }
        head += "\r\n";
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        // A server that refuses a large body may answer before reading it all.
        let _ = s.write_all(body);
        self.read_reply()
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("status line {line:?}")))?;
        let mut length = 0;
        for _ in 0..100 {
            line.clear();
            self.stream.read_line(&mut line)?;
            if line.trim().is_empty() {
                let mut body = vec![0; length];
                self.stream.read_exact(&mut body)?;
                let body = String::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
                return Ok(Reply { status, body });
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| bad("Content-Length"))?;
                }
            }
        }
        Err(bad("more than 100 header lines"))
    }
}

/// A JSON prediction request body for these rows.
pub fn json_rows(rows: &[Vec<f32>]) -> Vec<u8> {
    serde_json::json!({ "rows": rows }).to_string().into_bytes()
}

/// The first `n` rows of the digits set's features (its label column left out).
pub fn digits_rows(n: usize) -> Vec<Vec<f32>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits/digits.csv");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .take(n)
        .map(|l| {
            let fields: Vec<f32> = l.split(',').map(|v| v.parse().unwrap()).collect();
            fields[..fields.len() - 1].to_vec()
        })
        .collect()
}

/// Trains a small digits model into `dir` (two epochs) for the server to load.
pub fn train_digits(kiln: &str, dir: &Path) {
    let out = Command::new(kiln)
        .args(["train", "--epochs", "2", "--out", dir.to_str().unwrap()])
        .output()
        .expect("kiln train runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
