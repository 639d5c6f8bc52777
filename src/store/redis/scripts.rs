//! The Lua scripts, built once per process, and the arguments they take.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use redis::{Cmd, RedisWrite, Script, ToRedisArgs};

use super::builder::TimeSource;
use super::library::Library;
use crate::kind::TicketKind;
use crate::refill::Refill;

/// The helpers every script (and the charge library) shares.
pub(crate) const COMMON: &str = include_str!("lua/common.lua");

/// Every script, each prefixed with the shared Lua functions.
pub(crate) struct Scripts {
    pub(crate) charge: Script,
    pub(crate) refund: Script,
    pub(crate) finish: Script,
    pub(crate) balances: Script,
    pub(crate) adjust: Script,
    pub(crate) seed: Script,
}

/// Where the truth about users' balances lives. It decides when an idle
/// user's hash may expire (`save` in `lua/common.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    /// Redis holds the only copy: an idle user is forgotten only when that
    /// loses nothing.
    InRedis,
    /// Redis caches a source of truth that reloads a forgotten user.
    InSource,
}

impl Truth {
    /// The scripts for this truth, built (and hashed) once; `EVALSHA`
    /// reuses the hashes.
    pub(crate) fn scripts(self) -> &'static Scripts {
        static IN_REDIS: LazyLock<Scripts> = LazyLock::new(|| Scripts::new(Truth::InRedis));
        static IN_SOURCE: LazyLock<Scripts> = LazyLock::new(|| Scripts::new(Truth::InSource));
        match self {
            Truth::InRedis => &IN_REDIS,
            Truth::InSource => &IN_SOURCE,
        }
    }
}

impl Scripts {
    fn new(truth: Truth) -> Self {
        let prelude = format!(
            "local REDIS_HOLDS_THE_TRUTH = {}\n{COMMON}",
            truth == Truth::InRedis
        );
        let script = |body: &str| Script::new(&format!("{prelude}{body}"));
        Self {
            // A script keeps nothing from call to call: it reads its plan
            // every time (the library keeps plans; see library.rs).
            charge: script(concat!(
                "local CHARGE_PLANS = nil\n",
                include_str!("lua/charge.lua")
            )),
            refund: script(include_str!("lua/refund.lua")),
            finish: script(include_str!("lua/finish.lua")),
            balances: script(include_str!("lua/balances.lua")),
            adjust: script(include_str!("lua/adjust.lua")),
            seed: script(include_str!("lua/seed.lua")),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.charge,
            &self.refund,
            &self.finish,
            &self.balances,
            &self.adjust,
            &self.seed,
        ]
    }
}

/// What a call runs: a script, by `EVALSHA`, or the charge library's
/// function, by `FCALL` (see `library.rs`).
#[derive(Clone, Copy)]
pub(crate) enum Procedure {
    Script(&'static Script),
    Function(&'static Library),
}

impl From<&'static Script> for Procedure {
    fn from(script: &'static Script) -> Self {
        Self::Script(script)
    }
}

/// One call of a shared script or function. Arguments are written straight
/// into the command's single buffer (a `ScriptInvocation` would allocate
/// one per argument, then copy them all: most of a charge's client-side
/// cost).
pub(crate) struct ScriptCall {
    pub(crate) procedure: Procedure,
    pub(crate) command: Cmd,
}

impl ScriptCall {
    /// A call of `procedure` on `keys`; arguments follow with
    /// [`ScriptCall::arg`].
    pub(crate) fn new<'a>(
        procedure: impl Into<Procedure>,
        keys: impl IntoIterator<Item = &'a String, IntoIter: Clone>,
    ) -> Self {
        let procedure = procedure.into();
        let keys = keys.into_iter();
        let mut command = Cmd::with_capacity(24, 256);
        match procedure {
            Procedure::Script(script) => command.arg("EVALSHA").arg(script.get_hash()),
            Procedure::Function(library) => command.arg("FCALL").arg(library.function()),
        };
        command.arg(keys.clone().count());
        for key in keys {
            command.arg(key);
        }
        Self { procedure, command }
    }

    /// Appends an `ARGV` value.
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.command.arg(arg);
        self
    }
}

/// A calendar refill can land up to 25 h after the previous one (the day a
/// daylight-saving change adds an hour).
const LONGEST_CALENDAR_PERIOD: Duration = Duration::from_secs(25 * 3600);

/// The longest time between two refills of `kind`.
fn longest_period(kind: &TicketKind) -> Duration {
    match kind.refill_schedule() {
        Refill::Rolling { period } => *period,
        Refill::Calendar { .. } => LONGEST_CALENDAR_PERIOD,
    }
}

/// `duration` in whole milliseconds, as the scripts take it.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What every call of one store shares: where decisions take their time,
/// where the truth lives and how long idle users are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallContext {
    pub(crate) time_source: TimeSource,
    pub(crate) truth: Truth,
    pub(crate) idle_periods: u32,
}

