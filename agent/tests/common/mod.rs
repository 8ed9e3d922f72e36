//! The HTTP-level fake Kubernetes API server's plumbing, shared by the
//! tests that drive kube clients through `tower-test`.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<http::Request<Body>, http::Response<Body>>;
pub type Responder = tower_test::mock::SendResponse<http::Response<Body>>;

/// One request as the fake server saw it (not every test reads every field).
#[allow(dead_code)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The JSON body (`Null` when there is none).
    pub body: Value,
}

/// Reads the next request the client sends.
pub async fn next_request(handle: &mut Handle) -> Option<(Seen, Responder)> {
    let (req, send) = handle.next_request().await?;
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let seen = Seen {
        method,
        path,
        query,
        content_type,
        body,
    };
    Some((seen, send))
}

/// Answers with `status` and a JSON body.
pub fn respond(send: Responder, status: u16, body: Vec<u8>) {
    send.send_response(
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap(),
    );
}
