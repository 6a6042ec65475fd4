//! [`LoginThrottle`]: failed logins and logins in progress, per client
//! address, so that password guessing from one address neither goes on
//! unchecked nor delays the logins of everyone else.
//!
//! Two rules, both applied before the authentication plugins run:
//!
//! - **Failed logins** are a debt per address, paid back over time (a
//!   generic cell rate algorithm): each failure adds one `interval`, an
//!   address whose debt reaches `burst` intervals is refused until it has
//!   paid one back. A successful login pays nothing back, so an attacker
//!   with one valid account cannot reset the count between guesses.
//! - **Logins in progress** pass a gate per address with a few slots
//!   (`logins_per_address`): the other logins from that address wait for a
//!   slot, and so one address never holds more than its share of the
//!   broker's authentication slots, however many connections it opens.
//!
//! An address is an IPv4 address or an IPv6 /64 (what one subscriber or
//! one attacker usually has). Loopback is exempt unless configured, since a
//! local proxy makes every client the same address. The table tracks only
//! addresses with a debt or a login in progress, at most
//! [`MAX_ADDRESSES`]; beyond that, new addresses are not throttled (and
//! the broker says so in its log once).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Addresses tracked at most: about 10 MB of table.
pub const MAX_ADDRESSES: usize = 100_000;

/// What the throttle does, read from the configuration at each login so a
/// reload applies at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failed logins in a row an address may have; 0: no limit.
    pub burst: u32,
    /// The time in which an address earns back one failed login.
    pub interval: Duration,
    /// Logins one address may have in progress at once.
    pub per_address: usize,
    /// Whether loopback addresses are throttled.
    pub loopback: bool,
}

/// An address may not log in now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed logins from this address; retry in {} s", retry_after.as_secs().max(1))]
pub struct Throttled {
    /// How long until the address may try again.
    pub retry_after: Duration,
}

/// The failed-login debts and login gates of the addresses that have one.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    /// The table was full once; said in the log, once.
    overflowed: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    /// When the address's debt is paid off; in the past: no debt.
    paid_at: Instant,
    /// The address's login slots; waiters and holders keep a clone.
    gate: Arc<Semaphore>,
}

impl Entry {
    /// Whether the entry holds nothing worth keeping at `now`.
    fn idle(&self, now: Instant) -> bool {
        self.paid_at <= now && Arc::strong_count(&self.gate) == 1
    }
}

/// How long until an address may try again, when its debt is over the
/// limit: more than `burst - 1` intervals, so that after `burst` failures
/// in quick succession it waits one interval, then has one attempt.
fn over_limit(entry: &Entry, settings: &ThrottleSettings, now: Instant) -> Option<Duration> {
    let allowed = settings.interval.saturating_mul(settings.burst.checked_sub(1)?);
    let debt = entry.paid_at.saturating_duration_since(now);
    (debt > allowed).then(|| debt - allowed)
}

/// The address the throttle counts `ip` under, or `None` when exempt.
fn key(ip: IpAddr, settings: &ThrottleSettings) -> Option<IpAddr> {
    let ip = ip.to_canonical();
    if ip.is_loopback() && !settings.loopback {
        return None;
    }
    Some(match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    })
}

