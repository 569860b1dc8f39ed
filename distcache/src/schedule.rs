//! When a waiter asks the store again: never a tight loop, and soon after the value is likely there.
//!
//! A waiter cannot be told when another process stores the value (memcached has no
//! notifications), so it polls. A waiter does not know when the computation it waits for began:
//! most start waiting as it starts, others in the middle. So the polls are evenly spaced, a fifth
//! of the getter's expected run time `E` apart: a wait costs about five looks at the store, and the
//! value is noticed within `E/5` of being stored, whenever the wait began. Past `2E` (the getter is
//! slower than usual, or its holder died and the lease must expire) the interval grows by a
//! quarter at each poll. `E` is what this process has seen of the call site: its getter's runs,
//! else the waits it has made; it is read again at each poll, so the first wait of a site benefits
//! as soon as anything is known. With nothing known (a process's first waits on a call site, all
//! at once when a herd starts cold), one waiter scouts: it polls from 2 ms, the interval growing
//! by 1 ms, then by a quarter past 10 ms. The others poll rarely (from 8 ms, doubling) and are
//! woken the moment anything is learnt of the site: a value seen or computed. A herd's first wave
//! then costs one waiter about six looks at the store, and the others about two. Every interval carries ±15% jitter, so that waiters in many processes
//! do not poll in step, and then the cap (`max_poll_interval`) and a 1 ms floor apply: the cap
//! bounds how late a waiter notices a long getter's value, at the price of a few polls a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// The shortest interval between two polls of one key by one process.
pub(crate) const MIN_POLL: Duration = Duration::from_millis(1);
const FIRST_POLL_UNKNOWN: Duration = Duration::from_millis(2);
const STEP_UNKNOWN: Duration = Duration::from_millis(1);
const FIRST_POLL_FOLLOWER: Duration = Duration::from_millis(8);
const LINEAR_UNTIL: Duration = Duration::from_millis(10);
/// Polls per expected run time.
const POLLS_PER_RUN: u32 = 5;
/// Sites remembered before the table is cleared; bounded so that a process calling through
/// endlessly many closures (a bug, but possible) cannot grow it without limit.
const MAX_SITES: usize = 4096;

/// The poll intervals of one wait.
#[derive(Debug)]
pub(crate) struct PollSchedule {
    cap: Duration,
    waited: Duration,
    last: Duration,
}

impl PollSchedule {
    pub(crate) fn new(cap: Duration) -> Self {
        PollSchedule {
            cap,
            waited: Duration::ZERO,
            last: Duration::ZERO,
        }
    }

    /// How long to sleep before the next poll, given what is now known of the getter.
    pub(crate) fn next_delay(&mut self, known: Knowledge) -> Duration {
        let raw = match known {
            Knowledge::Expected(expected) if self.waited < expected * 2 => expected / POLLS_PER_RUN,
            Knowledge::Expected(expected) => {
                (self.last.max(expected / POLLS_PER_RUN)).mul_f64(1.25)
            }
            Knowledge::Scout if self.last.is_zero() => FIRST_POLL_UNKNOWN,
            Knowledge::Scout if self.last < LINEAR_UNTIL => self.last + STEP_UNKNOWN,
            Knowledge::Scout => self.last.mul_f64(1.25),
            Knowledge::Follower if self.last.is_zero() => FIRST_POLL_FOLLOWER,
            Knowledge::Follower => self.last * 2,
        };
        let cap = self.cap.max(MIN_POLL);
        // Jitter first, then the bounds: the cap is the longest a waiter ever sleeps.
        let delay = raw
            .mul_f64(0.85 + 0.3 * fastrand::f64())
            .clamp(MIN_POLL, cap);
        self.waited += delay;
        self.last = raw.min(cap);
        delay
    }
}

/// What a waiter knows of its call site when it schedules its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Knowledge {
    /// The getter is expected to run this long.
    Expected(Duration),
    /// Nothing yet, and this waiter finds out for the others.
    Scout,
    /// Nothing yet; another waiter is finding out, and wakes this one when it does.
    Follower,
}

/// What this process has seen of each call site, identified by the getter's type name: one per
/// `#[distcached]` function; for direct calls, closures in the same function share a name, and
/// so an estimate (it only tunes polling).
#[derive(Debug, Default)]
pub(crate) struct Estimates {
    sites: Mutex<HashMap<&'static str, Estimate>>,
}

