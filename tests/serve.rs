//! `kiln serve` end to end on 127.0.0.1: bad requests, concurrent clients against
//! `kiln predict`, and SIGTERM under load.

#[path = "common/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use serve::{digits_rows, json_rows, Client, Server};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const JSON: &str = "application/json";
const BINARY: &str = "application/octet-stream";

/// A digits run trained once for all the tests here.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        serve::train_digits(KILN, &dir);
        dir
    })
}

fn binary(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Asserts a 4xx answer with a JSON `error` message.
fn assert_refused(c: &mut Client, kind: &str, body: &[u8], status: u16) {
    let r = c.post("/v1/predict", kind, body).unwrap();
    assert_eq!(r.status, status, "{r:?}");
    assert!(r.json()["error"].is_string(), "{r:?}");
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_error() {
    let server = Server::start(
        KILN,
        run_dir(),
        &["--max-rows", "4", "--max-body-bytes", "2048"],
    );
    // A client that sends half a request and stalls holds up no one else.
    let mut stalled = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut stalled, b"POST /v1/predict HTTP/1.1\r\nContent-Le").unwrap();
    let row = digits_rows(1).remove(0);
    let mut c = server.client();
    assert_refused(&mut c, JSON, br#"{"rows": [[1, 2"#, 400);
    assert_refused(&mut c, JSON, br#"{"columns": []}"#, 400);
    assert_refused(&mut c, JSON, br#"{"rows": [[1, 2, 3]]}"#, 400);
    assert_refused(&mut c, JSON, br#"{"rows": []}"#, 400);
    // Beyond f32's range.
    let mut huge: Vec<String> = row.iter().map(|v| v.to_string()).collect();
    huge[0] = "1e39".into();
    let huge = format!("{{\"rows\": [[{}]]}}", huge.join(","));
    assert_refused(&mut c, JSON, huge.as_bytes(), 400);
    let mut nan = row.clone();
    nan[3] = f32::NAN;
    assert_refused(&mut c, BINARY, &binary(&nan), 400);
    assert_refused(&mut c, BINARY, &binary(&row)[..10], 400);
    assert_refused(&mut c, JSON, &json_rows(&vec![row.clone(); 5]), 413);
    assert_refused(&mut c, "text/plain", b"1,2,3", 415);
    // The server may close this connection without reading the body it refuses.
    assert_refused(&mut server.client(), BINARY, &vec![0; 4096], 413);
    // Still serving, on the same connection.
    let ok = c.post("/v1/predict", JSON, &json_rows(&[row])).unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.json()["classes"].as_array().unwrap().len(), 1);
    assert_eq!(c.get("/healthz").unwrap().status, 200);
    for (path, status) in [("/v1/predict", 405), ("/v2/predict", 404)] {
        let r = c.get(path).unwrap();
        assert_eq!(r.status, status, "{r:?}");
        assert!(r.json()["error"].is_string(), "{r:?}");
    }
    let metrics = c.get("/metrics").unwrap().body;
    for line in [
        "kiln_requests_total 11",
        "kiln_request_errors_total{status=\"400\"} 7",
        "kiln_request_errors_total{status=\"413\"} 2",
        "kiln_request_errors_total{status=\"415\"} 1",
        "kiln_batch_rows_count 1",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }
    drop(stalled);
}

/// `kiln predict`'s probabilities for these rows (six decimals).
fn predicted(rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let dir = run_dir().join("predict-input");
    std::fs::create_dir_all(&dir).unwrap();
    let csv: Vec<String> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let header: Vec<String> = (0..rows[0].len()).map(|i| format!("f{i}")).collect();
    let input = dir.join("rows.csv");
    std::fs::write(
        &input,
        format!("{}\n{}\n", header.join(","), csv.join("\n")),
    )
    .unwrap();
    let out = Command::new(KILN)
        .args(["predict", "--checkpoint", run_dir().to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .skip(1)
        .map(|l| l.split(',').skip(2).map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// Asserts that `answer` holds `expected`'s probabilities (to kiln predict's six decimals).
fn assert_same(answer: &serde_json::Value, expected: &[Vec<f64>]) {
    let probs = answer["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), expected.len());
    for (got, want) in probs.iter().zip(expected) {
        let got: Vec<f64> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 2e-6, "{got:?} != {want:?}");
        }
    }
}

#[test]
fn concurrent_clients_get_kiln_predicts_answers() {
    const CLIENTS: usize = 64;
    const ROUNDS: usize = 3;
    let rows = digits_rows(CLIENTS);
    let expected = predicted(&rows);
    let server = Server::start(KILN, run_dir(), &["--max-wait-ms", "20"]);
    // All 64 rows in one binary request.
    let all: Vec<f32> = rows.concat();
    let r = server
        .client()
        .post("/v1/predict", BINARY, &binary(&all))
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_same(&r.json(), &expected);
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (mut c, row, start) = (server.client(), rows[i].clone(), start.clone());
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|_| {
                        start.wait();
                        c.post("/v1/predict", JSON, &json_rows(std::slice::from_ref(&row)))
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        for r in t.join().unwrap() {
            assert_eq!(r.status, 200, "{r:?}");
            assert_same(&r.json(), &expected[i..=i]);
        }
    }
    // Coalesced: fewer batches than requests.
    let metrics = server.client().get("/metrics").unwrap().body;
    let batches: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_batch_rows_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        batches < CLIENTS * ROUNDS / 2,
        "{batches} batches:\n{metrics}"
    );
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_exits_0() {
    const IN_FLIGHT: usize = 8;
    const LOAD: usize = 8;
    // Each batch waits a second for more rows, so requests are surely in flight at SIGTERM.
    let flags = ["--max-wait-ms", "1000", "--shutdown-grace-s", "3"];
    let mut server = Server::start(KILN, run_dir(), &flags);
    // A client that stalls mid-request does not keep the server from exiting.
    let mut stalled = std::net::TcpStream::connect(&server.addr).unwrap();
    std::io::Write::write_all(&mut stalled, b"POST /v1/predict HTTP/1.1\r\nContent-Le").unwrap();
    let row = digits_rows(1).remove(0);
    let sent = |c: Client, row: Vec<f32>| {
        std::thread::spawn(move || {
            let mut c = c;
            c.post("/v1/predict", JSON, &json_rows(&[row]))
        })
    };
    let in_flight: Vec<_> = (0..IN_FLIGHT)
        .map(|_| sent(server.client(), row.clone()))
        .collect();
    // Load that keeps coming through the shutdown, bounded in count and time.
    let load: Vec<_> = (0..LOAD)
        .map(|_| {
            let (addr, row) = (server.addr.clone(), row.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                let mut answered = Vec::new();
                for _ in 0..200 {
                    let Ok(mut c) = Client::connect(&addr) else {
                        break;
                    };
                    let Ok(r) = c.post("/v1/predict", JSON, &json_rows(std::slice::from_ref(&row)))
                    else {
                        break;
                    };
                    answered.push(r.status);
                    if Instant::now() > deadline {
                        break;
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    server.terminate();
    for t in in_flight {
        let r = t.join().unwrap().expect("an in-flight request is answered");
        assert_eq!(r.status, 200, "{r:?}");
    }
    for t in load {
        for status in t.join().unwrap() {
            assert!(status == 200 || status == 503, "status {status}");
        }
    }
    let status = server.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    drop(stalled);
}
