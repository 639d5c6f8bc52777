//! One user's balances at one version: what a cache hands its source of
//! truth, and what the source hands back on a cache miss.

use super::KindBalance;

/// One user's balance in every kind, at one version.
///
/// Versions order the states of one user: of two snapshots, the one with the
/// higher version is the newer. A source of truth keeps the highest version
/// it is given and ignores older ones, so a late write can never undo a newer
/// one (a grant made in between, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSnapshot {
    /// Orders the states of this user; higher is newer.
    pub version: u64,
    /// One balance per kind, in the order of the kinds it was read for.
    pub balances: Vec<KindBalance>,
}