impl LoginThrottle {
    /// Lets a login from `ip` go on, once it has one of its address's login
    /// slots (when `gated`: an authentication plugin will run), or refuses
    /// it when the address has failed too often. The returned ticket counts
    /// the login as failed unless [`LoginTicket::succeeded`] is called.
    ///
    /// # Errors
    /// [`Throttled`] when the address's failed logins are over the limit,
    /// also when they went over while this login waited for its slot.
    pub async fn admit(
        &self,
        ip: IpAddr,
        settings: ThrottleSettings,
        gated: bool,
    ) -> Result<LoginTicket<'_>, Throttled> {
        let Some(key) = key(ip, &settings) else {
            return Ok(LoginTicket { throttle: self, key: None, settings, permit: None, succeeded: false });
        };
        let gate = self.check(key, &settings, Instant::now())?;
        let permit = match (gate, gated) {
            // The gate is never closed, so this waits for a permit.
            (Some(gate), true) => gate.acquire_owned().await.ok(),
            _ => None,
        };
        let waited = permit.is_some();
        let ticket = LoginTicket { throttle: self, key: Some(key), settings, permit, succeeded: false };
        // The failures of the logins it queued behind count too. Without
        // a wait nothing changed since the first look: no second one (a
        // lock and a lookup on every CONNECT, issue 25).
        if waited && let Err(throttled) = self.check(key, &settings, Instant::now()) {
            // Not a login: it never reached the plugins.
            let mut ticket = ticket;
            ticket.succeeded = true;
            return Err(throttled);
        }
        Ok(ticket)
    }

    /// Refuses `key` when its debt is over the limit; otherwise returns its
    /// gate, made if new (`None` when the table is full).
    fn check(
        &self,
        key: IpAddr,
        settings: &ThrottleSettings,
        now: Instant,
    ) -> Result<Option<Arc<Semaphore>>, Throttled> {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get(&key) {
            if let Some(retry_after) = over_limit(entry, settings, now) {
                return Err(Throttled { retry_after });
            }
            return Ok(Some(entry.gate.clone()));
        }
        if entries.len() >= MAX_ADDRESSES {
            entries.retain(|_, e| !e.idle(now));
            if entries.len() >= MAX_ADDRESSES {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        addresses = MAX_ADDRESSES,
                        "login throttle: table full; logins from further addresses are not throttled"
                    );
                }
                return Ok(None);
            }
        }
        let gate = Arc::new(Semaphore::new(settings.per_address.max(1)));
        entries.insert(key, Entry { paid_at: now, gate: gate.clone() });
        Ok(Some(gate))
    }

    /// Adds one failed login to `key`'s debt.
    fn failed(&self, key: IpAddr, settings: &ThrottleSettings, now: Instant) {
        if settings.burst == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(&key) else { return };
        let was_over = over_limit(entry, settings, now).is_some();
        entry.paid_at = entry.paid_at.max(now) + settings.interval;
        if !was_over && over_limit(entry, settings, now).is_some() {
            tracing::info!(
                address = %key,
                failed_logins = settings.burst,
                retry_after_s = settings.interval.as_secs().max(1),
                "login throttle: address refused until it waits"
            );
        }
    }

    /// Forgets `key` if it holds nothing.
    fn release(&self, key: IpAddr, now: Instant) {
        let mut entries = self.entries.lock();
        if entries.get(&key).is_some_and(|e| e.idle(now)) {
            entries.remove(&key);
        }
    }

    /// Addresses tracked now (with a debt or a login in progress).
    pub fn tracked(&self) -> usize {
        self.entries.lock().len()
    }
}

/// A login admitted by [`LoginThrottle::admit`]: holds its address's login
/// slot, and counts as a failed login when dropped unless it succeeded
/// (a refusal, a broken exchange, a connect timeout all count).
#[derive(Debug)]
pub struct LoginTicket<'a> {
    throttle: &'a LoginThrottle,
    key: Option<IpAddr>,
    settings: ThrottleSettings,
    permit: Option<OwnedSemaphorePermit>,
    succeeded: bool,
}

