//! The built-in page at `/ui`: one HTML page, its script and style, and the
//! vendored chart library (uPlot, MIT, `agent/ui/vendor/uplot/`), all
//! embedded in the binary so the page works offline. The page reads the
//! same JSON endpoints a user can (`/v1/chains`, `/v1/chains/{c}/history`,
//! `/v1/decisions`, `/v1/recommendations`); nothing here computes a value.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Everything the page loads comes from the agent itself: a script or style
/// from elsewhere would be refused by the browser (and show as a console
/// error in the page's test).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'";

/// One embedded file: its path under `/ui`, content type and bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/ui/",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "/ui/app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
    (
        "/ui/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "/ui/vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/vendor/uplot/uPlot.min.css"),
    ),
    (
        "/ui/vendor/LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../../ui/vendor/uplot/LICENSE"),
    ),
];

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page's routes, merged into the API's router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route("/ui", get(|| async { Redirect::permanent("/ui/") }));
    for (path, content_type, body) in FILES {
        router = router.route(path, get(move || async move { file(content_type, body) }));
    }
    router
}

#[cfg(test)]
mod tests {
    // Test code: a failed step stops the test with its error.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get_path(path: &str) -> Response {
        routes::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_file_the_page_references_is_served_from_the_binary() {
        let page = get_path("/ui/").await;
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'"));
        let html = String::from_utf8(
            to_bytes(page.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        // Every src= and href= in the page is one of ours (no CDN).
        let mut referenced = 0;
        for attr in ["src=\"", "href=\""] {
            for part in html.split(attr).skip(1) {
                let target = part.split('"').next().unwrap();
                assert!(
                    target.starts_with("/ui/"),
                    "{target} is not served by the agent"
                );
                let r = get_path(target).await;
                assert_eq!(r.status(), StatusCode::OK, "{target}");
                referenced += 1;
            }
        }
        assert!(referenced >= 4, "{referenced} files referenced");
        assert_eq!(
            get_path("/ui").await.headers()[header::LOCATION],
            "/ui/",
            "/ui leads to the page"
        );
    }
}
