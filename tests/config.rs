//! Configuration that cannot work is refused when the registry or the layer
//! is built, with a message that says what to change.

use std::time::Duration;

use tower_tickets::{ConfigError, Cost, Refill, TicketKind, Tickets};

fn registry() -> Tickets {
    Tickets::builder()
        .kind(TicketKind::new("upload", 5))
        .kind(TicketKind::new("ai", 3))
        .build()
        .unwrap()
}

fn build_error(kinds: Vec<TicketKind>) -> ConfigError {
    kinds
        .into_iter()
        .fold(Tickets::builder(), |b, k| b.kind(k))
        .build()
        .unwrap_err()
}

fn layer_error(cost: Cost) -> ConfigError {
    registry().layer(cost).unwrap_err()
}

#[test]
fn zero_kinds_are_refused() {
    let error = build_error(vec![]);
    assert_eq!(error, ConfigError::NoKinds);
    assert!(error.to_string().contains("TicketKind::new"), "{error}");
}

#[test]
fn a_period_of_zero_is_refused() {
    let error = build_error(vec![
        TicketKind::new("upload", 5).refill(Refill::rolling(Duration::ZERO)),
    ]);
    assert_eq!(
        error,
        ConfigError::ZeroPeriod {
            kind: "upload".into()
        }
    );
    assert!(error.to_string().contains("at least 1 ms"), "{error}");
}

#[test]
fn impossible_kinds_are_refused() {
    assert_eq!(
        build_error(vec![TicketKind::new("upload", 0)]),
        ConfigError::ZeroCapacity {
            kind: "upload".into()
        }
    );
    assert_eq!(
        build_error(vec![TicketKind::new("ai", 3).initial(4)]),
        ConfigError::InitialAboveCapacity {
            kind: "ai".into(),
            initial: 4,
            capacity: 3
        }
    );
    assert_eq!(
        build_error(vec![TicketKind::new("ai", 3), TicketKind::new("ai", 5)]),
        ConfigError::DuplicateKind { name: "ai".into() }
    );
    for name in ["", "Upload", "up load", "a\"b", &"x".repeat(33)] {
        assert_eq!(
            build_error(vec![TicketKind::new(name, 1)]),
            ConfigError::InvalidKindName { name: name.into() }
        );
    }
}

#[test]
fn a_cost_above_capacity_is_refused_with_the_reason() {
    let error = layer_error(Cost::of("ai", 4));
    assert_eq!(
        error,
        ConfigError::CostAboveCapacity {
            kind: "ai".into(),
            cost: 4,
            capacity: 3
        }
    );
    assert!(
        error.to_string().contains("no refill could ever pay it"),
        "{error}"
    );
}

#[test]
fn an_unknown_kind_is_refused_naming_the_known_ones() {
    let error = layer_error(Cost::of("video", 1));
    assert!(matches!(error, ConfigError::UnknownKind { .. }));
    assert!(
        error.to_string().contains("known kinds: upload, ai"),
        "{error}"
    );
}

#[test]
fn degenerate_costs_are_refused() {
    assert_eq!(
        layer_error(Cost::of("upload", 0)),
        ConfigError::ZeroAmount {
            kind: "upload".into()
        }
    );
    assert_eq!(
        layer_error(Cost::of("upload", 1).and("upload", 1)),
        ConfigError::RepeatedKindInCost {
            kind: "upload".into()
        }
    );
}

#[test]
fn valid_costs_build() {
    let tickets = registry();
    assert!(tickets.layer(Cost::of("upload", 5)).is_ok());
    assert!(tickets.layer(Cost::of("upload", 1).and("ai", 3)).is_ok());
}
