//! What refusals say, in the client's language.
//!
//! English and French ship built in ([`DefaultMessages`]); the language is
//! picked from `Accept-Language`. An app replaces the catalogue by
//! implementing [`Messages`].

use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, Timelike, Utc};
use http::HeaderMap;
use http::header::ACCEPT_LANGUAGE;

use crate::ratelimit_headers::seconds_until;

/// A refusal to put into words.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Message<'a> {
    /// A kind cannot pay the cost (429).
    QuotaExceeded {
        /// The kind's label ("upload", "AI").
        label: &'a str,
        /// Tickets the request needs.
        cost: u32,
        /// Tickets left.
        remaining: u32,
        /// The kind's capacity.
        capacity: u32,
        /// When the refill that makes the request affordable comes.
        refill_at: DateTime<Utc>,
        /// The instant of the decision.
        now: DateTime<Utc>,
    },
    /// No usable identity (401).
    Unauthenticated {
        /// What is wrong, in English.
        reason: &'a str,
    },
    /// The store cannot decide (503).
    StoreUnavailable,
    /// The identity cannot be checked yet, e.g. the keys that sign tokens
    /// are still being fetched (503).
    IdentityUnavailable,
    /// The request cannot be priced or carries a bad header (400).
    BadRequest {
        /// What is wrong, in English.
        reason: &'a str,
    },
    /// The request's `Idempotency-Key` already paid for this request, which
    /// finished; it is not run again (409).
    AlreadyProcessed,
    /// The request's `Idempotency-Key` already paid for this request, which
    /// is still running (409, with `Retry-After`).
    InProgress,
    /// The request's `Idempotency-Key` already paid for another request
    /// (422).
    KeyReused,
}

/// A message put into words: a short `title` and a `detail` sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Short summary, e.g. "No upload tickets left".
    pub title: String,
    /// What happened and what to do, e.g. "You have used all 5 upload
    /// tickets. They refill at 10:00 UTC, in 3 h 12 min."
    pub detail: String,
}

