//! User ids, validated before any store key or document path is built, and
//! the one encoding that turns them into key and path segments.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// The longest uid accepted (Firebase Auth uids are at most 128 characters).
pub const MAX_UID_LEN: usize = 128;

/// A validated user id. By default ([`UidPolicy::Strict`]) 1 to 128
/// characters of `[A-Za-z0-9_-]`, and not of the form `__…__`, which
/// Firestore reserves; [`UidPolicy::Firebase`] accepts any uid Firebase Auth
/// accepts.
///
/// Every store builds keys and document paths only from a `Uid`'s
/// [`encoded`](Uid::encoded) form, so a hostile id (`a}{b`, `../x`,
/// `__name__`, an empty string) can never reach Redis or Firestore as
/// written. Cloning is cheap.
///
/// ```
/// use tower_tickets::Uid;
///
/// assert!(Uid::parse("hQ3kZq9dPfXy2Lb7").is_ok());
/// assert!(Uid::parse("../users/admin").is_err());
/// assert!(Uid::parse("__name__").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(Arc<str>);

/// Which strings are user ids.
///
/// ```
/// use tower_tickets::{Uid, UidPolicy};
///
/// assert!(Uid::parse("auth0|123").is_err());
/// let uid = Uid::parse_with("auth0|123", UidPolicy::Firebase).unwrap();
/// assert_eq!(uid.as_str(), "auth0|123");
/// assert_eq!(uid.encoded(), "auth0%7C123");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UidPolicy {
    /// 1 to 128 characters of `[A-Za-z0-9_-]`, not of the form `__…__`: the
    /// uids Firebase Auth generates, and those of the demo. Such a uid is its
    /// own encoding in keys and document paths.
    #[default]
    Strict,
    /// Any non-empty string of at most 128 bytes, as Firebase Auth accepts
    /// for the uids of custom tokens (`auth0|123`, `user@example.com`).
    /// Keys and document paths are built from its [`Uid::encoded`] form, which
    /// a strict uid keeps unchanged: switching to this policy moves no user.
    Firebase,
}

/// Why a string is not a valid [`Uid`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UidError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_UID_LEN`] characters.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9_-]`.
    ForbiddenCharacter {
        /// Byte offset of the first offending character.
        at: usize,
    },
    /// The id has the form `__…__`, which Firestore reserves.
    Reserved,
}

impl fmt::Display for UidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the user id is empty"),
            Self::TooLong { len } => write!(
                f,
                "the user id is {len} bytes long; at most {MAX_UID_LEN} are allowed"
            ),
            Self::ForbiddenCharacter { at } => write!(
                f,
                "the user id has a character outside [A-Za-z0-9_-] at byte {at}"
            ),
            Self::Reserved => f.write_str("user ids of the form __…__ are reserved by Firestore"),
        }
    }
}

impl std::error::Error for UidError {}

impl Uid {
    /// Validates `raw` as a uid under the default policy
    /// ([`UidPolicy::Strict`]).
    pub fn parse(raw: &str) -> Result<Self, UidError> {
        Self::parse_with(raw, UidPolicy::Strict)
    }

