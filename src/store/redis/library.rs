//! The charge as a Redis Function (Redis 7): a library loaded once per
//! server (`FUNCTION LOAD`), called with `FCALL`.
//!
//! A script sent by `EVALSHA` runs its whole text on every call: each
//! helper of `lua/common.lua` and `lua/charge.lua` is a closure built
//! again, which one charge alone (batching off) paid for in every call. In
//! the library the helpers are defined once, when it loads; the call binds
//! its keys and arguments and runs `charge_call()` (charge.lua's last line,
//! left out of the library). The library's locals outlive the
//! call: it keeps the plans of the latest calls as read (`CHARGE_PLANS`),
//! so a store's call reads only its decisions, and each call forgets the
//! last one's Redis `TIME`.
//!
//! The library is named after a hash of its text, so that a name always
//! means one text: `FUNCTION LOAD REPLACE` of it is idempotent, whichever
//! app instance or version loads it. Functions outlive `FLUSHALL` but not a
//! restart of a server that does not persist them: a call that finds the
//! function missing loads the library and goes again (as `NOSCRIPT` does
//! for scripts). A server without functions (before Redis 7), or that
//! refuses `FUNCTION LOAD` (an ACL), keeps the script. On a Redis Cluster
//! the client loads the library on every master, and a replica that takes
//! over has it already (functions replicate); a master that lacks it gets
//! it on the first call that misses it.

use std::fmt::Write as _;
use std::sync::LazyLock;

use std::time::Duration;

use redis::{Cmd, ErrorKind, RedisError, RedisResult, ServerErrorKind};
use sha2::{Digest, Sha256};

use super::builder::bounded;
use super::connection::Connection;
use super::scripts::{COMMON, Procedure, Truth};

/// The call a script of `lua/charge.lua` ends with.
const CHARGE_CALL: &str = "return charge_call()\n";

/// `lua/charge.lua` without its last line (the call): its functions, which
/// the library defines once, when it loads; each `FCALL` runs
/// `charge_call()` alone.
fn charge_definitions() -> &'static str {
    include_str!("lua/charge.lua")
        .strip_suffix(CHARGE_CALL)
        .expect("lua/charge.lua ends with its call")
}

/// The charge library of one truth.
pub(crate) struct Library {
    /// `FUNCTION LOAD REPLACE <code>`.
    load: Cmd,
    /// The name `FCALL` takes.
    function: String,
}

impl Library {
    /// The library for `truth`, built (and named) once.
    pub(crate) fn of(truth: Truth) -> &'static Self {
        static IN_REDIS: LazyLock<Library> = LazyLock::new(|| Library::new(Truth::InRedis));
        static IN_SOURCE: LazyLock<Library> = LazyLock::new(|| Library::new(Truth::InSource));
        match truth {
            Truth::InRedis => &IN_REDIS,
            Truth::InSource => &IN_SOURCE,
        }
    }

    fn new(truth: Truth) -> Self {
        // `KEYS` and `ARGV` are the library's locals, bound by each call:
        // the shared helpers and the charge read them as a script does.
        let body = format!(
            "local KEYS, ARGV\n\
             -- The plans of the latest calls, as read (see charge.lua).\n\
             local CHARGE_PLANS = {{known = {{}}, count = 0}}\n\
             local REDIS_HOLDS_THE_TRUTH = {}\n{COMMON}\n{}",
            truth == Truth::InRedis,
            charge_definitions(),
        );
        let digest = Sha256::digest(body.as_bytes());
        let mut name = String::from("tower_tickets_");
        for byte in &digest[..8] {
            let _ = write!(name, "{byte:02x}");
        }
        let function = format!("{name}_charge");
        let code = format!(
            "#!lua name={name}\n{body}\
             redis.register_function('{function}', function(keys, args)\n\
             KEYS, ARGV = keys, args\nreturn charge_call()\nend)\n"
        );
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(code);
        Self { load, function }
    }

    /// The command that loads the library (on every master of a cluster:
    /// the client routes `FUNCTION LOAD` there).
    pub(crate) fn load_command(&self) -> &Cmd {
        &self.load
    }

    /// The charge function's name, for `FCALL`.
    pub(crate) fn function(&self) -> &str {
        &self.function
    }

    /// Loads `truth`'s library (on every master of a cluster), and answers
    /// what decides charges: its function, or the charge script where the
    /// server has no functions or refuses to load them (an error reply). A
    /// server that does not answer is an error.
    pub(crate) async fn load_or_script(
        connection: &mut Connection,
        truth: Truth,
        timeout: Duration,
    ) -> RedisResult<Procedure> {
        let library = Self::of(truth);
        let loaded = bounded(timeout, "loading the charge library", async {
            connection.load_library(library).await
        })
        .await;
        match loaded {
            Ok(()) => Ok(Procedure::Function(library)),
            Err(error) if matches!(error.kind(), ErrorKind::Server(_)) => {
                tracing::info!(%error, "Redis did not load the charge as a function: charges run as a script");
                Ok(Procedure::Script(&truth.scripts().charge))
            }
            Err(error) => Err(error),
        }
    }

    /// Whether `error` says the server no longer has the function (it
    /// restarted without persisting it).
    pub(crate) fn missing(error: &RedisError) -> bool {
        error.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && error
                .detail()
                .is_some_and(|detail| detail.starts_with("Function not found"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library runs charge.lua's call itself: the file must end with
    /// it, once.
    #[test]
    fn the_library_defines_the_charge_and_calls_it_per_call() {
        assert!(!charge_definitions().contains("return charge_call()"));
        let library = Library::new(Truth::InRedis);
        let code = String::from_utf8_lossy(&library.load.get_packed_command()).into_owned();
        assert_eq!(code.matches("return charge_call()").count(), 1, "{code}");
    }
}
