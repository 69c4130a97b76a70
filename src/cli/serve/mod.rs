//! `kiln serve`: predictions over HTTP from a trained run, with concurrent requests
//! gathered into one batch by the single thread that owns the model.

mod http;
mod metrics;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kiln::Result;

use super::bad_arg;
use super::checkpoint::CheckpointArgs;

/// The long help of `kiln serve`.
pub const LONG_ABOUT: &str = "\
Serve a trained run's predictions over HTTP.

POST /v1/predict takes JSON {\"rows\": [[...], ...]} or, with Content-Type
application/octet-stream, rows of little-endian f32 values; the features are raw,
as `kiln predict` reads them, and are scaled as at training time. It answers
{\"probabilities\": [[...]], \"classes\": [...]} for classifiers and
{\"predictions\": [[...]]} for regression; a bad request gets a 4xx status and
{\"error\": \"...\"}. GET /healthz answers ok; GET /metrics gives request, error,
latency and batch size counters in Prometheus's text format.

One thread owns the model. Requests that arrive within --max-wait-ms of each
other are predicted as one batch of up to --max-batch rows. SIGTERM or Ctrl-C
stops accepting connections, finishes the requests in flight (closing any
connection still open --shutdown-grace-s later) and exits.";

/// Examples for `kiln serve --help`.
pub const EXAMPLES: &str = "\
Examples:
  kiln serve --checkpoint runs/digits
  curl -s localhost:8080/v1/predict -H 'Content-Type: application/json' \\
      -d '{\"rows\": [[0, 0, 5, 13, 9, 1, 0, 0, ...]]}'

  # Every request on its own, on all interfaces
  kiln serve --checkpoint runs/digits --addr 0.0.0.0:8080 --no-coalesce";

/// Options of `kiln serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The run folder written by `kiln train` (its --out)
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,

    /// Where to run: gpu, gpu:NAME or cpu
    #[arg(long, value_name = "DEVICE", default_value = "gpu")]
    pub device: String,

    /// Address and port to listen on (port 0 picks a free one; the address is printed)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Rows per model batch at most
    #[arg(long, value_name = "ROWS", default_value_t = 256)]
    pub max_batch: usize,

    /// How long a request waits for others to share its batch; 0 predicts each alone
    #[arg(long, value_name = "MS", default_value_t = 2)]
    pub max_wait_ms: u64,

    /// Predict every request on its own (as --max-wait-ms 0)
    #[arg(long)]
    pub no_coalesce: bool,

    /// Rows per request at most
    #[arg(long, value_name = "ROWS", default_value_t = 4096)]
    pub max_rows: usize,

    /// Request body size at most
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,

    /// After SIGTERM or Ctrl-C, how long requests in flight may take to finish
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub shutdown_grace_s: u64,
}

/// Runs `kiln serve` until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    for (name, value) in [
        ("--max-batch", args.max_batch),
        ("--max-rows", args.max_rows),
    ] {
        if value == 0 {
            return Err(bad_arg(name, "must be at least 1"));
        }
    }
    let wait = if args.no_coalesce {
        0
    } else {
        args.max_wait_ms
    };
    let coalesce = worker::Coalesce {
        max_batch: args.max_batch,
        max_wait: Duration::from_millis(wait),
    };
    let run = CheckpointArgs {
        checkpoint: Some(args.checkpoint.clone()),
        ensemble: Vec::new(),
        combine: kiln::train::Combine::Mean,
        device: args.device.clone(),
        batch_size: None,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let (queue, info, worker) = worker::start(run, coalesce, metrics.clone())?;
    let app = http::App {
        queue,
        info,
        max_rows: args.max_rows,
        metrics,
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| bad_arg("serve", e.to_string()))?;
    let router = http::router(app, args.max_body_bytes);
    let grace = Duration::from_secs(args.shutdown_grace_s);
    runtime.block_on(listen(args.addr, router, grace))?;
    // Connections left after the grace period hold queue senders: end their tasks, so that
    // the worker sees every sender gone and ends after its last batch.
    runtime.shutdown_timeout(Duration::from_secs(1));
    worker
        .join()
        .map_err(|_| bad_arg("serve", "the model worker panicked"))
}

/// Serves `router` on `addr` until a shutdown signal, then lets requests in flight finish
/// for up to `grace`: a client that stalls mid-request must not keep the server up.
async fn listen(addr: SocketAddr, router: axum::Router, grace: Duration) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bad_arg("--addr", format!("cannot listen on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| bad_arg("--addr", e.to_string()))?;
    // Tests and scripts read the address from this line (port 0 picks a free port).
    say!("listening on http://{bound}");
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = signalled.clone();
    let serving = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown_signal().await;
        notify.notify_one();
    });
    let deadline = async move {
        signalled.notified().await;
        tokio::time::sleep(grace).await;
    };
    let serving = Box::pin(std::future::IntoFuture::into_future(serving));
    match futures::future::select(serving, Box::pin(deadline)).await {
        futures::future::Either::Left((served, _)) => {
            served.map_err(|e| bad_arg("serve", e.to_string()))
        }
        futures::future::Either::Right(_) => {
            let s = grace.as_secs();
            eprintln!("kiln serve: closing the connections still open {s} s after the signal");
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    futures::future::select(Box::pin(ctrl_c), Box::pin(term)).await;
    eprintln!("kiln serve: shutting down after the requests in flight");
}