    /// Validates `raw` as a uid under `policy`.
    pub fn parse_with(raw: &str, policy: UidPolicy) -> Result<Self, UidError> {
        if raw.is_empty() {
            return Err(UidError::Empty);
        }
        if raw.len() > MAX_UID_LEN {
            return Err(UidError::TooLong { len: raw.len() });
        }
        if policy == UidPolicy::Strict {
            if let Some(at) = raw.bytes().position(|b| !is_kept(b)) {
                return Err(UidError::ForbiddenCharacter { at });
            }
            if is_reserved(raw) {
                return Err(UidError::Reserved);
            }
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The uid whose [`Self::encoded`] form is `encoded`, if it is one.
    pub fn from_encoded(encoded: &str) -> Option<Self> {
        let mut raw = Vec::with_capacity(encoded.len());
        let mut bytes = encoded.bytes();
        while let Some(b) = bytes.next() {
            raw.push(match b {
                b'%' => {
                    let hex = [bytes.next()?, bytes.next()?];
                    u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
                }
                b => b,
            });
        }
        let uid = Self::parse_with(&String::from_utf8(raw).ok()?, UidPolicy::Firebase).ok()?;
        // Only the one encoding of each uid is accepted.
        (uid.encoded() == encoded).then_some(uid)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uid as a segment of Redis keys and Firestore document paths: a
    /// strict uid as it is; any other with each byte outside `[A-Za-z0-9_-]`
    /// percent-encoded (`auth0|123` is `auth0%7C123`), and the first `_` of
    /// a `__…__` form too. Every store builds keys and paths from this and
    /// nothing else, so no uid can move a hash tag or traverse a path, and
    /// no two uids share a segment.
    pub fn encoded(&self) -> Cow<'_, str> {
        let raw = self.as_str();
        if raw.bytes().all(is_kept) && !is_reserved(raw) {
            return Cow::Borrowed(raw);
        }
        let mut encoded = String::with_capacity(raw.len() * 3);
        for (i, b) in raw.bytes().enumerate() {
            if is_kept(b) && !(i == 0 && is_reserved(raw)) {
                encoded.push(char::from(b));
            } else {
                // Writing into a String cannot fail.
                let _ = write!(encoded, "%{b:02X}");
            }
        }
        Cow::Owned(encoded)
    }
}

/// A byte a strict uid may hold, and an encoded one keeps as it is.
fn is_kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The `__…__` form Firestore reserves.
fn is_reserved(raw: &str) -> bool {
    raw.len() >= 4 && raw.starts_with("__") && raw.ends_with("__")
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Uid {
    type Err = UidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_firebase_style_ids() {
        for ok in [
            "a",
            "hQ3kZq9dPfXy2Lb7aB1cD2eF3gH4",
            "user_1-2",
            "__x",
            "x__",
        ] {
            assert!(Uid::parse(ok).is_ok(), "{ok}");
        }
        assert!(Uid::parse(&"a".repeat(MAX_UID_LEN)).is_ok());
    }

    #[test]
    fn rejects_hostile_ids() {
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(
            Uid::parse(&"a".repeat(MAX_UID_LEN + 1)),
            Err(UidError::TooLong { len: 129 })
        );
        assert_eq!(Uid::parse("__name__"), Err(UidError::Reserved));
        assert_eq!(Uid::parse("____"), Err(UidError::Reserved));
        for bad in ["a}b", "{a}", "../x", "a/b", "a b", "é", "a\0", "a:b", "a*"] {
            assert!(
                matches!(Uid::parse(bad), Err(UidError::ForbiddenCharacter { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_firebase_policy_accepts_any_string_of_1_to_128_bytes() {
        let firebase = |raw: &str| Uid::parse_with(raw, UidPolicy::Firebase);
        for ok in ["auth0|123", "a}{b", "../x", "__name__", "é", "a\0b", "%41"] {
            assert_eq!(firebase(ok).unwrap().as_str(), ok);
        }
        assert_eq!(firebase(""), Err(UidError::Empty));
        assert_eq!(
            firebase(&"é".repeat(65)),
            Err(UidError::TooLong { len: 130 })
        );
    }

    #[test]
    fn encoded_uids_are_safe_distinct_and_decode_back() {
        let firebase = |raw: &str| Uid::parse_with(raw, UidPolicy::Firebase).unwrap();
        let cases = [
            ("hQ3kZq9d", "hQ3kZq9d"),
            ("auth0|123", "auth0%7C123"),
            ("a}{b", "a%7D%7Bb"),
            ("../x", "%2E%2E%2Fx"),
            ("__name__", "%5F_name__"),
            ("%41", "%2541"),
            ("A", "A"),
            ("é", "%C3%A9"),
        ];
        for (raw, encoded) in cases {
            let uid = firebase(raw);
            assert_eq!(uid.encoded(), encoded, "{raw:?}");
            assert!(
                Uid::parse(&uid.encoded().replace('%', "")).is_ok(),
                "{raw:?}"
            );
            assert_eq!(Uid::from_encoded(encoded), Some(uid), "{raw:?}");
        }
        // A strict uid is its own encoding, under either policy.
        assert_eq!(Uid::parse("u1").unwrap().encoded(), "u1");
        assert_eq!(Uid::from_encoded("u1"), Uid::parse("u1").ok());
        // Not the encoding of any uid: only one spelling is accepted.
        for bad in ["%41", "%7c", "%", "%4", "%ZZ", "a|b", "__x__", "%FF", ""] {
            assert_eq!(Uid::from_encoded(bad), None, "{bad:?}");
        }
    }
}
