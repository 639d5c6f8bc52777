//! `POST /api/ai/generate` (costs 1 AI ticket): a stand-in for a paid AI
//! call that answers deterministic text derived from the prompt.

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tower_tickets::{Balances, Charged, Tickets};

use crate::problem::{Payload, Problems};

/// The longest prompt accepted, in characters.
const MAX_PROMPT_CHARS: usize = 2000;

/// Styles the fake model picks from.
const STYLES: [&str; 4] = ["watercolour", "pixel-art", "charcoal", "neon"];

#[derive(Deserialize)]
pub struct GenerateRequest {
    prompt: String,
}

#[derive(Serialize)]
pub struct Generated {
    prompt: String,
    result: String,
    /// The AI balance after this request's charge.
    tickets: Balances,
}

/// Answers 200 with a "generated" description of the prompt. The ticket
/// layer has already charged 1 AI ticket; malformed JSON or an empty prompt
/// answers 400, which the layer refunds.
pub async fn generate(
    State(tickets): State<Tickets>,
    Extension(charged): Extension<Charged>,
    problems: Problems,
    Payload(Json(GenerateRequest { prompt })): Payload<Json<GenerateRequest>>,
) -> Result<Json<Generated>, Response> {
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(problems.bad_request("the prompt is empty"));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(problems.bad_request(format!(
            "the prompt is longer than {MAX_PROMPT_CHARS} characters"
        )));
    }
    Ok(Json(Generated {
        result: imagine(prompt),
        prompt: prompt.to_string(),
        tickets: Balances {
            now: tickets.now(),
            kinds: charged.balances,
        },
    }))
}

/// The fake model: the same prompt always gives the same text.
fn imagine(prompt: &str) -> String {
    let seed = prompt.bytes().fold(0usize, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let style = STYLES[seed % STYLES.len()];
    format!("A {style} picture of {prompt}.")
}
