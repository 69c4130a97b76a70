//! The HTTP side: routes, reading and checking request bodies, and JSON answers.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::super::predict::{best_class, class_probabilities};
use super::metrics::Metrics;
use super::worker::{Failure, Job, ModelInfo, Queue, Refused};

/// What every handler shares.
pub struct App {
    /// The queue into the model worker.
    pub queue: Queue,
    /// The model's input and output widths.
    pub info: ModelInfo,
    /// Rows per request at most.
    pub max_rows: usize,
    /// The counters `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

/// The routes, with request bodies limited to `max_body_bytes`.
pub fn router(app: App, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/predict", post(predict))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(Arc::new(app))
}

/// `GET /metrics`.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let kind = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], app.metrics.render()).into_response()
}

/// `POST /v1/predict`: counts the request, whatever its answer.
async fn predict(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let start = Instant::now();
    let response = match answer(&app, &headers, body).await {
        Ok(outputs) => Json(outputs).into_response(),
        Err(f) => error(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &f.message,
        ),
    };
    app.metrics
        .request(response.status().as_u16(), start.elapsed());
    response
}

/// An error answer: `status` and `{"error": why}`.
fn error(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

/// A prediction answer; f32 values, written as the shortest text that reads back the same.
#[derive(serde::Serialize, Debug, PartialEq)]
#[serde(untagged)]
enum Outputs {
    /// A classifier's: every class's probability and the predicted class, per row.
    Classes {
        probabilities: Vec<Vec<f32>>,
        classes: Vec<usize>,
    },
    /// A regression model's values, per row.
    Values { predictions: Vec<Vec<f32>> },
}

/// The answer to one prediction request, or why there is none.
async fn answer(
    app: &App,
    headers: &HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Outputs, Failure> {
    let body = body.map_err(|e| Failure::new(e.status().as_u16(), e.body_text()))?;
    let x = read_rows(headers, &body, app.info.features)?;
    let rows = x.len() / app.info.features;
    if rows > app.max_rows {
        let why = format!(
            "{rows} rows, more than the {} a request may hold",
            app.max_rows
        );
        return Err(Failure::new(413, why));
    }
    let (reply, answered) = tokio::sync::oneshot::channel();
    app.queue.submit(Job { x, reply }).map_err(|r| match r {
        Refused::Busy => Failure::new(503, "the server is busy: try again".into()),
        Refused::Stopped => Failure::new(503, "the server is shutting down".into()),
    })?;
    let out = answered
        .await
        .map_err(|_| Failure::new(500, "the model worker stopped".into()))??;
    Ok(to_json(&out, app.info))
}

/// The rows of a request body, `width` values each, all finite: little-endian f32s for
/// `application/octet-stream`, else JSON `{"rows": [[...], ...]}`.
fn read_rows(headers: &HeaderMap, body: &[u8], width: usize) -> Result<Vec<f32>, Failure> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let x = if kind.starts_with("application/octet-stream") {
        binary_rows(body, width)?
    } else if kind.starts_with("application/json") {
        json_rows(body, width)?
    } else {
        let why = format!("Content-Type {kind}: send application/json or application/octet-stream");
        return Err(Failure::new(415, why));
    };
    if x.is_empty() {
        return Err(bad("no rows"));
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(bad(format!(
            "row {}, feature {}: not a finite number",
            i / width,
            i % width
        ))),
        None => Ok(x),
    }
}

/// A 400 Bad Request.
fn bad(why: impl Into<String>) -> Failure {
    Failure::new(400, why.into())
}

/// Rows of little-endian f32s, `width` to a row.
fn binary_rows(body: &[u8], width: usize) -> Result<Vec<f32>, Failure> {
    if !body.len().is_multiple_of(4 * width) {
        return Err(bad(format!(
            "{} bytes are not whole rows of {width} little-endian f32 values ({} bytes each)",
            body.len(),
            4 * width
        )));
    }
    Ok(body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The body of a JSON request.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rows {
    rows: Vec<Vec<f64>>,
}

/// Rows of a JSON body; numbers beyond f32's range become infinite and are refused.
fn json_rows(body: &[u8], width: usize) -> Result<Vec<f32>, Failure> {
    let rows: Rows = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not {{\"rows\": [[numbers]]}}: {e}")))?;
    let mut x = Vec::with_capacity(rows.rows.len() * width);
    for (i, row) in rows.rows.iter().enumerate() {
        if row.len() != width {
            let n = row.len();
            return Err(bad(format!(
                "row {i} has {n} values, the model takes {width}"
            )));
        }
        x.extend(row.iter().map(|&v| v as f32));
    }
    Ok(x)
}

/// The answer, as `kiln predict` would write it.
fn to_json(out: &[f32], info: ModelInfo) -> Outputs {
    let rows = out.chunks_exact(info.outputs.max(1));
    if !info.classify {
        let predictions = rows.map(<[f32]>::to_vec).collect();
        return Outputs::Values { predictions };
    }
    let probabilities: Vec<Vec<f32>> = rows.map(class_probabilities).collect();
    let classes = probabilities.iter().map(|p| best_class(p)).collect();
    Outputs::Classes {
        probabilities,
        classes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(outputs: usize, classify: bool) -> ModelInfo {
        ModelInfo {
            features: 2,
            outputs,
            classify,
        }
    }

    #[test]
    fn answers_match_kiln_predict() {
        let v = serde_json::to_value(to_json(&[0.8, 0.25], info(1, true))).unwrap();
        assert_eq!(v["classes"], json!([1, 0]));
        assert_eq!(v["probabilities"][1], json!([0.75, 0.25]));
        let v = serde_json::to_string(&to_json(&[2.5, -1.0], info(1, false))).unwrap();
        assert_eq!(v, r#"{"predictions":[[2.5],[-1.0]]}"#);
    }

    #[test]
    fn bodies_are_checked() {
        let json = HeaderMap::new();
        assert_eq!(
            read_rows(&json, br#"{"rows": [[1, 2]]}"#, 2).unwrap(),
            [1.0, 2.0]
        );
        for bad in [
            &br#"{"rows": [[1]]}"#[..],
            b"{",
            b"{\"rows\": []}",
            b"{\"rows\": [[1e39, 0]]}",
        ] {
            assert_eq!(read_rows(&json, bad, 2).unwrap_err().status, 400);
        }
        let mut bin = HeaderMap::new();
        bin.insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        let body: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(read_rows(&bin, &body, 2).unwrap(), [1.0, 2.0]);
        assert_eq!(read_rows(&bin, &body[..6], 2).unwrap_err().status, 400);
        let nan: Vec<u8> = [f32::NAN, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(read_rows(&bin, &nan, 2).unwrap_err().status, 400);
    }
}