/// A message catalogue.
pub trait Messages: Send + Sync + 'static {
    /// The languages the catalogue speaks, as lowercase primary tags
    /// (`"en"`, `"fr"`); the first is the fallback.
    fn languages(&self) -> &[&'static str];

    /// Puts `message` into words in `language` (one of [`Self::languages`]).
    fn render(&self, message: &Message<'_>, language: &str) -> Rendered;
}

/// English and French.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultMessages;

impl Messages for DefaultMessages {
    fn languages(&self) -> &[&'static str] {
        &["en", "fr"]
    }

    fn render(&self, message: &Message<'_>, language: &str) -> Rendered {
        let french = language == "fr";
        match *message {
            Message::QuotaExceeded {
                label,
                cost,
                remaining,
                capacity,
                refill_at,
                now,
            } => quota_exceeded(french, label, cost, remaining, capacity, refill_at, now),
            Message::Unauthenticated { reason } if french => Rendered {
                title: "Identification requise".into(),
                detail: format!("Connectez-vous pour continuer ({reason})."),
            },
            Message::Unauthenticated { reason } => Rendered {
                title: "Sign-in required".into(),
                detail: format!("Sign in to continue ({reason})."),
            },
            Message::StoreUnavailable if french => Rendered {
                title: "Service momentanément indisponible".into(),
                detail: "Vos tickets ne peuvent pas être vérifiés pour le moment. Réessayez dans quelques secondes.".into(),
            },
            Message::StoreUnavailable => Rendered {
                title: "Temporarily unavailable".into(),
                detail: "Your tickets cannot be checked right now. Try again in a few seconds."
                    .into(),
            },
            Message::IdentityUnavailable if french => Rendered {
                title: "Identification momentanément impossible".into(),
                detail: "Votre identité ne peut pas être vérifiée pour le moment. Réessayez dans quelques secondes.".into(),
            },
            Message::IdentityUnavailable => Rendered {
                title: "Sign-in temporarily unavailable".into(),
                detail: "Your sign-in cannot be checked right now. Try again in a few seconds."
                    .into(),
            },
            Message::AlreadyProcessed if french => Rendered {
                title: "Requête déjà traitée".into(),
                detail: "Une requête avec cette Idempotency-Key a déjà été payée et traitée ; \
                         elle n'est pas exécutée de nouveau."
                    .into(),
            },
            Message::AlreadyProcessed => Rendered {
                title: "Request already processed".into(),
                detail: "A request with this Idempotency-Key was already paid for and processed; \
                         it is not run again."
                    .into(),
            },
            Message::InProgress if french => Rendered {
                title: "Requête en cours".into(),
                detail: "Une requête avec cette Idempotency-Key est encore en cours ; \
                         réessayez dans un instant."
                    .into(),
            },
            Message::InProgress => Rendered {
                title: "Request in progress".into(),
                detail: "A request with this Idempotency-Key is still in progress; \
                         try again in a moment."
                    .into(),
            },
            Message::KeyReused if french => Rendered {
                title: "Idempotency-Key déjà utilisée".into(),
                detail: "Cette Idempotency-Key a déjà servi à une autre requête ; \
                         envoyez-en une nouvelle pour chaque requête."
                    .into(),
            },
            Message::KeyReused => Rendered {
                title: "Idempotency-Key already used".into(),
                detail: "This Idempotency-Key was already used for another request; \
                         send a new one with each request."
                    .into(),
            },
            Message::BadRequest { reason } if french => Rendered {
                title: "Requête invalide".into(),
                detail: format!("La requête ne peut pas être traitée ({reason})."),
            },
            Message::BadRequest { reason } => Rendered {
                title: "Bad request".into(),
                detail: format!("The request cannot be processed ({reason})."),
            },
        }
    }
}

fn quota_exceeded(
    french: bool,
    label: &str,
    cost: u32,
    remaining: u32,
    capacity: u32,
    refill_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Rendered {
    // Refusals are rendered on every 429, so each sentence is written into
    // one buffer, with no format string parsed at run time.
    let on_day = (refill_at.date_naive() != now.date_naive()).then_some(Day(refill_at));
    let at = ClockTime(refill_at);
    let wait = Wait(seconds_until(refill_at, now));
    let plural = |n: u32| if n == 1 { "" } else { "s" };
    let mut detail = String::with_capacity(128);
    // Writing into a String cannot fail.
    let _ = if french {
        if remaining == 0 {
            write!(detail, "Vous avez utilisé vos {capacity} tickets {label}.")
        } else {
            write!(
                detail,
                "Cette action demande {cost} ticket{} {label} et il vous en reste {remaining}.",
                plural(cost)
            )
        }
        .and_then(|()| match on_day {
            Some(day) => write!(
                detail,
                " Ils seront rechargés le {day} à {at}, dans {wait}."
            ),
            None => write!(detail, " Ils seront rechargés à {at}, dans {wait}."),
        })
    } else {
        if remaining == 0 {
            write!(detail, "You have used all {capacity} {label} tickets.")
        } else {
            write!(
                detail,
                "This needs {cost} {label} ticket{} and you have {remaining} left.",
                plural(cost)
            )
        }
        .and_then(|()| match on_day {
            Some(day) => write!(detail, " They refill on {day} at {at}, in {wait}."),
            None => write!(detail, " They refill at {at}, in {wait}."),
        })
    };
    let title = if french {
        ["Plus de tickets ", label].concat()
    } else {
        ["No ", label, " tickets left"].concat()
    };
    Rendered { title, detail }
}

/// "2026-01-01": the UTC date of an instant.
#[derive(Clone, Copy)]
pub(crate) struct Day(pub(crate) DateTime<Utc>);

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = self.0.date_naive();
        write!(
            f,
            "{:04}-{:02}-{:02}",
            date.year(),
            date.month(),
            date.day()
        )
    }
}

/// "10:00 UTC": the UTC time of an instant, to the minute.
struct ClockTime(DateTime<Utc>);

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02} UTC", self.0.hour(), self.0.minute())
    }
}

