//! `GET /api/tickets`: the caller's balances of every kind. Spends nothing.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Serialize, Serializer};
use tower_tickets::messages::{Message, negotiate};
use tower_tickets::{BalanceView, Balances, Tickets};

/// `{"upload": {"remaining", "capacity", "refill_at"}, "ai": {...}}`
/// (DESIGN.md §8), kinds in registration order. A kind at zero also carries
/// `"refusal": {"title", "detail"}`: the words its next request's 429 would
/// carry, in the client's language, so the page can say why an action is
/// disabled before the user tries it.
pub struct Answer(Vec<(String, Kind)>);

#[derive(Serialize)]
struct Kind {
    #[serde(flatten)]
    view: BalanceView,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Refusal>,
}

#[derive(Serialize)]
struct Refusal {
    title: String,
    detail: String,
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, kind)| (name, kind)))
    }
}

pub async fn balances(
    State(tickets): State<Tickets>,
    headers: HeaderMap,
    balances: Balances,
) -> Json<Answer> {
    let messages = tickets.messages();
    let language = negotiate(&headers, messages.languages());
    let kinds = balances
        .kinds
        .into_iter()
        .map(|view| {
            let refusal = (view.remaining == 0).then(|| {
                let rendered = messages.render(
                    &Message::QuotaExceeded {
                        label: view.kind.display_label(language),
                        cost: 1,
                        remaining: 0,
                        capacity: view.capacity(),
                        refill_at: view.refill_at,
                        now: balances.now,
                    },
                    language,
                );
                Refusal {
                    title: rendered.title,
                    detail: rendered.detail,
                }
            });
            (view.kind.name().to_string(), Kind { view, refusal })
        })
        .collect();
    Json(Answer(kinds))
}
