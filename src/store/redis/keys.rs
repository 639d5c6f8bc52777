//! Where a user's values live: key names under one hash tag `{uid}`, the
//! uid in its safe encoding (see [`Uid::encoded`]).

use crate::idempotency::IdempotencyKey;
use crate::uid::Uid;

/// The longest key prefix accepted.
pub(crate) const MAX_PREFIX_LEN: usize = 64;

/// Builds every key the scripts touch.
#[derive(Debug, Clone)]
pub(crate) struct KeyLayout {
    prefix: Box<str>,
}

impl KeyLayout {
    /// A layout under `prefix`, or why the prefix cannot be used. Braces
    /// would move the hash tag (Redis Cluster hashes the first `{...}`);
    /// spaces and control characters make keys unreadable in tools.
    pub(crate) fn new(prefix: &str) -> Result<Self, String> {
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(format!(
                "it is {} bytes long; at most {MAX_PREFIX_LEN} are allowed",
                prefix.len()
            ));
        }
        if let Some(bad) = prefix
            .chars()
            .find(|c| !c.is_ascii_graphic() || *c == '{' || *c == '}')
        {
            return Err(format!(
                "it contains {bad:?}; use visible ASCII without braces, e.g. \"tickets:\""
            ));
        }
        Ok(Self {
            prefix: prefix.into(),
        })
    }

    /// The pub/sub channel of balance changes (see `changes.rs`).
    pub(crate) fn changes_channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// The hash of `uid`'s balances.
    pub(crate) fn balances(&self, uid: &Uid) -> String {
        self.user_key(uid, &[":t"])
    }

    /// The record of `uid`'s charged idempotency key. The key's own braces,
    /// if any, come after the hash tag and so do not move it.
    pub(crate) fn idempotency(&self, uid: &Uid, key: &IdempotencyKey) -> String {
        self.user_key(uid, &[":i:", key.as_str()])
    }

    /// The write-through's high-water mark of `uid`: the lineage and
    /// version of the latest state the source took, kept apart from the
    /// balances so that a hash restored from an old dump is seen as stale.
    pub(crate) fn high_water(&self, uid: &Uid) -> String {
        self.user_key(uid, &[":h"])
    }

    /// The write-through's count of `uid`'s changes that Firestore may not
    /// hold yet.
    pub(crate) fn pending(&self, uid: &Uid) -> String {
        self.user_key(uid, &[":w"])
    }

    /// `<prefix>{<encoded uid>}` then `suffix`, in one allocation: a charge
    /// builds its keys on every call, where `format!` cost more than the
    /// rest of the key's work.
    fn user_key(&self, uid: &Uid, suffix: &[&str]) -> String {
        let uid = uid.encoded();
        let length =
            self.prefix.len() + uid.len() + 2 + suffix.iter().map(|s| s.len()).sum::<usize>();
        let mut key = String::with_capacity(length);
        key.push_str(&self.prefix);
        key.push('{');
        key.push_str(&uid);
        key.push('}');
        for part in suffix {
            key.push_str(part);
        }
        key
    }

    /// A `SCAN MATCH` pattern for every user's [`Self::pending`] key.
    pub(crate) fn pending_pattern(&self) -> String {
        format!("{}{{*}}:w", glob_escape(&self.prefix))
    }

    /// The user whose [`Self::pending`] key `key` is.
    pub(crate) fn pending_uid(&self, key: &str) -> Option<Uid> {
        let uid = key
            .strip_prefix(&*self.prefix)?
            .strip_prefix('{')?
            .strip_suffix("}:w")?;
        Uid::from_encoded(uid)
    }
}

/// `text` with Redis glob metacharacters escaped.
fn glob_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_user_shares_its_hash_tag() {
        let keys = KeyLayout::new("app:").unwrap();
        let uid = Uid::parse("u1").unwrap();
        let key = IdempotencyKey::parse("a}{b").unwrap();
        assert_eq!(keys.balances(&uid), "app:{u1}:t");
        assert_eq!(keys.idempotency(&uid, &key), "app:{u1}:i:a}{b");
        assert_eq!(keys.high_water(&uid), "app:{u1}:h");
    }

    #[test]
    fn prefixes_that_would_move_the_hash_tag_are_refused() {
        for bad in ["a{", "}", "a b", "\n", &"x".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(KeyLayout::new(bad).is_err(), "{bad:?}");
        }
        assert!(KeyLayout::new("").is_ok());
    }

    #[test]
    fn pending_keys_are_found_by_a_pattern_that_escapes_the_prefix() {
        assert_eq!(glob_escape("tickets:"), "tickets:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let keys = KeyLayout::new("a*:").unwrap();
        let uid = Uid::parse("u1").unwrap();
        assert_eq!(keys.pending(&uid), "a*:{u1}:w");
        assert_eq!(keys.pending_pattern(), "a\\*:{*}:w");
        assert_eq!(keys.pending_uid(&keys.pending(&uid)), Some(uid));
        assert_eq!(keys.pending_uid("a*:{u1}:t"), None);
        assert_eq!(keys.pending_uid("a*:{a}b}:w"), None, "not a uid");
    }

    #[test]
    fn a_uid_of_the_wider_policy_is_encoded_inside_its_hash_tag() {
        let keys = KeyLayout::new("app:").unwrap();
        let uid = Uid::parse_with("a}{b|c", crate::UidPolicy::Firebase).unwrap();
        assert_eq!(keys.balances(&uid), "app:{a%7D%7Bb%7Cc}:t");
        assert_eq!(keys.pending_uid(&keys.pending(&uid)), Some(uid));
    }
}