/// A wait of so many seconds: "3 h 12 min", "45 min", "30 s". It is given
/// in the whole seconds of `Retry-After` (rounded up), and beyond a minute
/// rounds up to the minute: the message never promises tickets sooner than
/// they come, nor sooner than the headers say.
struct Wait(u64);

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        if secs < 60 {
            return write!(f, "{secs} s");
        }
        let minutes = secs.div_ceil(60);
        match (minutes / 60, minutes % 60) {
            (0, m) => write!(f, "{m} min"),
            (h, 0) => write!(f, "{h} h"),
            (h, m) => write!(f, "{h} h {m} min"),
        }
    }
}

/// The best of `supported` for the request's `Accept-Language`, or the
/// first of `supported` when nothing matches.
pub fn negotiate<'a>(headers: &HeaderMap, supported: &[&'a str]) -> &'a str {
    let fallback = supported.first().copied().unwrap_or("en");
    let Some(header) = headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()) else {
        return fallback;
    };
    let mut best: Option<(&'a str, f32)> = None;
    for range in header.split(',') {
        let mut parts = range.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let quality = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let primary = tag.split('-').next().unwrap_or("");
        let Some(found) = supported.iter().find(|s| s.eq_ignore_ascii_case(primary)) else {
            continue;
        };
        if quality > 0.0 && best.is_none_or(|(_, q)| quality > q) {
            best = Some((found, quality));
        }
    }
    best.map_or(fallback, |(lang, _)| lang)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_LANGUAGE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn negotiates_by_quality() {
        let supported = ["en", "fr"];
        assert_eq!(negotiate(&HeaderMap::new(), &supported), "en");
        assert_eq!(negotiate(&with_accept("fr-FR,fr;q=0.9"), &supported), "fr");
        assert_eq!(
            negotiate(&with_accept("de, fr;q=0.5, en;q=0.8"), &supported),
            "en"
        );
        assert_eq!(negotiate(&with_accept("de"), &supported), "en");
        assert_eq!(negotiate(&with_accept("fr;q=0"), &supported), "en");
    }

    /// The refusal of one upload to a user who spent all 5.
    fn out_of_uploads(refill_at: DateTime<Utc>, now: DateTime<Utc>) -> Message<'static> {
        Message::QuotaExceeded {
            label: "upload",
            cost: 1,
            remaining: 0,
            capacity: 5,
            refill_at,
            now,
        }
    }

    #[test]
    fn quota_message_names_count_time_and_wait() {
        let now = "2026-01-01T06:48:00Z".parse().unwrap();
        let msg = out_of_uploads("2026-01-01T10:00:00Z".parse().unwrap(), now);
        let en = DefaultMessages.render(&msg, "en");
        assert_eq!(en.title, "No upload tickets left");
        assert_eq!(
            en.detail,
            "You have used all 5 upload tickets. They refill at 10:00 UTC, in 3 h 12 min."
        );
        let fr = DefaultMessages.render(&msg, "fr");
        assert_eq!(fr.title, "Plus de tickets upload");
        assert!(fr.detail.contains("dans 3 h 12 min"), "{}", fr.detail);
    }

    #[test]
    fn a_wait_in_seconds_is_the_retry_after_not_less() {
        let refill_at: DateTime<Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
        let detail = |before_ms: i64| {
            let now = refill_at - chrono::TimeDelta::milliseconds(before_ms);
            DefaultMessages
                .render(&out_of_uploads(refill_at, now), "en")
                .detail
        };
        assert!(detail(2_300).ends_with("in 3 s."), "{}", detail(2_300));
        assert!(detail(2_000).ends_with("in 2 s."), "{}", detail(2_000));
        assert!(detail(60_001).ends_with("in 2 min."), "{}", detail(60_001));
    }

    #[test]
    fn waits_round_up_to_the_minute() {
        let wait = |secs| Wait(secs).to_string();
        assert_eq!(wait(0), "0 s");
        assert_eq!(wait(59), "59 s");
        assert_eq!(wait(60), "1 min");
        assert_eq!(wait(61), "2 min");
        assert_eq!(wait(86_399), "24 h");
        assert_eq!(wait(3 * 3600 + 11 * 60 + 1), "3 h 12 min");
    }
}