#[derive(Debug, Default)]
struct Estimate {
    run: Option<Duration>,
    wait: Option<Duration>,
    /// A waiter is scouting this site (see [`Knowledge::Scout`]).
    scouting: bool,
    /// Woken whenever something is learnt of the site.
    learned: Arc<Notify>,
}

impl Estimate {
    fn expected(&self) -> Option<Duration> {
        self.run.or(self.wait)
    }
}

/// A call site's identity: its getter's type name.
pub(crate) type Site = &'static str;

pub(crate) fn site_of<F>() -> Site {
    std::any::type_name::<F>()
}

impl Estimates {
    fn sites(&self) -> MutexGuard<'_, HashMap<&'static str, Estimate>> {
        // Every critical section leaves the map consistent: a poisoned lock is still usable.
        self.sites.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long this site's getter is expected to run: its runs seen here, else the waits.
    #[cfg(test)]
    pub(crate) fn expected_run(&self, site: Site) -> Option<Duration> {
        self.sites().get(site).and_then(Estimate::expected)
    }

    /// Starts a wait on `site`.
    pub(crate) fn wait(&self, site: Site) -> SiteWait<'_> {
        let learned = self.entry(&mut self.sites(), site).learned.clone();
        SiteWait {
            estimates: self,
            site,
            scout: false,
            learned,
        }
    }

    pub(crate) fn record_run(&self, site: Site, took: Duration) {
        self.record(site, took, |e| &mut e.run);
    }

    pub(crate) fn record_wait(&self, site: Site, took: Duration) {
        self.record(site, took, |e| &mut e.wait);
    }

    fn entry<'m>(
        &self,
        sites: &'m mut HashMap<&'static str, Estimate>,
        site: Site,
    ) -> &'m mut Estimate {
        if sites.len() >= MAX_SITES && !sites.contains_key(site) {
            // Waiters of the forgotten sites are woken, so that none waits on a lost scout.
            for (_, forgotten) in sites.drain() {
                forgotten.learned.notify_waiters();
            }
        }
        sites.entry(site).or_default()
    }

    fn record(
        &self,
        site: Site,
        took: Duration,
        field: fn(&mut Estimate) -> &mut Option<Duration>,
    ) {
        let learned = {
            let mut sites = self.sites();
            let estimate = self.entry(&mut sites, site);
            let slot = field(estimate);
            // An exponentially weighted mean that gives the newest observation a quarter: it
            // follows a getter that gets slower without jumping at every outlier.
            *slot = Some(match *slot {
                Some(old) => old.mul_f64(0.75) + took.mul_f64(0.25),
                None => took,
            });
            estimate.scouting = false;
            estimate.learned.clone()
        };
        learned.notify_waiters();
    }
}

/// One wait on a call site: what it knows, and its part in finding out.
#[derive(Debug)]
pub(crate) struct SiteWait<'a> {
    estimates: &'a Estimates,
    site: Site,
    scout: bool,
    learned: Arc<Notify>,
}

impl SiteWait<'_> {
    /// What is known now; takes the scout's part if nobody has it.
    pub(crate) fn knowledge(&mut self) -> Knowledge {
        let mut sites = self.estimates.sites();
        let estimate = self.estimates.entry(&mut sites, self.site);
        if let Some(expected) = estimate.expected() {
            return Knowledge::Expected(expected);
        }
        if !self.scout && !estimate.scouting {
            estimate.scouting = true;
            self.scout = true;
        }
        if self.scout {
            Knowledge::Scout
        } else {
            Knowledge::Follower
        }
    }

    /// Notified when anything is learnt of the site.
    pub(crate) fn learned(&self) -> Arc<Notify> {
        self.learned.clone()
    }
}

