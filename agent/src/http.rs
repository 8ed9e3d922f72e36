//! One plain HTTP GET with a deadline, for the agent's own reads of other
//! servers: the leader reading its peers' windows, `recommend` reading
//! Prometheus. Errors are sentences naming the address.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// `GET uri` with `headers`; the status and the whole body, or why not
/// (no answer within `deadline`, a refused connection, a bad URI).
pub async fn get(
    uri: &str,
    headers: &[(&str, &str)],
    deadline: Duration,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = hyper::Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| format!("{uri}: {e}"))?;
    let resp = tokio::time::timeout(deadline, client.request(req))
        .await
        .map_err(|_| format!("{uri}: no answer within {} s", deadline.as_secs_f64()))?
        .map_err(|e| format!("{uri}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{uri}: {e}"))?
        .to_bytes();
    Ok((status, body))
}
