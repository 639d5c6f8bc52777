//! The checks' bookkeeping and the failure report: a failing seed prints
//! itself, how to replay it, and the history of the user concerned.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use tower_tickets::store::{KindBalance, UserSnapshot};

/// How many notes the failure report keeps.
const LOG_KEPT: usize = 50_000;

/// Records the history and the monotonic facts of one run.
pub struct Checker {
    test: &'static str,
    seed: u64,
    /// `(operation index, user concerned, line)`.
    /// The latest notes, for the failure report (bounded: a long run
    /// reports the end of its history).
    log: VecDeque<(usize, Option<usize>, String)>,
    /// The latest refill each (user, kind) was answered with.
    refills: HashMap<(String, usize), DateTime<Utc>>,
    /// The highest version and refills each user's document showed.
    documents: HashMap<String, UserSnapshot>,
}

impl Checker {
    pub fn new(test: &'static str, seed: u64) -> Self {
        Self {
            test,
            seed,
            log: VecDeque::new(),
            refills: HashMap::new(),
            documents: HashMap::new(),
        }
    }

    pub fn test(&self) -> &'static str {
        self.test
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn note(&mut self, index: usize, user: Option<usize>, line: String) {
        if self.log.len() == LOG_KEPT {
            self.log.pop_front();
        }
        self.log.push_back((index, user, line));
    }

    /// Fails the run: the seed, the replay command, and the operations that
    /// concern `user` (every operation when `None`), with their answers.
    pub fn fail(&self, index: usize, user: Option<usize>, what: &str) -> ! {
        let history: Vec<String> = self
            .log
            .iter()
            .filter(|(_, u, _)| user.is_none() || u.is_none() || *u == user)
            .map(|(i, _, line)| format!("  #{i:<6} {line}"))
            .collect();
        panic!(
            "\nledger: {test} failed with seed {seed} at operation #{index}: {what}\n\
             replay: LEDGER_SEED={seed} LEDGER_OPS={ops} cargo test --all-features --test ledger {test} -- --include-ignored --nocapture\n\
             history{whose} (operations on other users left out):\n{history}\n",
            test = self.test,
            seed = self.seed,
            ops = index + 1,
            whose = user.map_or(String::new(), |u| format!(" of user u{u}")),
            history = history.join("\n"),
        );
    }

    /// Fails unless `got == want`.
    pub fn same<T: Debug + PartialEq>(
        &self,
        index: usize,
        user: Option<usize>,
        what: &str,
        got: &T,
        want: &T,
    ) {
        if got != want {
            self.fail(
                index,
                user,
                &format!("{what}\n    store: {got:?}\n    model: {want:?}"),
            );
        }
    }

    /// Refill times answered for a user never go backwards.
    pub fn refills(
        &mut self,
        index: usize,
        user: usize,
        uid: &str,
        kinds: &[usize],
        balances: &[KindBalance],
    ) {
        for (&kind, balance) in kinds.iter().zip(balances) {
            let latest = self
                .refills
                .entry((uid.to_string(), kind))
                .or_insert(balance.last_refill);
            if balance.last_refill < *latest {
                let what = format!(
                    "kind {kind}'s last refill went back from {latest} to {}",
                    balance.last_refill
                );
                self.fail(index, Some(user), &what);
            }
            *latest = balance.last_refill;
        }
    }

    /// The user's state was legitimately reloaded or forgotten.
    pub fn forget_refills(&mut self, uid: Option<&str>) {
        self.refills
            .retain(|(u, _), _| uid.is_some_and(|uid| uid != u.as_str()));
    }

    /// An edit made straight to the source may move a refill time back
    /// (DESIGN.md §4: taken as written): the user's document starts over.
    pub fn forget_document(&mut self, uid: &str) {
        self.documents.remove(uid);
    }

    /// A document's version and refill times never go backwards (the
    /// library's own writes; an edit starts over).
    pub fn document(&mut self, index: usize, user: usize, uid: &str, document: &UserSnapshot) {
        if let Some(seen) = self.documents.get(uid) {
            let backwards = document.version < seen.version
                || document
                    .balances
                    .iter()
                    .zip(&seen.balances)
                    .any(|(now, then)| now.last_refill < then.last_refill);
            if backwards {
                let what = format!("the document went back from {seen:?} to {document:?}");
                self.fail(index, Some(user), &what);
            }
        }
        self.documents.insert(uid.to_string(), document.clone());
    }
}
