//! Load on `kiln serve` over 127.0.0.1: requests/s and p50/p99 latency of one-row JSON
//! requests from 1, 8 and 64 keep-alive clients, with coalescing on and off.
//!
//! `cargo bench --bench serve` (KILN_SERVE_SECS: seconds per load, default 3;
//! KILN_SERVE_DEVICE: gpu or cpu, default gpu). Prints a Markdown table.

#[path = "../tests/common/serve.rs"]
mod serve;

use std::path::Path;
use std::time::{Duration, Instant};

use serve::{digits_rows, json_rows, Server};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// Requests per client at most, whatever the duration.
const MAX_REQUESTS: usize = 100_000;

fn main() {
    let secs: f64 = std::env::var("KILN_SERVE_SECS").map_or(3.0, |s| s.parse().unwrap());
    let device = std::env::var("KILN_SERVE_DEVICE").unwrap_or_else(|_| "gpu".into());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-serve");
    let _ = std::fs::remove_dir_all(&dir);
    serve::train_digits(KILN, &dir);
    let rows = digits_rows(64);
    println!("| coalescing | clients | requests/s | p50 ms | p99 ms | mean rows/batch |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (mode, flags) in [
        ("on (2 ms)", &["--max-wait-ms", "2"][..]),
        ("off", &["--no-coalesce"][..]),
    ] {
        let server = Server::start(KILN, &dir, &[&["--device", &device][..], flags].concat());
        for clients in [1, 8, 64] {
            let before = batches(&server);
            let (rate, p50, p99) = load(&server, &rows, clients, Duration::from_secs_f64(secs));
            let after = batches(&server);
            let per_batch = (after.1 - before.1) / (after.0 - before.0).max(1.0);
            println!("| {mode} | {clients} | {rate:.0} | {p50:.2} | {p99:.2} | {per_batch:.1} |");
        }
    }
}

/// Requests/s, p50 and p99 latency (ms) of `clients` clients sending one row at a time.
fn load(server: &Server, rows: &[Vec<f32>], clients: usize, time: Duration) -> (f64, f64, f64) {
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (mut c, body) = (server.client(), json_rows(&rows[i % rows.len()..][..1]));
            std::thread::spawn(move || {
                let mut took = Vec::new();
                while took.len() < MAX_REQUESTS && start.elapsed() < time {
                    let t = Instant::now();
                    let r = c.post("/v1/predict", "application/json", &body).unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                    took.push(t.elapsed().as_secs_f64() * 1e3);
                }
                took
            })
        })
        .collect();
    let mut all: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    (rate, at(0.5), at(0.99))
}

/// The server's (batches, rows) counted so far.
fn batches(server: &Server) -> (f64, f64) {
    let text = server.client().get("/metrics").unwrap().body;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    (
        value("kiln_batch_rows_count "),
        value("kiln_batch_rows_sum "),
    )
}
