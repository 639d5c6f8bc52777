//! Sign-ups per client address: each new account comes with fresh tickets,
//! so an unlimited `/api/signup` hands out unlimited tickets (one client
//! made 3,000 accounts in a second). Each address may sign up [`BURST`]
//! times at once, then once every [`EVERY`].
//!
//! An IPv6 client is counted by its /64 network, which one host can fill
//! with addresses. The address is the TCP peer's: behind a reverse proxy,
//! every client shares the proxy's, and the proxy should limit instead.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Sign-ups an address may make at once.
pub const BURST: u32 = 10;

/// Then one more per this long.
pub const EVERY: Duration = Duration::from_secs(6);

/// The most addresses remembered; beyond, addresses that could sign up in
/// full again are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

/// Sign-ups left per address. Cheap to clone; clones share them.
#[derive(Clone, Default)]
pub struct SignupLimit(Arc<Mutex<HashMap<IpAddr, Bucket>>>);

/// An address's sign-ups: [`BURST`] at `full_at` and after, fewer before.
#[derive(Clone, Copy)]
struct Bucket {
    /// When the address will have [`BURST`] sign-ups again.
    full_at: Instant,
}

impl SignupLimit {
    /// Takes one sign-up for `address` at `now`, or says how long until
    /// it may sign up again.
    pub fn take(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = network(address);
        let mut buckets = self.0.lock();
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| bucket.full_at > now);
        }
        let full_at = buckets.get(&key).map_or(now, |b| b.full_at.max(now));
        // Each sign-up pushes `full_at` one period later; BURST periods
        // ahead means no sign-up left.
        let next = full_at + EVERY;
        let limit = now + EVERY * BURST;
        if next > limit {
            return Err(next - limit);
        }
        buckets.insert(key, Bucket { full_at: next });
        Ok(())
    }
}

/// The address an IPv4 client is counted by, or an IPv6 client's /64.
fn network(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(segments))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_a_burst_then_one_sign_up_per_period() {
        let limit = SignupLimit::default();
        let (ada, bob): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.take(ada, start), Ok(()));
        }
        assert_eq!(limit.take(ada, start), Err(EVERY));
        assert_eq!(limit.take(bob, start), Ok(()), "another address");
        let later = start + EVERY / 2;
        assert_eq!(limit.take(ada, later), Err(EVERY / 2));
        assert_eq!(limit.take(ada, start + EVERY), Ok(()));
        assert_eq!(limit.take(ada, start + EVERY), Err(EVERY));
        // Idle long enough, the burst is back in full, not more.
        let idle = start + EVERY * (BURST + 100);
        for _ in 0..BURST {
            assert_eq!(limit.take(ada, idle), Ok(()));
        }
        assert!(limit.take(ada, idle).is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let limit = SignupLimit::default();
        let now = Instant::now();
        for host in 0..BURST {
            let address = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            assert_eq!(limit.take(address, now), Ok(()));
        }
        let same_64 = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(limit.take(same_64, now).is_err());
        let other_64 = "2001:db8:1:3::1".parse().unwrap();
        assert!(limit.take(other_64, now).is_ok());
    }
}