impl LoginTicket<'_> {
    /// The login succeeded: it adds no debt.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for LoginTicket<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let now = Instant::now();
        if !self.succeeded {
            self.throttle.failed(key, &self.settings, now);
        }
        drop(self.permit.take());
        self.throttle.release(key, now);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn settings(burst: u32) -> ThrottleSettings {
        ThrottleSettings { burst, interval: Duration::from_secs(10), per_address: 1, loopback: false }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn addresses_are_v4_hosts_and_v6_slash_64s_and_loopback_is_exempt() {
        let s = settings(3);
        assert_eq!(key(ip("192.0.2.7"), &s), Some(ip("192.0.2.7")));
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1"), &s), Some(ip("2001:db8:1:2::")));
        assert_eq!(key(ip("::ffff:192.0.2.7"), &s), Some(ip("192.0.2.7")));
        assert_eq!(key(ip("127.0.0.1"), &s), None);
        assert_eq!(key(ip("::1"), &s), None);
        assert_eq!(key(ip("127.0.0.2"), &ThrottleSettings { loopback: true, ..s }), Some(ip("127.0.0.2")));
    }

    #[test]
    fn an_address_fails_burst_times_then_earns_one_attempt_per_interval() {
        let throttle = LoginThrottle::default();
        let (s, a, t0) = (settings(3), ip("192.0.2.7"), Instant::now());
        for _ in 0..3 {
            assert!(throttle.check(a, &s, t0).is_ok());
            throttle.failed(a, &s, t0);
        }
        let refused = throttle.check(a, &s, t0).expect_err("over the burst");
        assert_eq!(refused.retry_after, Duration::from_secs(10));
        assert!(throttle.check(ip("192.0.2.8"), &s, t0).is_ok(), "another address is not affected");
        let later = t0 + Duration::from_secs(10);
        assert!(throttle.check(a, &s, later).is_ok(), "one attempt earned back");
        throttle.failed(a, &s, later);
        assert!(throttle.check(a, &s, later).is_err(), "and spent");
        assert!(throttle.check(a, &s, t0 + Duration::from_secs(60)).is_ok());
        // Turned off, nothing is refused.
        throttle.failed(a, &settings(0), later);
        assert!(throttle.check(a, &settings(0), later).is_ok());
    }

    #[tokio::test]
    async fn a_ticket_counts_a_failure_unless_it_succeeded_and_then_lets_go() {
        let throttle = LoginThrottle::default();
        let (s, a) = (settings(2), ip("192.0.2.7"));
        throttle.admit(a, s, true).await.expect("admitted").succeeded();
        assert_eq!(throttle.tracked(), 0, "a success leaves nothing behind");
        drop(throttle.admit(a, s, true).await.expect("admitted"));
        drop(throttle.admit(a, s, true).await.expect("admitted"));
        assert!(throttle.admit(a, s, true).await.is_err(), "two failures: throttled");
        assert!(throttle.admit(ip("127.0.0.1"), s, true).await.is_ok(), "loopback is exempt");
    }

    #[tokio::test]
    async fn one_address_has_one_login_in_progress_and_others_do_not_wait() {
        let throttle = LoginThrottle::default();
        let (s, a) = (settings(10), ip("192.0.2.7"));
        let first = throttle.admit(a, s, true).await.expect("admitted");
        let mut second = Box::pin(throttle.admit(a, s, true));
        assert!((&mut second).now_or_never().is_none(), "waits for the first");
        let other = throttle.admit(ip("198.51.100.1"), s, true).now_or_never();
        assert!(matches!(other, Some(Ok(_))), "another address does not wait");
        // Without a plugin to run there is nothing to wait for.
        assert!(matches!(throttle.admit(a, s, false).now_or_never(), Some(Ok(_))));
        first.succeeded();
        let second = second.await.expect("admitted once the first is done");
        second.succeeded();
    }

    #[tokio::test]
    async fn a_login_that_waited_is_refused_if_the_ones_before_it_failed_too_often() {
        let throttle = LoginThrottle::default();
        let (s, a) = (settings(1), ip("192.0.2.7"));
        let first = throttle.admit(a, s, true).await.expect("admitted");
        let mut second = Box::pin(throttle.admit(a, s, true));
        assert!((&mut second).now_or_never().is_none());
        drop(first);
        assert!(second.await.is_err(), "the first failed: over the burst of 1");
    }
}
