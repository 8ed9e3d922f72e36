//! The HTTP-level fake Kubernetes API server's plumbing, shared by the
//! tests that drive kube clients through `tower-test`.

// Test code: a failed setup step stops the test with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

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

/// One expected request and the answer to give.
pub struct Expect {
    pub method: &'static str,
    pub path: &'static str,
    pub status: u16,
    pub answer: Value,
}

/// What the fake server saw: (method, path, query, content type, body).
pub type SeenLog = Arc<Mutex<Vec<(String, String, String, String, Value)>>>;

#[allow(dead_code)]
pub fn fake(expects: Vec<Expect>) -> (Client, SeenLog, tokio::task::JoinHandle<()>) {
    let (service, mut handle): (_, Handle) = tower_test::mock::pair();
    let seen: SeenLog = Arc::default();
    let log = seen.clone();
    let task = tokio::spawn(async move {
        for e in expects {
            let Some((req, send)) = next_request(&mut handle).await else {
                panic!("expected {} {}", e.method, e.path)
            };
            assert_eq!(
                (req.method.as_str(), req.path.as_str()),
                (e.method, e.path),
                "unexpected request"
            );
            log.lock()
                .unwrap()
                .push((req.method, req.path, req.query, req.content_type, req.body));
            respond(send, e.status, serde_json::to_vec(&e.answer).unwrap());
        }
    });
    (Client::new(service, "default"), seen, task)
}

#[allow(dead_code)]
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}