impl CallContext {
    /// The scripts this store calls.
    pub(crate) fn scripts(&self) -> &'static Scripts {
        self.truth.scripts()
    }

    /// The decision time argument: the caller's instant in Unix ms, or `''`
    /// for the Redis server's clock.
    pub(crate) fn time_arg(&self, now: DateTime<Utc>) -> String {
        self.time_ms(now)
            .map_or_else(String::new, |ms| ms.to_string())
    }

    /// The decision time: the caller's instant in Unix ms, or `None` for
    /// the Redis server's clock.
    pub(crate) fn time_ms(&self, now: DateTime<Utc>) -> Option<i64> {
        match self.time_source {
            TimeSource::Redis => None,
            TimeSource::Caller => Some(now.timestamp_millis()),
        }
    }

    /// How long (ms) a user's hash outlives its last refill: a few of the
    /// longest refill periods among `kinds`, so that by the time it expires a
    /// refill is due anyway (`save` in `lua/common.lua` keeps the users whom
    /// forgetting would change).
    pub(crate) fn idle_ttl<'a>(&self, kinds: impl IntoIterator<Item = &'a TicketKind>) -> u64 {
        let longest = kinds
            .into_iter()
            .map(longest_period)
            .max()
            .unwrap_or(LONGEST_CALENDAR_PERIOD);
        millis(longest).saturating_mul(u64::from(self.idle_periods))
    }
}

/// Appends `kind`'s spec (see `lua/common.lua`) for a decision at `now`.
pub(crate) fn push_kind(
    call: &mut ScriptCall,
    kind: &TicketKind,
    starting_balance: u32,
    now: DateTime<Utc>,
) {
    KindSpec::new(kind, now).push(call, starting_balance);
}

/// A kind as the scripts take it: for a calendar refill, with the cutoffs
/// around the instant of the decision.
pub(crate) struct KindSpec<'a> {
    kind: &'a TicketKind,
    cutoffs: Option<[DateTime<Utc>; 3]>,
}

impl<'a> KindSpec<'a> {
    /// `kind`'s spec for a decision at `now`.
    pub(crate) fn new(kind: &'a TicketKind, now: DateTime<Utc>) -> Self {
        let cutoffs = match kind.refill_schedule() {
            Refill::Rolling { .. } => None,
            calendar @ Refill::Calendar { .. } => Some(calendar_cutoffs(calendar, now)),
        };
        Self { kind, cutoffs }
    }

    /// Whether both specs send the same values (decisions of one call may
    /// share it).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        std::ptr::eq(self.kind, other.kind) && self.cutoffs == other.cutoffs
    }

    /// The kind.
    pub(crate) fn kind(&self) -> &'a TicketKind {
        self.kind
    }

    /// Appends the spec as arguments of `call`.
    pub(crate) fn push(&self, call: &mut ScriptCall, starting_balance: u32) {
        self.each_word(starting_balance, |word| {
            call.arg(word);
        });
    }

    /// Hands out the spec's words in order: name, the balance an unseen
    /// user starts with, capacity, refill.
    pub(crate) fn each_word(&self, starting_balance: u32, mut word: impl FnMut(SpecWord<'a>)) {
        word(SpecWord::Text(self.kind.name()));
        word(SpecWord::Number(starting_balance.into()));
        word(SpecWord::Number(self.kind.capacity().into()));
        match (self.kind.refill_schedule(), &self.cutoffs) {
            (Refill::Rolling { period }, _) => {
                word(SpecWord::Text("R"));
                word(SpecWord::Number(
                    i64::try_from(millis(*period)).unwrap_or(i64::MAX),
                ));
            }
            (Refill::Calendar { .. }, cutoffs) => {
                word(SpecWord::Text("C"));
                for cutoff in cutoffs.iter().flatten() {
                    word(SpecWord::Number(cutoff.timestamp_millis()));
                }
            }
        }
    }
}

/// One word of a kind spec: sent as an argument of its own, or written into
/// the charge's plan (see `lua/charge.lua`).
#[derive(Clone, Copy)]
pub(crate) enum SpecWord<'a> {
    Text(&'a str),
    Number(i64),
}

impl ToRedisArgs for SpecWord<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + RedisWrite,
    {
        match self {
            Self::Text(text) => text.write_redis_args(out),
            Self::Number(number) => number.write_redis_args(out),
        }
    }
}

/// The cutoffs of the two boundaries up to `now` and of the next one, in
/// order. The script applies the latest one its clock has passed, so a Redis
/// clock up to a day away from the caller's still refills on time.
fn calendar_cutoffs(refill: &Refill, now: DateTime<Utc>) -> [DateTime<Utc>; 3] {
    let ms = TimeDelta::milliseconds(1);
    let current = refill.cutoff(now);
    let previous = refill.cutoff(current);
    let next = refill.next_after(current + ms) - ms;
    [previous, current, next]
}

#[cfg(test)]
mod tests {
    use chrono::NaiveTime;

    use super::*;

    #[test]
    fn calendar_cutoffs_surround_now() {
        let midnight = Refill::daily_at(NaiveTime::MIN, chrono_tz::Europe::Paris);
        let now: DateTime<Utc> = "2026-03-29T10:00:00Z".parse().unwrap();
        let cutoffs = calendar_cutoffs(&midnight, now).map(|c| c.to_rfc3339());
        assert_eq!(
            cutoffs,
            [
                "2026-03-27T22:59:59.999+00:00",
                "2026-03-28T22:59:59.999+00:00",
                "2026-03-29T21:59:59.999+00:00",
            ]
        );
    }
}