impl Drop for SiteWait<'_> {
    fn drop(&mut self) {
        if !self.scout {
            return;
        }
        // A scout that leaves without learning anything (its wait timed out, or its holder died
        // and it won the lease) hands the part on: the followers wake, and one of them scouts.
        let mut sites = self.estimates.sites();
        if let Some(estimate) = sites.get_mut(self.site)
            && estimate.scouting
            && estimate.expected().is_none()
        {
            estimate.scouting = false;
            drop(sites);
            self.learned.notify_waiters();
        }
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
    fn with_an_estimate_polls_are_a_fifth_of_it_apart_then_back_off() {
        let e = Duration::from_millis(20);
        let mut s = PollSchedule::new(CAP);
        let mut at = 0.0;
        for _ in 0..9 {
            let d = ms(s.next_delay(Knowledge::Expected(e)));
            assert!((3.4..=4.6).contains(&d), "every E/5: {d}");
            at += d;
        }
        assert!(at >= 30.0, "{at}");
        let mut last = 0.0;
        for _ in 0..40 {
            last = ms(s.next_delay(Knowledge::Expected(e)));
        }
        assert!(last > 20.0, "past 2E the interval grows: {last}");
        assert!(last <= ms(CAP), "but never past the cap: {last}");
    }

    #[test]
    fn a_scout_polls_from_two_ms_growing() {
        let mut s = PollSchedule::new(CAP);
        let delays: Vec<f64> = (0..40)
            .map(|_| ms(s.next_delay(Knowledge::Scout)))
            .collect();
        assert!((1.7..=2.3).contains(&delays[0]), "{delays:?}");
        assert!(
            (2.55..=3.45).contains(&delays[1]),
            "then 1 ms more: {delays:?}"
        );
        assert!(delays[30] > 100.0, "geometric past 10 ms: {delays:?}");
        assert!(
            delays.iter().all(|&d| (1.0..=ms(CAP)).contains(&d)),
            "{delays:?}"
        );
    }

    #[test]
    fn an_estimate_that_appears_mid_wait_is_used_at_once() {
        let mut s = PollSchedule::new(CAP);
        for _ in 0..8 {
            s.next_delay(Knowledge::Scout);
        }
        // 44 ms waited so far, well within twice the new estimate.
        let d = ms(s.next_delay(Knowledge::Expected(Duration::from_millis(100))));
        assert!((17.0..=23.0).contains(&d), "E/5 of the new estimate: {d}");
    }

    #[test]
    fn one_waiter_scouts_the_others_follow_until_something_is_learnt() {
        let estimates = Estimates::default();
        let site = site_of::<fn()>();
        let (mut a, mut b) = (estimates.wait(site), estimates.wait(site));
        assert_eq!(a.knowledge(), Knowledge::Scout);
        assert_eq!(b.knowledge(), Knowledge::Follower);
        assert_eq!(a.knowledge(), Knowledge::Scout, "the scout stays the scout");
        let learned = b.learned();
        let woken = learned.notified();
        let mut woken = std::pin::pin!(woken);
        woken.as_mut().enable();
        estimates.record_wait(site, Duration::from_millis(20));
        assert!(
            futures_ready(woken),
            "followers are woken by what is learnt"
        );
        assert_eq!(
            b.knowledge(),
            Knowledge::Expected(Duration::from_millis(20))
        );
    }

    #[test]
    fn a_scout_that_leaves_empty_handed_hands_its_part_on() {
        let estimates = Estimates::default();
        let site = site_of::<fn()>();
        let (mut a, mut b) = (estimates.wait(site), estimates.wait(site));
        assert_eq!(a.knowledge(), Knowledge::Scout);
        assert_eq!(b.knowledge(), Knowledge::Follower);
        drop(a);
        assert_eq!(b.knowledge(), Knowledge::Scout);
    }

    #[test]
    fn a_follower_polls_rarely_as_a_safety_net() {
        let mut s = PollSchedule::new(CAP);
        let delays: Vec<f64> = (0..3)
            .map(|_| ms(s.next_delay(Knowledge::Follower)))
            .collect();
        assert!(
            (6.8..=9.2).contains(&delays[0]) && delays[2] > 25.0,
            "{delays:?}"
        );
    }

    /// Whether a future is ready at once.
    fn futures_ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        future
            .poll(&mut std::task::Context::from_waker(waker))
            .is_ready()
    }

    #[test]
    fn never_a_tight_loop() {
        let mut s = PollSchedule::new(Duration::ZERO);
        for _ in 0..100 {
            assert!(s.next_delay(Knowledge::Expected(Duration::from_nanos(10))) >= MIN_POLL);
        }
    }

    #[test]
    fn estimates_prefer_runs_and_follow_change() {
        let e = Estimates::default();
        let site = site_of::<fn()>();
        assert_eq!(e.expected_run(site), None);
        e.record_wait(site, Duration::from_millis(40));
        assert_eq!(
            e.expected_run(site),
            Some(Duration::from_millis(40)),
            "waits, while nothing ran here"
        );
        e.record_run(site, Duration::from_millis(100));
        assert_eq!(
            e.expected_run(site),
            Some(Duration::from_millis(100)),
            "runs, once seen"
        );
        e.record_run(site, Duration::from_millis(200));
        assert_eq!(
            e.expected_run(site),
            Some(Duration::from_millis(125)),
            "a moving average"
        );
    }
}
