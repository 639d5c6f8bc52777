//! A minimal priced app over any store: the uid comes from the `x-user-id`
//! header (development identity, enough for tests), `POST /upload` costs one
//! upload ticket (capacity 5), `POST /ai` one AI ticket (capacity 3, fail
//! open).

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode};
use axum::routing::post;
use tower::ServiceExt;
use tower_tickets::identity::HeaderIdentity;
use tower_tickets::store::TicketStore;
use tower_tickets::{Cost, FailMode, TicketKind, Tickets};

pub const USER_HEADER: &str = "x-user-id";

pub fn tickets(store: impl TicketStore) -> Tickets {
    Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .kind(TicketKind::new("ai", 3).on_store_error(FailMode::Open))
        .store(store)
        .identity(HeaderIdentity::new(HeaderName::from_static(USER_HEADER)))
        .build()
        .expect("valid kinds")
}

pub fn router(tickets: &Tickets) -> Router {
    Router::new()
        .route(
            "/upload",
            post(|| async { StatusCode::CREATED })
                .route_layer(tickets.layer(Cost::of("upload", 1)).unwrap()),
        )
        .route(
            "/ai",
            post(|| async { StatusCode::OK })
                .route_layer(tickets.layer(Cost::of("ai", 1)).unwrap()),
        )
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
}

/// Sends `POST path` as the user whose raw header value is `uid`.
pub async fn post_as(router: &Router, path: &str, uid: &[u8]) -> Reply {
    let request = Request::post(path)
        .header(
            USER_HEADER,
            HeaderValue::from_bytes(uid).expect("a header value"),
        )
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    Reply {
        status: response.status(),
        content_type: header("content-type"),
        retry_after: header("retry-after"),
    }
}
