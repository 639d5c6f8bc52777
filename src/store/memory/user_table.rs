//! The users of one lock stripe: a hash table whose entry (the uid and its
//! record) is one cache line.
//!
//! With many users, a charge of a user met at random misses the caches on
//! everything it reads: the table's control bytes, the entry, and whatever
//! the entry points to. So the entry holds the uid's bytes when they fit
//! (Firebase Auth's generated uids are 28 characters) rather than pointing
//! to them, is aligned to a cache line so that it never straddles two, and
//! the uid is hashed once per request, by the store, for both the stripe
//! and the slot.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::user_record::UserRecord;
use crate::uid::Uid;

/// The longest uid held in the entry itself; longer ones are shared.
const INLINE_UID: usize = 30;

/// A uid as an entry holds it.
enum StoredUid {
    Inline { len: u8, bytes: [u8; INLINE_UID] },
    Shared(Uid),
}

impl StoredUid {
    fn new(uid: &Uid) -> Self {
        let text = uid.as_str().as_bytes();
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_UID => {
                let mut bytes = [0; INLINE_UID];
                bytes[..text.len()].copy_from_slice(text);
                Self::Inline { len, bytes }
            }
            _ => Self::Shared(uid.clone()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Shared(uid) => uid.as_str().as_bytes(),
        }
    }
}

#[repr(align(64))]
struct UserEntry {
    uid: StoredUid,
    record: UserRecord,
}

const _: () = assert!(std::mem::size_of::<UserEntry>() == 64);

/// A uid's hash under the store's hasher: see [`UserTable`].
pub(super) fn hash_uid(hasher: &RandomState, uid: &Uid) -> u64 {
    hasher.hash_one(uid.as_str().as_bytes())
}

/// One stripe's users, looked up by the uid's [`hash_uid`].
#[derive(Default)]
pub(super) struct UserTable {
    entries: HashTable<UserEntry>,
}

impl UserTable {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&self, hash: u64, uid: &Uid) -> Option<&UserRecord> {
        let uid = uid.as_str().as_bytes();
        let entry = self
            .entries
            .find(hash, |entry| entry.uid.as_bytes() == uid)?;
        Some(&entry.record)
    }

    pub(super) fn get_mut(&mut self, hash: u64, uid: &Uid) -> Option<&mut UserRecord> {
        let uid = uid.as_str().as_bytes();
        let entry = self
            .entries
            .find_mut(hash, |entry| entry.uid.as_bytes() == uid)?;
        Some(&mut entry.record)
    }

    /// `uid`'s record, created empty if absent; `hasher` rehashes the
    /// entries if the table grows.
    pub(super) fn get_or_insert(
        &mut self,
        hash: u64,
        uid: &Uid,
        hasher: &RandomState,
    ) -> &mut UserRecord {
        let bytes = uid.as_str().as_bytes();
        let entry = self.entries.entry(
            hash,
            |entry| entry.uid.as_bytes() == bytes,
            |entry| hasher.hash_one(entry.uid.as_bytes()),
        );
        let entry = entry.or_insert_with(|| UserEntry {
            uid: StoredUid::new(uid),
            record: UserRecord::default(),
        });
        &mut entry.into_mut().record
    }

    /// Keeps the users for whom `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&mut UserRecord) -> bool) {
        self.entries.retain(|entry| keep(&mut entry.record));
    }

    pub(super) fn records(&self) -> impl Iterator<Item = &UserRecord> {
        self.entries.iter().map(|entry| &entry.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uid::UidPolicy;

    /// Uids held inline and shared, around the inline limit, and prefixes
    /// of one another: each finds its own record, however the table grew.
    #[test]
    fn every_uid_finds_its_own_record_inline_or_shared() {
        let hasher = RandomState::new();
        let names: Vec<String> = (1..=40)
            .map(|len| "u".repeat(len))
            .chain((0..2000).map(|n| format!("user-{n:06}")))
            .chain(["a|b".to_string(), "x".repeat(128)])
            .collect();
        let uids: Vec<Uid> = names
            .iter()
            .map(|name| Uid::parse_with(name, UidPolicy::Firebase).unwrap())
            .collect();
        let mut table = UserTable::default();
        for (n, uid) in uids.iter().enumerate() {
            let record = table.get_or_insert(hash_uid(&hasher, uid), uid, &hasher);
            let kind = std::sync::Arc::new(crate::TicketKind::new("k", 1_000_000));
            let balance = crate::store::KindBalance {
                remaining: u32::try_from(n).unwrap(),
                last_refill: chrono::DateTime::UNIX_EPOCH,
            };
            record.set_balance(&kind, balance);
        }
        assert_eq!(table.len(), uids.len());
        let kind = crate::TicketKind::new("k", 1_000_000);
        for (n, uid) in uids.iter().enumerate() {
            let record = table.get(hash_uid(&hasher, uid), uid).unwrap();
            let remaining = record.balance(&kind).unwrap().remaining;
            assert_eq!(remaining, u32::try_from(n).unwrap(), "{uid}");
        }
        let stranger = Uid::parse("u".repeat(41).as_str()).unwrap();
        assert!(table.get(hash_uid(&hasher, &stranger), &stranger).is_none());
    }
}
