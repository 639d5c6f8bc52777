//! Redis in front of Firestore: decisions in the cache, the truth in the
//! source (DESIGN.md §4).

// The composition that uses it comes with the Redis store.
#[allow(dead_code)]
mod group_commit;
