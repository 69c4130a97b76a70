//! The server's counters, written in Prometheus's text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of the request latency buckets, in seconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of the batch size buckets, in rows.
const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// A histogram: counts per bucket (the last one unbounded), their sum and count.
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        self.counts.resize(bounds.len() + 1, 0);
        let i = bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += value;
    }

    /// The `_bucket`, `_sum` and `_count` lines of histogram `name`.
    fn write(&self, out: &mut String, name: &str, help: &str, bounds: &[f64]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, le) in bounds.iter().map(|b| b.to_string()).enumerate() {
            total += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        total += self.counts.get(bounds.len()).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {total}", self.sum);
    }
}

/// Everything counted, behind one lock: a few updates per request.
#[derive(Default)]
struct Counts {
    requests: u64,
    errors: BTreeMap<u16, u64>,
    latency: Histogram,
    batches: Histogram,
}

/// The server's metrics, shared by the request handlers and the model worker.
#[derive(Default)]
pub struct Metrics(Mutex<Counts>);

impl Metrics {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters stay meaningful after a panic elsewhere.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a prediction request answered with `status` after `took`.
    pub fn request(&self, status: u16, took: Duration) {
        let mut c = self.counts();
        c.requests += 1;
        if status >= 400 {
            *c.errors.entry(status).or_default() += 1;
        }
        c.latency.observe(&LATENCY_BOUNDS, took.as_secs_f64());
    }

    /// Counts a batch of `rows` rows predicted together.
    pub fn batch(&self, rows: usize) {
        self.counts().batches.observe(&BATCH_BOUNDS, rows as f64);
    }

    /// All metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        let c = self.counts();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kiln_requests_total Prediction requests answered.\n\
             # TYPE kiln_requests_total counter\nkiln_requests_total {}",
            c.requests
        );
        let _ = writeln!(
            out,
            "# HELP kiln_request_errors_total Prediction requests answered with an error, by status.\n\
             # TYPE kiln_request_errors_total counter"
        );
        for (status, n) in &c.errors {
            let _ = writeln!(out, "kiln_request_errors_total{{status=\"{status}\"}} {n}");
        }
        let name = "kiln_request_duration_seconds";
        c.latency.write(
            &mut out,
            name,
            "Prediction request latency.",
            &LATENCY_BOUNDS,
        );
        let name = "kiln_batch_rows";
        c.batches
            .write(&mut out, name, "Rows per model batch.", &BATCH_BOUNDS);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request(200, Duration::from_millis(3));
        m.request(400, Duration::from_millis(30));
        m.batch(3);
        let text = m.render();
        assert!(text.contains("kiln_requests_total 2\n"), "{text}");
        assert!(text.contains("kiln_request_errors_total{status=\"400\"} 1\n"));
        assert!(text.contains("kiln_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("kiln_request_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("kiln_batch_rows_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("kiln_batch_rows_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("kiln_batch_rows_count 1\n"));
    }
}
