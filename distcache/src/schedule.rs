//! When a waiter asks the store again: never a tight loop, and soon after the value is likely there.
//!
//! A waiter cannot be told when another process stores the value (memcached has no
//! notifications), so it polls. The schedule comes from what this process has seen of the call
//! site: how long its getter runs and how long its waits last. With an estimate `E`, the first
//! poll comes at `E/2` and the next ones every `E/4` until `2E` has passed; after that the interval
//! grows by a quarter each time (the getter is slower than usual, or its holder died and the lease
//! must expire). Without one, polls start at 2 ms and double. Every interval carries ±15% jitter,
//! so that waiters in many processes do not poll in step, and is capped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The shortest interval between two polls of one key by one process.
pub(crate) const MIN_POLL: Duration = Duration::from_millis(1);
const FIRST_POLL_UNKNOWN: Duration = Duration::from_millis(2);
/// Sites remembered before the table is cleared; bounded so that a process calling through
/// endlessly many closures (a bug, but possible) cannot grow it without limit.
const MAX_SITES: usize = 4096;

/// The poll intervals of one wait.
#[derive(Debug)]
pub(crate) struct PollSchedule {
    expected: Option<Duration>,
    cap: Duration,
    waited: Duration,
    polls: u32,
}

impl PollSchedule {
    pub(crate) fn new(expected: Option<Duration>, cap: Duration) -> Self {
        PollSchedule {
            expected,
            cap,
            waited: Duration::ZERO,
            polls: 0,
        }
    }

    /// How long to sleep before the next poll.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let raw = match self.expected {
            Some(expected) if self.polls == 0 => expected / 2,
            Some(expected) if self.waited < expected * 2 => expected / 4,
            Some(_) => self.waited / 4,
            None if self.polls == 0 => FIRST_POLL_UNKNOWN,
            None => self.waited,
        };
        let cap = self.cap.max(MIN_POLL);
        // Jitter first, then the bounds: the cap is the longest a waiter ever sleeps.
        let delay = raw
            .mul_f64(0.85 + 0.3 * fastrand::f64())
            .clamp(MIN_POLL, cap);
        self.waited += delay;
        self.polls += 1;
        delay
    }
}

/// What this process has seen of each call site, identified by the getter's type name: one per
/// `#[distcached]` function; for direct calls, closures in the same function share a name, and
/// so an estimate (it only tunes polling).
#[derive(Debug, Default)]
pub(crate) struct Estimates {
    sites: Mutex<HashMap<&'static str, Estimate>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Estimate {
    run: Option<Duration>,
    wait: Option<Duration>,
}

/// A call site's identity: its getter's type name.
pub(crate) type Site = &'static str;

pub(crate) fn site_of<F>() -> Site {
    std::any::type_name::<F>()
}

impl Estimates {
    /// How long a wait on this site is expected to last: the waits seen, else the getter runs.
    pub(crate) fn expected_wait(&self, site: Site) -> Option<Duration> {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites.get(site).and_then(|e| e.wait.or(e.run))
    }

    pub(crate) fn record_run(&self, site: Site, took: Duration) {
        self.record(site, took, |e| &mut e.run);
    }

    pub(crate) fn record_wait(&self, site: Site, took: Duration) {
        self.record(site, took, |e| &mut e.wait);
    }

    fn record(
        &self,
        site: Site,
        took: Duration,
        field: fn(&mut Estimate) -> &mut Option<Duration>,
    ) {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if sites.len() >= MAX_SITES && !sites.contains_key(site) {
            sites.clear();
        }
        let slot = field(sites.entry(site).or_default());
        // An exponentially weighted mean that gives the newest observation a quarter: it follows
        // a getter that gets slower without jumping at every outlier.
        *slot = Some(match *slot {
            Some(old) => old.mul_f64(0.75) + took.mul_f64(0.25),
            None => took,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_millis(200);

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn with_an_estimate_polls_cluster_around_it() {
        let mut s = PollSchedule::new(Some(Duration::from_millis(20)), CAP);
        let first = ms(s.next_delay());
        assert!(
            (8.5..=11.5).contains(&first),
            "first poll near E/2: {first}"
        );
        for _ in 0..5 {
            let d = ms(s.next_delay());
            assert!((4.25..=5.75).contains(&d), "then every E/4: {d}");
        }
        let mut last = 0.0;
        for _ in 0..30 {
            last = ms(s.next_delay());
        }
        assert!(last > 20.0, "past 2E the interval grows: {last}");
        assert!(last <= ms(CAP), "but stays under the cap: {last}");
    }

    #[test]
    fn without_an_estimate_polls_back_off_from_two_ms() {
        let mut s = PollSchedule::new(None, CAP);
        let delays: Vec<f64> = (0..12).map(|_| ms(s.next_delay())).collect();
        assert!((1.7..=2.3).contains(&delays[0]), "{delays:?}");
        assert!(delays[3] > delays[1] * 2.0, "doubling: {delays:?}");
        assert!(
            delays.iter().all(|&d| d >= 1.0 && d <= ms(CAP) * 1.15),
            "{delays:?}"
        );
    }

    #[test]
    fn never_a_tight_loop() {
        let mut s = PollSchedule::new(Some(Duration::from_nanos(10)), Duration::ZERO);
        for _ in 0..100 {
            assert!(s.next_delay() >= MIN_POLL);
        }
    }

    #[test]
    fn estimates_prefer_observed_waits_and_follow_change() {
        let e = Estimates::default();
        let site = site_of::<fn()>();
        assert_eq!(e.expected_wait(site), None);
        e.record_run(site, Duration::from_millis(100));
        assert_eq!(e.expected_wait(site), Some(Duration::from_millis(100)));
        e.record_wait(site, Duration::from_millis(40));
        assert_eq!(e.expected_wait(site), Some(Duration::from_millis(40)));
        e.record_wait(site, Duration::from_millis(80));
        assert_eq!(e.expected_wait(site), Some(Duration::from_millis(50)));
    }
}
