//! Random, seeded histories: what the driver applies to the model and to a
//! target's stores at once.

use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tower_tickets::store::Adjustment;

use crate::faults::{Fault, FaultKind};
use crate::model::{Cost, Model};

/// One step of a history.
#[derive(Debug, Clone)]
pub enum Op {
    /// A charge through one instance; `drop_after` polls, the future is
    /// dropped unanswered.
    Charge {
        user: usize,
        cost: Cost,
        key: Option<String>,
        instance: usize,
        drop_after: Option<usize>,
    },
    /// Refunds the outstanding receipt at this index.
    Refund {
        receipt: usize,
        instance: usize,
    },
    Adjust {
        user: usize,
        kind: usize,
        adjustment: Adjustment,
        instance: usize,
    },
    /// Moves the fake clock.
    Advance(TimeDelta),
    /// Charges of one user sent at once across the instances.
    Burst {
        user: usize,
        charges: Vec<(Cost, Option<String>)>,
    },
    Fault(Fault),
    /// Lets background work finish, then compares every user's balances
    /// (and documents) with the model.
    Quiesce,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Advance(by) => write!(f, "advance {} ms", by.num_milliseconds()),
            other => write!(f, "{other:?}"),
        }
    }
}

impl Op {
    /// The user the operation concerns, when it concerns one.
    pub fn user(&self) -> Option<usize> {
        match self {
            Op::Charge { user, .. } | Op::Adjust { user, .. } | Op::Burst { user, .. } => {
                Some(*user)
            }
            Op::Fault(fault) => fault.user(),
            _ => None,
        }
    }
}

/// What the generator may produce for a target.
pub struct Shape {
    pub users: usize,
    pub instances: usize,
    /// The faults the target takes, drawn from at random.
    pub faults: Vec<FaultKind>,
    /// Whether a charge future may be dropped after some polls.
    pub drops: bool,
}

/// Draws operations from a seed.
pub struct Generator {
    rng: StdRng,
    shape: Shape,
    /// Keys issued so far, per user, for replays.
    keys: Vec<Vec<String>>,
    next_key: u64,
}

/// One rolling period: the kinds' 24 h.
const PERIOD: TimeDelta = TimeDelta::hours(24);

impl Generator {
    pub fn new(seed: u64, shape: Shape) -> Self {
        let keys = vec![Vec::new(); shape.users];
        Self {
            rng: StdRng::seed_from_u64(seed),
            shape,
            keys,
            next_key: 0,
        }
    }

    /// The next operation, given the model (for kinds and refill times),
    /// the outstanding receipts and the time.
    pub fn next(&mut self, model: &Model, receipts: usize, now: DateTime<Utc>) -> Op {
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=44 => self.charge(model),
            45..=54 if receipts > 0 => Op::Refund {
                receipt: self.rng.gen_range(0..receipts),
                instance: self.instance(),
            },
            55..=62 => self.adjust(model),
            63..=74 => Op::Advance(self.advance(model, now)),
            75..=82 => self.burst(model),
            83..=86 if !self.shape.faults.is_empty() => {
                let i = self.rng.gen_range(0..self.shape.faults.len());
                let (users, instances) = (self.shape.users, self.shape.instances);
                let kinds = model.kinds();
                let capacity = kinds.iter().map(|k| k.capacity()).max().unwrap_or(1);
                Op::Fault(self.shape.faults[i].draw(
                    &mut self.rng,
                    (users, instances),
                    (kinds.len(), capacity),
                ))
            }
            87..=88 => Op::Quiesce,
            _ => self.charge(model),
        }
    }

    fn instance(&mut self) -> usize {
        self.rng.gen_range(0..self.shape.instances)
    }

    fn cost(&mut self, model: &Model) -> Cost {
        let kinds = model.kinds();
        let first = self.rng.gen_range(0..kinds.len());
        let mut cost = vec![(first, self.amount(model, first))];
        if self.rng.gen_bool(0.25) {
            let second = (first + self.rng.gen_range(1..kinds.len())) % kinds.len();
            cost.push((second, self.amount(model, second)));
        }
        cost
    }

    /// Mostly one ticket, sometimes up to the capacity.
    fn amount(&mut self, model: &Model, kind: usize) -> u32 {
        if self.rng.gen_bool(0.7) {
            1
        } else {
            self.rng.gen_range(1..=model.kinds()[kind].capacity())
        }
    }

    /// No key, a new key, or (a replay) a key the user already sent.
    fn key(&mut self, user: usize) -> Option<String> {
        match self.rng.gen_range(0..10) {
            0..=5 => None,
            6..=7 if !self.keys[user].is_empty() => {
                let i = self.rng.gen_range(0..self.keys[user].len());
                Some(self.keys[user][i].clone())
            }
            _ => {
                self.next_key += 1;
                let key = format!("key-{}", self.next_key);
                self.keys[user].push(key.clone());
                Some(key)
            }
        }
    }

    fn charge(&mut self, model: &Model) -> Op {
        let user = self.rng.gen_range(0..self.shape.users);
        let drop_after =
            (self.shape.drops && self.rng.gen_bool(0.03)).then(|| self.rng.gen_range(0..4));
        Op::Charge {
            user,
            cost: self.cost(model),
            key: self.key(user),
            instance: self.instance(),
            drop_after,
        }
    }

    fn adjust(&mut self, model: &Model) -> Op {
        let kind = self.rng.gen_range(0..model.kinds().len());
        let amount = self.rng.gen_range(0..=2 * model.kinds()[kind].capacity());
        Op::Adjust {
            user: self.rng.gen_range(0..self.shape.users),
            kind,
            adjustment: if self.rng.gen_bool(0.5) {
                Adjustment::Grant(amount)
            } else {
                Adjustment::Set(amount)
            },
            instance: self.instance(),
        }
    }

    fn burst(&mut self, model: &Model) -> Op {
        let user = self.rng.gen_range(0..self.shape.users);
        let size = self.rng.gen_range(2..=8);
        let charges = (0..size)
            .map(|_| (self.cost(model), self.key(user)))
            .collect();
        Op::Burst { user, charges }
    }

    /// The period ± 1 ms, whole days, a few minutes to hours, or to the
    /// calendar kind's next refill ± 1 ms (which crosses the Europe/Paris
    /// daylight-saving changes as days go by).
    fn advance(&mut self, model: &Model, now: DateTime<Utc>) -> TimeDelta {
        let ms = TimeDelta::milliseconds(1);
        match self.rng.gen_range(0..6) {
            0 => PERIOD - ms,
            1 => PERIOD + ms,
            2 => PERIOD * self.rng.gen_range(1..=3),
            3 => TimeDelta::minutes(self.rng.gen_range(1..=600)),
            _ => {
                let calendar = model
                    .kinds()
                    .iter()
                    .map(|k| k.refill_schedule())
                    .find(|r| matches!(r, tower_tickets::Refill::Calendar { .. }))
                    .expect("a calendar kind");
                let next = calendar.next_after(now) - now;
                next + ms * self.rng.gen_range(-1..=1)
            }
        }
        .max(TimeDelta::milliseconds(1))
    }
}
