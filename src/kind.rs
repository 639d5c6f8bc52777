//! Ticket kinds: independent pools of tickets (`upload`, `ai`, ...).

use std::sync::Arc;

use crate::refill::Refill;

/// What a kind does when its store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailMode {
    /// Refuse with 503 (the default: tickets often guard paid work).
    #[default]
    Closed,
    /// Let the request through uncharged; the event is logged.
    Open,
}

/// One pool of tickets and its rules.
///
/// ```
/// use std::time::Duration;
/// use tower_tickets::{Refill, TicketKind};
///
/// let upload = TicketKind::new("upload", 5);
/// let ai = TicketKind::new("ai", 3)
///     .label("AI")
///     .refill(Refill::rolling(Duration::from_secs(24 * 3600)))
///     .fields("aiTicketCount", "lastAiTicketRefill");
/// assert_eq!(upload.count_field(), "ticketCount");
/// assert_eq!(ai.initial_balance(), 3);
/// ```
///
/// Kinds are checked when the [`Tickets`](crate::Tickets) registry is built:
/// a capacity or period of zero, or an initial balance above capacity, is a
/// [`ConfigError`](crate::ConfigError).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketKind {
    name: Arc<str>,
    label: Arc<str>,
    /// Labels for particular languages: `(primary tag, label)`.
    translated_labels: Vec<(Arc<str>, Arc<str>)>,
    capacity: u32,
    initial: Option<u32>,
    refill: Refill,
    count_field: Arc<str>,
    refill_field: Arc<str>,
    fail_mode: FailMode,
}

impl TicketKind {
    /// A kind named `name` (used in keys, headers and problem bodies) whose
    /// refill brings the balance up to `capacity`.
    ///
    /// Defaults: the initial balance is the capacity, the refill is rolling
    /// every 24 h, the store fails closed, and the Firestore fields are the
    /// reference app's: `ticketCount`/`lastTicketRefill` for `upload`,
    /// `aiTicketCount`/`lastAiTicketRefill` for `ai`, and
    /// `{name}TicketCount`/`last{Name}TicketRefill` for any other name.
    pub fn new(name: impl Into<String>, capacity: u32) -> Self {
        let name: String = name.into();
        let (count_field, refill_field) = default_fields(&name);
        Self {
            label: Arc::from(name.as_str()),
            translated_labels: Vec::new(),
            name: Arc::from(name),
            capacity,
            initial: None,
            refill: Refill::default(),
            count_field: Arc::from(count_field),
            refill_field: Arc::from(refill_field),
            fail_mode: FailMode::Closed,
        }
    }

    /// The word used for this kind in messages ("No AI tickets left").
    /// Defaults to the name.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Arc::from(label.into());
        self
    }

    /// The word used for this kind in messages of one language, given by its
    /// primary tag: `.label_in("fr", "d'envoi")` makes the French refusal
    /// read "Plus de tickets d'envoi". Other languages use the
    /// [`label`](Self::label).
    pub fn label_in(mut self, language: &str, label: impl Into<String>) -> Self {
        let language = language.to_ascii_lowercase();
        self.translated_labels.retain(|(l, _)| **l != *language);
        self.translated_labels
            .push((Arc::from(language), Arc::from(label.into())));
        self
    }

    /// The balance a new user starts with (defaults to the capacity).
    pub fn initial(mut self, initial: u32) -> Self {
        self.initial = Some(initial);
        self
    }

    /// The refill schedule (defaults to rolling every 24 h).
    pub fn refill(mut self, refill: Refill) -> Self {
        self.refill = refill;
        self
    }

    /// The Firestore field names of the balance and of the last refill
    /// timestamp.
    pub fn fields(
        mut self,
        count_field: impl Into<String>,
        refill_field: impl Into<String>,
    ) -> Self {
        self.count_field = Arc::from(count_field.into());
        self.refill_field = Arc::from(refill_field.into());
        self
    }

    /// What to do when the store cannot answer (defaults to
    /// [`FailMode::Closed`]).
    pub fn on_store_error(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// The kind's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind's name as a shared string, cheap to clone into keys.
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The word used in messages of `language` (a primary tag such as
    /// `"fr"`).
    pub fn display_label(&self, language: &str) -> &str {
        self.translated_labels
            .iter()
            .find(|(l, _)| l.eq_ignore_ascii_case(language))
            .map_or(&*self.label, |(_, label)| label)
    }

    /// What a refill brings the balance up to.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The balance a new user starts with.
    pub fn initial_balance(&self) -> u32 {
        self.initial.unwrap_or(self.capacity)
    }

    /// The refill schedule.
    pub fn refill_schedule(&self) -> &Refill {
        &self.refill
    }

    /// The Firestore field holding the balance.
    pub fn count_field(&self) -> &str {
        &self.count_field
    }

    /// The Firestore field holding the last refill timestamp.
    pub fn refill_field(&self) -> &str {
        &self.refill_field
    }

    /// What happens when the store cannot answer.
    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }
}

fn default_fields(name: &str) -> (String, String) {
    match name {
        "upload" => ("ticketCount".into(), "lastTicketRefill".into()),
        "ai" => ("aiTicketCount".into(), "lastAiTicketRefill".into()),
        other => {
            let mut capitalized = other.to_string();
            if let Some(first) = capitalized.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            (
                format!("{other}TicketCount"),
                format!("last{capitalized}TicketRefill"),
            )
        }
    }
}
