//! `GET /` and `GET /assets/*`: the page a person uses (sign up, live
//! counters, upload, AI prompt), from `examples/demo/assets/`.
//!
//! The files are built into the binary, and the page loads nothing from
//! anywhere else (no CDN, no web font), so it works on an offline machine.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::routing::get;

/// Path, content type and content of every file the page is made of.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "/assets/style.css",
        "text/css; charset=utf-8",
        include_str!("assets/style.css"),
    ),
];

/// Everything comes from the demo itself; image previews are `blob:` URLs.
const POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; \
                      base-uri 'none'; frame-ancestors 'none'";

/// The page's routes, to merge into the demo's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    ASSETS
        .into_iter()
        .fold(Router::new(), |router, (path, content_type, content)| {
            router.route(
                path,
                get(move || async move {
                    (
                        [
                            (CONTENT_TYPE, content_type),
                            // A reload always shows the page this binary serves.
                            (CACHE_CONTROL, "no-cache"),
                            (CONTENT_SECURITY_POLICY, POLICY),
                        ],
                        content,
                    )
                }),
            )
        })
}
