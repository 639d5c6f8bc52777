//! The background task that fetches Google's signing keys: at start, when
//! their `max-age` runs out, sooner after a failure, and when a request
//! meets an unknown key id (see [`KeyCache`]). Requests never wait on it.

use std::sync::Arc;
use std::time::Duration;

use http::header::CACHE_CONTROL;
use tokio::task::JoinHandle;

use super::key_cache::{Fetch, Fetched, KeyCache};
use super::key_set::{max_age, parse_keys};

/// The longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest key document read (Google's is about 4 KiB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The refresher task; stopped when the last `FirebaseIdentity` clone that
/// shares it is dropped.
pub(super) struct Refresher(JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Refresher {
    /// Starts fetching `url` into `cache` on the current Tokio runtime.
    pub(super) fn start(
        cache: Arc<KeyCache>,
        client: reqwest::Client,
        url: String,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        Self(runtime.spawn(async move {
            loop {
                let wait = cache.fetched(fetch(&client, &url).await);
                // Either the keys' time is up or a request asks for them.
                let _ = tokio::time::timeout(wait, cache.refetch_asked()).await;
            }
        }))
    }
}

/// An HTTP client for the key server. It keeps no idle connection: fetches
/// come hours apart, and each one then finds out afresh whether the server
/// can be reached.
pub(super) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .pool_max_idle_per_host(0)
        .build()
}

/// One fetch of the key document.
async fn fetch(client: &reqwest::Client, url: &str) -> Fetch {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let max_age = response
        .headers()
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "GET {url}: the key document is larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let keys = parse_keys(&body).map_err(|e| format!("GET {url}: {e}"))?;
    tracing::debug!(
        url,
        keys = keys.len(),
        ?max_age,
        "fetched Firebase's signing keys"
    );
    Ok(Fetched { keys, max_age })
}
