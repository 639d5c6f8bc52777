//! User ids, validated before any store key or document path is built.

use std::fmt;
use std::sync::Arc;

/// The longest uid accepted (Firebase Auth uids are at most 128 characters).
pub const MAX_UID_LEN: usize = 128;

/// A validated user id: 1 to 128 characters of `[A-Za-z0-9_-]`, and not of the
/// form `__…__`, which Firestore reserves.
///
/// Every store builds keys and document paths only from a `Uid`, so a hostile
/// id (`a}{b`, `../x`, `__name__`, an empty string) can never reach Redis or
/// Firestore. Cloning is cheap.
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
    /// Validates `raw` as a uid.
    pub fn parse(raw: &str) -> Result<Self, UidError> {
        if raw.is_empty() {
            return Err(UidError::Empty);
        }
        if raw.len() > MAX_UID_LEN {
            return Err(UidError::TooLong { len: raw.len() });
        }
        if let Some(at) = raw
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(UidError::ForbiddenCharacter { at });
        }
        if raw.len() >= 4 && raw.starts_with("__") && raw.ends_with("__") {
            return Err(UidError::Reserved);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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
}
