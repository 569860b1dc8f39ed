//! The locked get: what happens on a call, top to bottom, over any [`Store`] (ARCHITECTURE.md,
//! "The path of a call").
//!
//! 1. Within this process, the first caller of a key leads; later callers await the leader's
//!    result (`coalesce.rs`) and try again if it ends without a value.
//! 2. The leader looks the key up, which in one round trip either finds the value, wins the lease
//!    (the store's right to compute), or finds the lease held by someone else. A value near its
//!    end (`refresh_ahead`) may come with the right to refresh it: the leader hands the value to
//!    this process's followers at once, then runs the getter and stores its result under the
//!    value's version, returning the current value if that fails.
//! 3. A winner runs the getter, bounded by the call's deadline with panics caught, extending its
//!    short lease every second meanwhile, then fills the store under its lease, or hands the
//!    lease back if the getter failed, panicked or ran out of time. A loser polls on the schedule of `schedule.rs` until the value appears, the lease
//!    frees up (its holder died) and it wins it, or the deadline passes.
//! 4. If the store cannot be reached, the leader runs the getter itself (degraded), unless the
//!    cache is configured to fail.
//!
//! Everything is bounded by one deadline, `exec_limit` from the start of the call: the store's
//! lookups stop at it. Past it, at most one store operation may run (storing the value of a getter
//! that finished just in time, or handing the lease back after a failure), bounded by the store's
//! own timeouts.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{debug, error, warn};

use crate::coalesce::{Ended, Join, Leader};
use crate::codec::{
    self, DecodeError, EncodeError, FRESHNESS_BYTES, FRESHNESS_FLAGS, Freshness, JSON_FLAGS,
    ZSTD_FRESHNESS_FLAGS, ZSTD_JSON_FLAGS,
};
use crate::core::{Core, MAX_DURATION, OnUnavailable, Tasks};
use crate::entry::{self, Decision};
use crate::error::Error;
use crate::key::WireKey;
use crate::near::{Keep, NearChoice, Sent};
use crate::options::GetOptions;
use crate::schedule::{Knowledge, PollSchedule, Site, SiteWait};
use crate::store::{
    Fill, Item, Lease, Lookup, MANIFEST_FLAGS, Store, StoreError, StoreErrorKind, whole_seconds,
};

/// After this many undecodable items in one call, the call stops fighting over the key: it runs
/// the getter and returns the value without storing it.
const MAX_DECODE_MISSES: u32 = 2;

/// How long a lease lasts unless its holder extends it. A holder that dies, or never learns
/// it won (its reply was lost), blocks the key this long at most, instead of its `exec_limit`
/// (a lost reply's lease is handed back sooner if its process reconnects: `orphans.rs`).
/// memcached's clock ticks in whole seconds: a TTL of 4 s lasts more than 3.
pub(crate) const LEASE: Duration = Duration::from_secs(4);
/// How often a holder extends its lease while its getter runs.
const EXTEND_EVERY: Duration = Duration::from_secs(1);
/// A lease is known to be alive for its TTL less this, after the lookup that won it or its last
/// extension: memcached's one-second tick, and half a second for the round trip. Past that, the
/// holder no longer touches the key, which may be another's by then.
const LEASE_MARGIN: Duration = Duration::from_millis(1500);
/// How long a key is marked after its getter chose not to store the value: memcached's least,
/// enough for the callers waiting on the lease to see it.
const SKIPPED_MARKER_TTL: Duration = Duration::from_secs(1);
/// The longest a failed recompute of a stale value backs its key off when `error_backoff` is not
/// set: the value's `expire`, at most this (FusionCache's throttle). A failing origin is asked at
/// most once per key per `expire`, as a healthy one is, and at least every 30 s, so that its
/// recovery shows within 30 s.
const STALE_RETRY_CAP: Duration = Duration::from_secs(30);
/// How long a claim to recompute a stale value outlasts the claimant's `exec_limit`: if it dies,
/// another caller takes over at most this long after the call's bound.
const CLAIM_MARGIN: Duration = Duration::from_secs(1);

/// What a call computes its value with: called at most once, its future resolving to the value
/// or the caller's own error. The one bound every function that passes a getter along takes.
pub(crate) trait Getter<T, E>: Sized {
    type Future: Future<Output = Result<T, E>>;
    fn call(self) -> Self::Future;

    /// Whether [`detach`](Getter::detach) can send this getter to a task of its own.
    const DETACHABLE: bool = false;

    /// How its values are kept near, if they are ([`WithNear`]). A constant per getter type:
    /// the near cache's code is compiled out of the calls that cannot keep values.
    #[inline]
    fn keep(&self) -> Option<Keep<T>> {
        None
    }

    /// Runs `job`, the rest of a claimed recompute, with this getter in a task of its own, and
    /// says how it ended. Only a [`Detachable`] getter can be sent there; any other is given
    /// back.
    fn detach<S: Store>(
        self,
        job: Job<S, T>,
        tasks: &Tasks,
    ) -> Result<oneshot::Receiver<Recomputed<T, E>>, Self> {
        let _ = (job, tasks);
        Err(self)
    }
}

/// How a claimed recompute ended.
pub(crate) enum Recomputed<T, E> {
    /// With a new value (stored, unless it could not be).
    New(T),
    /// Without one: the getter's error (a panic or a timeout made one). `kept`: the key was
    /// backed off under the claim, so the value the caller has is still the key's; otherwise
    /// it was invalidated or replaced meanwhile, and must not be served.
    Failed { error: E, kept: bool },
}

/// A getter that may outlive its call (`Cache::get_detached`): it, its future, its value and
/// its error can all be sent to a task of their own.
pub(crate) struct Detachable<F>(pub(crate) F);

impl<T, E, F, Fut> Getter<T, E> for Detachable<F>
where
    T: Serialize + DeserializeOwned + Send + 'static,
    E: From<Error> + std::fmt::Debug + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    type Future = Fut;
    const DETACHABLE: bool = true;

    #[inline]
    fn call(self) -> Fut {
        (self.0)()
    }

    fn detach<S: Store>(
        self,
        job: Job<S, T>,
        tasks: &Tasks,
    ) -> Result<oneshot::Receiver<Recomputed<T, E>>, Self> {
        let (sender, receiver) = oneshot::channel();
        tasks.spawn(async move {
            let ended = job.run(self).await;
            // The caller may have returned (soft timeout) or been cancelled: nobody to tell.
            let _ = sender.send(ended);
        });
        Ok(receiver)
    }
}

/// A getter whose values may be kept near: `near` says how (`Cache::get_near`, or a
/// `#[distcached]` function whose value type allows it).
pub(crate) struct WithNear<G, N>(pub(crate) G, pub(crate) N);

impl<T, E, G, N> Getter<T, E> for WithNear<G, N>
where
    G: Getter<T, E>,
    N: NearChoice<T>,
{
    type Future = G::Future;
    const DETACHABLE: bool = G::DETACHABLE;

    #[inline]
    fn call(self) -> G::Future {
        self.0.call()
    }

    #[inline]
    fn keep(&self) -> Option<Keep<T>> {
        self.1.keep()
    }

    fn detach<S: Store>(
        self,
        job: Job<S, T>,
        tasks: &Tasks,
    ) -> Result<oneshot::Receiver<Recomputed<T, E>>, Self> {
        let WithNear(getter, near) = self;
        getter
            .detach(job, tasks)
            .map_err(|getter| WithNear(getter, near))
    }
}

/// The rest of a claimed recompute, owned, to run in a task of its own (`Getter::detach`).
pub(crate) struct Job<S, T> {
    core: Arc<Core>,
    store: S,
    key: String,
    wire: WireKey,
    deadline: Instant,
    exec_limit: Duration,
    expire: Duration,
    error_backoff: Option<Duration>,
    /// The call's, its `stale_if_error` resolved.
    options: GetOptions,
    site: Site,
    claimed: Lease,
    header: Freshness,
    json: bytes::Bytes,
    /// How the call kept values near, so that the job keeps the value it stores.
    keep: Option<Keep<T>>,
    near_ttl: Duration,
}

impl<S: Store, T> Job<S, T> {
    async fn run<E, F>(self, getter: F) -> Recomputed<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: Getter<T, E>,
    {
        let call = Call {
            core: &self.core,
            tasks: None,
            store: &self.store,
            key: &self.key,
            wire: self.wire,
            deadline: self.deadline,
            exec_limit: self.exec_limit,
            expire: self.expire,
            refresh_ahead: 0.0,
            error_backoff: self.error_backoff,
            options: &self.options,
            site: self.site,
            near_ttl: self.near_ttl,
        };
        call.recompute_claimed(self.claimed, self.header, &self.json, self.keep, getter)
            .await
    }
}

impl<T, E, F, Fut> Getter<T, E> for F
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Future = Fut;

    #[inline]
    fn call(self) -> Fut {
        self()
    }
}

pub(crate) async fn get<S, T, E, F>(
    core: &Core,
    tasks: Option<&Tasks>,
    store: &S,
    site: Site,
    key: &str,
    options: &GetOptions,
    getter: F,
) -> Result<T, E>
where
    S: Store,
    T: Serialize + DeserializeOwned,
    E: From<Error> + std::fmt::Debug,
    F: Getter<T, E>,
{
    if let Err(reason) = check(options) {
        return Err(Error::InvalidArgument {
            key: key.to_owned(),
            reason,
        }
        .into());
    }
    let GetOptions {
        exec_limit,
        expire,
        refresh_ahead,
        error_backoff,
        near_ttl,
        ..
    } = *options;
    // Per call (or per function), then the cache's. `stale_if_error` and `soft_timeout` are
    // resolved where they are used (`Call::max_stale`, `Call::soft_timeout`): a hit reads
    // neither.
    let refresh_ahead = refresh_ahead.unwrap_or(core.config.refresh_ahead);
    let error_backoff = error_backoff.or(core.config.error_backoff);
    // Values are kept near only by calls whose getter can keep them (`WithNear`), which have
    // looked for a near hit before this (`near_hit`).
    let near_ttl = match getter.keep() {
        Some(_) => near_ttl.unwrap_or(core.config.near_ttl),
        None => Duration::ZERO,
    };
    let call = Call {
        core,
        tasks,
        store,
        key,
        wire: core.keys.encode(key),
        deadline: Instant::now() + exec_limit,
        exec_limit,
        expire,
        refresh_ahead,
        error_backoff,
        options,
        site,
        near_ttl,
    };
    loop {
        match core.flights.join(&call.wire) {
            Join::Leader(leader) => return call.lead(leader, getter).await,
            Join::Follower(follower) => {
                core.stats.coalesced_waits.incr();
                match timeout_at(call.deadline, follower.wait()).await {
                    Err(_elapsed) => return Err(call.timed_out()),
                    Ok(Ended::Value(json)) => match codec::decode(JSON_FLAGS, &json) {
                        Ok(value) => return Ok(value),
                        Err(err) => call.decode_miss(&err),
                    },
                    // Nobody can share the value: compute our own now, not in turn.
                    Ok(Ended::Uncached) => {
                        core.stats.uncached_calls.incr();
                        return call.run_getter(getter).await;
                    }
                    // The leader failed or was cancelled: try again; one of us leads next.
                    Ok(Ended::Failed) => {}
                }
            }
        }
    }
}

/// Whether a call's options are ones it accepts; why not, for [`Error::InvalidArgument`]. Checked
/// where the options were made ([`GetOptions::refused`]).
#[inline]
fn check(options: &GetOptions) -> Result<(), &'static str> {
    options.refused().map_or(Ok(()), Err)
}

/// `key`'s value from the near cache, for a call that can keep values (`keep`) and has a
/// `near_ttl`, with options it accepts (otherwise [`get`] says why). Called first, before the
/// call's future is built: a near hit is a map lookup and a clone.
#[inline]
pub(crate) fn near_hit<T>(
    core: &Core,
    key: &str,
    options: &GetOptions,
    keep: Option<Keep<T>>,
) -> Option<T> {
    let keep = keep?;
    let near_ttl = options.near_ttl.unwrap_or(core.config.near_ttl);
    if near_ttl.is_zero() || check(options).is_err() {
        return None;
    }
    let value = core.near.get()?.get(key, keep, near_ttl)?;
    core.stats.near_hits.incr();
    Some(value)
}

/// Runs `getter` within `exec_limit`, without the store: the call has no usable key (the
/// macro could not serialize its arguments). Counted as uncached.
pub(crate) async fn run_uncached<S, T, E, F>(
    core: &Core,
    store: &S,
    site: Site,
    label: &str,
    exec_limit: Duration,
    getter: F,
) -> Result<T, E>
where
    S: Store,
    E: From<Error>,
    F: Getter<T, E>,
{
    // The options of a call with no expire to speak of: only `exec_limit` can be refused.
    let options = GetOptions::new(exec_limit, exec_limit);
    if let Err(reason) = check(&options) {
        return Err(Error::InvalidArgument {
            key: label.to_owned(),
            reason,
        }
        .into());
    }
    core.stats.uncached_calls.incr();
    let call = Call {
        core,
        tasks: None,
        store,
        key: label,
        wire: core.keys.encode(label),
        deadline: Instant::now() + exec_limit,
        exec_limit,
        expire: exec_limit,
        refresh_ahead: 0.0,
        error_backoff: None,
        options: &options,
        site,
        near_ttl: Duration::ZERO,
    };
    call.run_getter(getter).await
}

/// How long a value found by a lookup that asked for its life may be kept near, counted from
/// when the lookup was sent: its life left in the store and, for a value that carries its
/// freshness, until it stops being fresh; less the call's refresh window, so that this process
/// still reads the store when the value is due to be refreshed ahead. `None`: not at all.
fn near_life(item: &Item, refresh_window: Duration) -> Option<Duration> {
    let life = item.life().unwrap_or(MAX_DURATION);
    let life = if item.flags == FRESHNESS_FLAGS {
        let header = Freshness::read(&item.data)?;
        let now = codec::unix_millis(std::time::SystemTime::now());
        life.min(Duration::from_millis(header.fresh_until.checked_sub(now)?))
    } else {
        life
    };
    life.checked_sub(refresh_window)
}

/// What the leader does after a lookup.
enum Step<T> {
    Value(T, bytes::Bytes),
    /// A value near its end, ours to refresh under its version.
    Refresh(T, bytes::Bytes, Lease),
    Undecodable(codec::DecodeError, Lease),
    /// A marker: the value was found unstorable by the caller that computed it; `true` if this
    /// process's callers may still share one run (it has JSON, only too large).
    Unstorable(bool, String),
    /// The key's getter failed and is backed off until then; the marker's version.
    Backoff(std::time::SystemTime, Lease),
    /// A value past its `expire`, served as it is: another caller recomputes it, or the key is
    /// backed off.
    Stale(T, bytes::Bytes),
    /// A value past its `expire` (or near it, refreshing ahead) that nobody recomputes: ours to
    /// claim and recompute.
    Due(Box<Due<T>>),
    /// A value past what this call serves stale: removed (if still that version), as gone.
    Expired(Lease),
    Won(Lease),
    Busy,
}

/// A value with freshness ([`codec::FRESHNESS_FLAGS`]) that is due to be recomputed.
struct Due<T> {
    value: T,
    json: bytes::Bytes,
    header: Freshness,
    version: Lease,
    /// Past its `expire`, rather than refreshed ahead of it.
    stale: bool,
}

/// How a getter run ended without a value.
enum Failed<E> {
    /// Its own error.
    Error(E),
    /// It panicked (caught, with its message).
    Panicked(String),
    /// It was still running at the call's deadline and was dropped.
    TimedOut,
}

/// One call's context.
struct Call<'a, S> {
    core: &'a Core,
    /// Where a recompute may be left to finish (`soft_timeout`); `None` within such a task.
    tasks: Option<&'a Tasks>,
    store: &'a S,
    key: &'a str,
    wire: WireKey,
    deadline: Instant,
    exec_limit: Duration,
    expire: Duration,
    /// The fraction of `expire` refreshed ahead (0: never): the call's, or the cache's.
    refresh_ahead: f64,
    /// How long a failing getter is backed off (`None`: not): the call's, or the cache's.
    error_backoff: Option<Duration>,
    /// The call's options, for those resolved only where they are used.
    options: &'a GetOptions,
    site: Site,
    /// How long the values this call reads or writes are kept near; zero: not.
    near_ttl: Duration,
}

impl<S: Store> Call<'_, S> {
    /// How long past `expire` a value is kept, and served if recomputing it fails (zero: not):
    /// the call's, or the cache's.
    fn max_stale(&self) -> Duration {
        self.options
            .stale_if_error
            .unwrap_or(self.core.config.stale_if_error)
    }

    /// How long a detachable getter is awaited when the call has a value to return (`None`:
    /// until it ends): the call's, or the cache's.
    fn soft_timeout(&self) -> Option<Duration> {
        self.options.soft_timeout.or(self.core.config.soft_timeout)
    }

    async fn lead<T, E, F>(&self, leader: Leader<'_>, getter: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: Getter<T, E>,
    {
        let stats = &self.core.stats;
        let mut waiting: Option<(Instant, PollSchedule, SiteWait<'_>)> = None;
        let mut decode_misses = 0;
        let mut first = true;
        loop {
            if waiting.is_some() {
                stats.wait_lookups.incr();
            }
            // Asked of the getter at each use, not kept across an await: for a getter that keeps
            // nothing it is a constant, and the near cache's code goes from the hit path.
            let sent = self.keeps(&getter).map(|_| self.core.near().sent());
            let lookup = match self
                .store
                .lookup(
                    &self.wire,
                    self.lease_ttl(),
                    self.refresh_window(),
                    self.keeps(&getter).is_some(),
                    self.deadline,
                )
                .await
            {
                Ok(mut lookup) => {
                    // Stored in chunks, or compressed: from here on, the value as it would be
                    // stored whole (or a miss, if it cannot be had). Boxed: the hit path's future
                    // does not carry this one's state.
                    if let Lookup::Hit(item) | Lookup::Refresh(item) = &mut lookup
                        && packed(item.flags)
                        && let Err(err) = Box::pin(self.unpack_by_deadline(item)).await
                    {
                        drop(waiting);
                        return self.without_store(leader, getter, err).await;
                    }
                    lookup
                }
                Err(err) => {
                    // A scout hands its part on before the getter runs (as below).
                    drop(waiting);
                    return self.without_store(leader, getter, err).await;
                }
            };
            // How long a value found may be kept near: its own life left, counted from `sent`.
            let life = match (self.keeps(&getter), &lookup) {
                (Some(_), Lookup::Hit(item) | Lookup::Refresh(item)) => {
                    near_life(item, self.refresh_window())
                }
                _ => None,
            };
            let step = match lookup {
                Lookup::Hit(item) | Lookup::Refresh(item) if item.flags == FRESHNESS_FLAGS => {
                    self.judge(item)
                }
                Lookup::Hit(item) => match codec::decode(item.flags, &item.data) {
                    Ok(value) => Step::Value(value, item.data),
                    Err(DecodeError::Unstorable { shareable, reason }) => {
                        Step::Unstorable(shareable, reason)
                    }
                    Err(DecodeError::Backoff { until }) => Step::Backoff(until, item.version),
                    Err(err) => Step::Undecodable(err, item.version),
                },
                Lookup::Refresh(item) => match codec::decode(item.flags, &item.data) {
                    Ok(value) => Step::Refresh(value, item.data, item.version),
                    Err(DecodeError::Unstorable { shareable, reason }) => {
                        Step::Unstorable(shareable, reason)
                    }
                    Err(DecodeError::Backoff { until }) => Step::Backoff(until, item.version),
                    Err(err) => Step::Undecodable(err, item.version),
                },
                Lookup::Won(lease) => Step::Won(lease),
                Lookup::Busy => Step::Busy,
            };
            if std::mem::take(&mut first) {
                match step {
                    Step::Value(..) | Step::Refresh(..) | Step::Stale(..) | Step::Due(..) => {
                        stats.hits.incr();
                    }
                    _ => stats.misses.incr(),
                }
            }
            match step {
                Step::Value(value, json) => {
                    if let Some((since, ..)) = waiting {
                        self.core.estimates.record_wait(self.site, since.elapsed());
                    }
                    if let (Some(keep), Some(sent), Some(life)) = (self.keeps(&getter), sent, life)
                    {
                        self.keep_near(keep, &value, json.len(), sent, life);
                    }
                    leader.publish(json);
                    return Ok(value);
                }
                Step::Refresh(value, json, version) => {
                    if let Some((since, ..)) = waiting {
                        self.core.estimates.record_wait(self.site, since.elapsed());
                    }
                    drop(waiting);
                    // The current value, for what it has left, until its successor is stored and
                    // kept in its place (`refresh`).
                    if let (Some(keep), Some(sent), Some(life)) = (self.keeps(&getter), sent, life)
                    {
                        self.keep_near(keep, &value, json.len(), sent, life);
                    }
                    // This process's other callers take the current value now, not after the
                    // getter; later callers find it in the store, which answers them a plain hit.
                    leader.publish(json);
                    return Ok(self.refresh(version, value, getter).await);
                }
                Step::Stale(value, json) => {
                    stats.stale_served.incr();
                    leader.publish(json);
                    return Ok(value);
                }
                Step::Due(due) => {
                    drop(waiting);
                    // As on a refresh: this process's callers take the current value now.
                    leader.publish(due.json.clone());
                    return self.recompute(due, getter).await;
                }
                Step::Expired(version) => {
                    // Removed, as an expired item would be; the next lookup wins the lease.
                    if let Err(err) = self.store.release(&self.wire, version).await {
                        drop(waiting);
                        return self.without_store(leader, getter, err).await;
                    }
                }
                Step::Undecodable(err, version) => {
                    self.decode_miss(&err);
                    decode_misses += 1;
                    if decode_misses > MAX_DECODE_MISSES {
                        stats.unstorable_values.incr();
                        drop(waiting);
                        return self.run_unstored(leader, getter).await;
                    }
                    // Remove that item (and nothing that replaced it meanwhile); the next lookup
                    // wins the lease, or finds another caller's, as on any miss.
                    if let Err(err) = self.store.release(&self.wire, version).await {
                        drop(waiting);
                        return self.without_store(leader, getter, err).await;
                    }
                }
                Step::Unstorable(shareable, reason) => {
                    // The caller that computed it could not store it: no other process can
                    // share it with us, so we compute our own at once. This process's callers
                    // waiting on us share our run if the value has JSON (only too large), and
                    // otherwise compute their own at once too, instead of taking turns.
                    drop(waiting);
                    stats.uncached_calls.incr();
                    debug!(key = self.key, %reason, "the key's value cannot be stored; running the getter here");
                    if shareable {
                        return self.run_unstored(leader, getter).await;
                    }
                    leader.uncached();
                    return self.run_getter(getter).await;
                }
                Step::Backoff(until, version) => {
                    if std::time::SystemTime::now() < until {
                        drop(waiting);
                        stats.backoffs.incr();
                        return Err(Error::Backoff {
                            key: self.key.to_owned(),
                            until,
                        }
                        .into());
                    }
                    // Over: remove the marker (and nothing that replaced it); the next lookup
                    // wins the lease, one caller fleet-wide, and tries the getter again.
                    if let Err(err) = self.store.release(&self.wire, version).await {
                        drop(waiting);
                        return self.without_store(leader, getter, err).await;
                    }
                }
                Step::Won(lease) => {
                    // A waiter that wins the lease (its holder died) stops waiting: if it was
                    // scouting the site, the part goes to another waiter now, not after the getter.
                    drop(waiting);
                    return self.compute(leader, lease, getter).await;
                }
                Step::Busy => {
                    let (_, schedule, site) = waiting.get_or_insert_with(|| {
                        stats.lease_waits.incr();
                        // The lookup that found the lease held counts as the first of the wait.
                        stats.wait_lookups.incr();
                        (
                            Instant::now(),
                            PollSchedule::new(self.core.config.max_poll_interval),
                            self.core.estimates.wait(self.site),
                        )
                    });
                    // Listening before asking what is known: a lesson in between is not missed.
                    let learned = site.learned();
                    let mut learnt = std::pin::pin!(learned.notified());
                    learnt.as_mut().enable();
                    let knowledge = site.knowledge();
                    let wake = (Instant::now() + schedule.next_delay(knowledge)).min(self.deadline);
                    if knowledge == Knowledge::Follower {
                        tokio::select! {
                            () = sleep_until(wake) => {}
                            () = learnt => {}
                        }
                    } else {
                        sleep_until(wake).await;
                    }
                    if Instant::now() >= self.deadline {
                        return Err(self.timed_out());
                    }
                }
            }
        }
    }

    /// We hold the lease: run the getter, then store its value or hand the lease back.
    async fn compute<T, E, F>(&self, leader: Leader<'_>, lease: Lease, getter: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Getter<T, E>,
    {
        let mut held = HeldLease {
            store: self.store,
            wire: &self.wire,
            lease: Some(lease),
            marker: None,
        };
        let keep = self.keeps(&getter);
        let (value, decision) = match self.run_getter_holding(lease, getter).await {
            Ok(ended) => ended,
            Err(err) => {
                // Before the followers hear of the failure (when `leader` drops): hand the lease
                // back, so that the one that tries next wins it at once; or, backing off, fill
                // it with the backoff's marker, so that every caller gets `Error::Backoff`.
                match self.error_backoff {
                    Some(backoff) => {
                        held.disarm();
                        self.back_off(lease, backoff).await;
                    }
                    None => held.release().await,
                }
                return Err(err);
            }
        };
        if decision.skip_store {
            // The getter chose not to store its value: this process's callers share it; the
            // key is marked for a second, so that callers waiting in other processes run their
            // own at once, and later calls lease it again.
            held.disarm();
            self.core.stats.skipped_stores.incr();
            debug!(key = self.key, "the getter chose not to store its value");
            let (marker, flags) = codec::skipped_marker();
            let marked = self
                .store
                .fill(&self.wire, lease, &marker, flags, SKIPPED_MARKER_TTL)
                .await;
            if marked.is_err() {
                self.store.release_later(&self.wire, lease);
            }
            return Ok(self.run_shared(leader, value));
        }
        let json = match codec::encode_for_store(&value, self.core.config.max_value_bytes) {
            Ok(json) => json,
            Err(err) => {
                // Fill the lease with a marker rather than hand it back: callers waiting in other
                // processes then compute their own at once, instead of winning the lease one
                // after another to find the same value unstorable (`Step::Unstorable`).
                let (marker, flags) = codec::unstorable_marker(&err);
                let marked = self
                    .store
                    .fill(&self.wire, lease, &marker, flags, self.marker_ttl())
                    .await;
                if !matches!(marked, Ok(Fill::TooLarge)) {
                    held.disarm();
                }
                if let Err(store) = marked {
                    self.core.stats.store_errors.incr();
                    debug!(key = self.key, error = %store, "marking the value unstorable failed");
                }
                return Ok(self.unstorable(leader, value, err));
            }
        };
        let expire = self.expire_of(decision);
        let sent = keep.map(|_| self.core.near().sent());
        let filled = self.fill(lease, &json, expire).await;
        self.record_fill(&filled, json.len());
        self.wrote(keep, &json, sent, expire, &filled);
        if filled.is_err() {
            // Stored or not, nobody can tell: handed back when the node can next be reached,
            // which does nothing if it was stored, and otherwise frees the key at once.
            self.store.release_later(&self.wire, lease);
        }
        // The lease is spent, except when the server refused the value's size: then `held`
        // marks the key from a spawned task when it drops (under a new lease: memcached deletes
        // the stub with the value it refuses), so that other processes do not take turns at the
        // getter either (the call has had its one store operation past the getter).
        match filled {
            Ok(Fill::TooLarge) => {
                let (bytes, flags) = codec::refused_marker(json.len());
                held.marker = Some(Marker {
                    bytes,
                    flags,
                    ttl: self.marker_ttl(),
                    lease_ttl: self.lease_ttl(),
                });
            }
            _ => held.disarm(),
        }
        leader.publish(json);
        Ok(value)
    }

    /// Stores a computed value's JSON under `lease`, for `expire`: as it is, or, keeping stale
    /// values (`stale_if_error`), after a freshness header, for `expire` + `max_stale`;
    /// compressed if that pays (`codec::pack`). The store puts a value over an item in chunks.
    async fn fill(
        &self,
        lease: Lease,
        json: &bytes::Bytes,
        expire: Duration,
    ) -> Result<Fill, StoreError> {
        if self.max_stale().is_zero() {
            return self.fill_packed(lease, json, expire).await;
        }
        let fresh_until = codec::unix_millis(std::time::SystemTime::now()) + millis(expire);
        let header = Freshness {
            fresh_until,
            stale_until: fresh_until.saturating_add(millis(self.max_stale())),
            retry_at: 0,
        };
        let ttl = expire.saturating_add(self.max_stale());
        let (bytes, flags) = codec::pack_off_worker(Some(header), json, Some(self.deadline)).await;
        self.store.fill(&self.wire, lease, &bytes, flags, ttl).await
    }

    /// Stores a value's JSON without a freshness header under `lease` (a lease, or the version a
    /// refresh replaces): compressed if that pays (`codec::pack`).
    async fn fill_packed(
        &self,
        lease: Lease,
        json: &bytes::Bytes,
        expire: Duration,
    ) -> Result<Fill, StoreError> {
        let (bytes, flags) = codec::pack_off_worker(None, json, Some(self.deadline)).await;
        self.store
            .fill(&self.wire, lease, &bytes, flags, expire)
            .await
    }

    /// [`unpack`](Self::unpack), by the call's deadline: its work on blocking threads may queue.
    async fn unpack_by_deadline(&self, item: &mut Item) -> Result<(), StoreError> {
        match timeout_at(self.deadline, self.unpack(item)).await {
            Ok(unpacked) => unpacked,
            Err(_) => Err(StoreError {
                operation: "unpack",
                node: "this process".into(),
                kind: StoreErrorKind::Deadline,
            }),
        }
    }

    /// A big value's manifest or a compressed item, as the item it stands for (its JSON, after
    /// its freshness header if it has one); or, if it is unreadable (a chunk missing or wrong, a
    /// frame corrupt, foreign, or declaring more than `max_value_bytes`), as an item that decodes
    /// as a miss. Fails as a lookup does if a chunk's node cannot be asked.
    #[cold]
    #[inline(never)]
    async fn unpack(&self, item: &mut Item) -> Result<(), StoreError> {
        if item.flags == MANIFEST_FLAGS {
            self.store.assemble(&self.wire, item, self.deadline).await?;
        }
        if item.flags != ZSTD_JSON_FLAGS && item.flags != ZSTD_FRESHNESS_FLAGS {
            return Ok(());
        }
        let max = self.core.config.max_value_bytes;
        match codec::unpack_off_worker(item.flags, &item.data, max).await {
            Ok((data, flags)) => {
                item.data = data;
                item.flags = flags;
            }
            Err(err) => {
                debug!(key = self.key, error = %err, "a compressed item is unreadable");
                item.flags = codec::UNREADABLE_FLAGS;
            }
        }
        Ok(())
    }

    /// How this call keeps values near, if it does: its getter's way, if it has a `near_ttl`.
    #[inline]
    fn keeps<T, E, F: Getter<T, E>>(&self, getter: &F) -> Option<Keep<T>> {
        getter.keep().filter(|_| !self.near_ttl.is_zero())
    }

    /// After a write of `json` for `life` (marked `sent` if the call keeps values): a value stored
    /// is kept in place of the one kept before, or, by a call that keeps nothing, the one kept
    /// before is dropped, so that this process's reads do not go back to it.
    fn wrote<T: DeserializeOwned>(
        &self,
        keep: Option<Keep<T>>,
        json: &bytes::Bytes,
        sent: Option<Sent>,
        life: Duration,
        filled: &Result<Fill, StoreError>,
    ) {
        if !matches!(filled, Ok(Fill::Stored)) {
            return;
        }
        match (keep, sent) {
            (Some(keep), Some(sent)) => self.keep_written(keep, json, sent, life),
            _ => {
                if let Some(near) = self.core.near.get() {
                    near.remove(self.key);
                }
            }
        }
    }

    /// Keeps a value this call wrote for `life`, as the store's readers will read it: decoded from
    /// its JSON (a field the JSON leaves out reads as a reader elsewhere reads it, not as the
    /// getter set it); until its refresh window, as a value read is (`near_life`).
    fn keep_written<T: DeserializeOwned>(
        &self,
        keep: Keep<T>,
        json: &bytes::Bytes,
        sent: Sent,
        life: Duration,
    ) {
        let Some(life) = life.checked_sub(self.refresh_window()) else {
            return;
        };
        if let Ok(value) = codec::decode::<T>(JSON_FLAGS, json) {
            self.keep_near(keep, &value, json.len(), sent, life);
        }
    }

    /// Keeps `value` near, read or written by the store operation marked `sent`, for `near_ttl`,
    /// or `life` if that is shorter.
    fn keep_near<T>(&self, keep: Keep<T>, value: &T, bytes: usize, sent: Sent, life: Duration) {
        let lasts = self.near_ttl.min(life);
        self.core
            .near()
            .keep(self.key, keep, value, bytes, sent, lasts);
    }

    /// What to do with a value that carries its freshness: serve it (fresh, or stale while
    /// another caller recomputes it), recompute it, or take it as gone.
    fn judge<T: DeserializeOwned>(&self, item: Item) -> Step<T> {
        let Some(header) = Freshness::read(&item.data) else {
            return Step::Undecodable(DecodeError::Freshness, item.version);
        };
        let json = item.data.slice(FRESHNESS_BYTES..);
        let value = match codec::decode(JSON_FLAGS, &json) {
            Ok(value) => value,
            Err(err) => return Step::Undecodable(err, item.version),
        };
        let now = codec::unix_millis(std::time::SystemTime::now());
        let fresh_until = header.fresh_until;
        if now < fresh_until.saturating_sub(millis(self.refresh_window())) {
            return Step::Value(value, json);
        }
        let stale = now >= fresh_until;
        // Served stale until the writer's bound, or this call's if it is shorter: a call that
        // keeps no stale values takes one as gone.
        let servable = header
            .stale_until
            .min(fresh_until.saturating_add(millis(self.max_stale())));
        if stale && now >= servable {
            return Step::Expired(item.version);
        }
        if now < header.retry_at {
            return if stale {
                Step::Stale(value, json)
            } else {
                Step::Value(value, json)
            };
        }
        Step::Due(Box::new(Due {
            value,
            json,
            header,
            version: item.version,
            stale,
        }))
    }

    /// A value with freshness is due: claim its recompute (one caller fleet-wide wins the claim,
    /// by a swap of the version read), run the getter, and store its result. Until it ends,
    /// every other caller gets the current value. If the getter fails, panics or runs out of
    /// time, or the claim is lost, the current value is the answer; after a failure, nobody
    /// recomputes the key for its backoff. A claim lasts until the call's bound and a second:
    /// a claimant that dies holds up the recompute no longer.
    async fn recompute<T, E, F>(&self, due: Box<Due<T>>, getter: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: Getter<T, E>,
    {
        let stats = &self.core.stats;
        let Due {
            value: current,
            json,
            header,
            version,
            stale,
        } = *due;
        // The value the caller has is its answer only while it may be served: checked when the
        // call returns, which may be up to `exec_limit` after it was read.
        let servable_until = header
            .stale_until
            .min(header.fresh_until.saturating_add(millis(self.max_stale())));
        // `None` once it may no longer be served.
        let serve_current = || {
            if codec::unix_millis(std::time::SystemTime::now()) >= servable_until {
                return None;
            }
            if stale {
                stats.stale_served.incr();
            }
            Some(current)
        };
        let claim_ends = self.deadline + CLAIM_MARGIN;
        let claim = Freshness {
            retry_at: codec::unix_millis(
                std::time::SystemTime::now() + claim_ends.saturating_duration_since(Instant::now()),
            ),
            ..header
        };
        let claimed = match self.swap_header(version, claim, &json).await {
            Ok(Some(claimed)) => claimed,
            // Another caller claimed it, or replaced the value, first.
            Ok(None) => return serve_current().ok_or_else(|| self.timed_out()),
            Err(err) => {
                stats.store_errors.incr();
                debug!(key = self.key, error = %err, "claiming the recompute failed; serving the current value");
                return serve_current().ok_or_else(|| self.timed_out());
            }
        };
        if !stale {
            stats.refreshes.incr();
        }
        let detached = match (F::DETACHABLE, self.soft_timeout(), self.tasks) {
            (true, Some(soft), Some(tasks)) => Some((soft, tasks)),
            _ => None,
        };
        let keep = self.keeps(&getter);
        let getter = match detached {
            Some((soft, tasks)) => {
                match getter.detach(self.job(tasks, claimed, header, &json, keep), tasks) {
                    Ok(ended) => {
                        let soft_deadline = (Instant::now() + soft).min(self.deadline);
                        return match timeout_at(soft_deadline, ended).await {
                            Ok(Ok(Recomputed::New(value))) => Ok(value),
                            Ok(Ok(Recomputed::Failed { error, kept: true })) => {
                                serve_current().ok_or(error)
                            }
                            Ok(Ok(Recomputed::Failed { error, kept: false })) => Err(error),
                            // The cache is being dropped, and the task with it.
                            Ok(Err(_dropped)) => serve_current().ok_or_else(|| self.timed_out()),
                            Err(_soft_timeout) => {
                                stats.soft_timeouts.incr();
                                debug!(
                                    key = self.key,
                                    ?soft,
                                    "the recompute ran past soft_timeout; serving the current value while it finishes"
                                );
                                serve_current().ok_or_else(|| self.timed_out())
                            }
                        };
                    }
                    Err(getter) => getter,
                }
            }
            None => getter,
        };
        match self
            .recompute_claimed(claimed, header, &json, keep, getter)
            .await
        {
            Recomputed::New(value) => Ok(value),
            Recomputed::Failed { error, kept: true } => serve_current().ok_or(error),
            Recomputed::Failed { error, kept: false } => Err(error),
        }
    }

    /// The job of recomputing the value claimed as `claimed`, for another task to run.
    fn job<T>(
        &self,
        tasks: &Tasks,
        claimed: Lease,
        header: Freshness,
        json: &bytes::Bytes,
        keep: Option<Keep<T>>,
    ) -> Job<S, T> {
        Job {
            core: Arc::clone(tasks.core()),
            store: self.store.clone(),
            key: self.key.to_owned(),
            wire: self.wire.clone(),
            deadline: self.deadline,
            exec_limit: self.exec_limit,
            expire: self.expire,
            error_backoff: self.error_backoff,
            // The call's options, checked, with its `stale_if_error` resolved and without the
            // soft timeout: the job is what runs after it.
            options: GetOptions {
                stale_if_error: Some(self.max_stale()),
                soft_timeout: None,
                ..*self.options
            },
            site: self.site,
            claimed,
            header,
            json: json.clone(),
            keep,
            near_ttl: self.near_ttl,
        }
    }

    /// Runs the getter for a recompute claimed as `claimed`, and stores its value. If it failed,
    /// panicked or ran out of time, the key is backed off under the claim. A call cancelled
    /// meanwhile gives the claim up (from a spawned task), so that the next caller recomputes.
    async fn recompute_claimed<T, E, F>(
        &self,
        claimed: Lease,
        header: Freshness,
        json: &bytes::Bytes,
        keep: Option<Keep<T>>,
        getter: F,
    ) -> Recomputed<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + std::fmt::Debug,
        F: Getter<T, E>,
    {
        let stats = &self.core.stats;
        let mut held = HeldClaim {
            store: self.store,
            wire: &self.wire,
            claim: Some((claimed, header, json.clone())),
            ttl_cap: self.expire.saturating_add(self.max_stale()),
        };
        let (value, decision) = match self.try_getter(getter).await {
            Ok(ended) => ended,
            Err(failed) => {
                held.disarm();
                let backoff = self
                    .error_backoff
                    .unwrap_or_else(|| self.expire.min(STALE_RETRY_CAP));
                let reason = match &failed {
                    Failed::Error(err) => format!("{err:?}"),
                    Failed::Panicked(message) => format!("the getter panicked: {message}"),
                    Failed::TimedOut => {
                        format!("the getter ran past exec_limit ({:?})", self.exec_limit)
                    }
                };
                warn!(
                    key = self.key,
                    error = %reason,
                    ?backoff,
                    "recomputing the value failed; serving the current one, and backing the key off"
                );
                let retry = Freshness {
                    retry_at: codec::unix_millis(std::time::SystemTime::now() + backoff),
                    ..header
                };
                let kept = match self.swap_header(claimed, retry, json).await {
                    Ok(swapped) => swapped.is_some(),
                    // Unknown: the store did not answer. The value stays the answer.
                    Err(err) => {
                        debug!(key = self.key, error = %err, "backing the key off failed");
                        true
                    }
                };
                return Recomputed::Failed {
                    error: self.failure(failed),
                    kept,
                };
            }
        };
        let fresh = if decision.skip_store {
            // The current value stays, and the next caller recomputes at once.
            stats.skipped_stores.incr();
            None
        } else {
            match codec::encode_for_store(&value, self.core.config.max_value_bytes) {
                Ok(fresh) => Some(fresh),
                Err(err) => {
                    stats.unstorable_values.incr();
                    warn!(key = self.key, error = %err, "the recomputed value is returned but not stored");
                    None
                }
            }
        };
        held.disarm();
        match fresh {
            Some(fresh) => {
                let expire = self.expire_of(decision);
                let sent = keep.map(|_| self.core.near().sent());
                let filled = self.fill(claimed, &fresh, expire).await;
                self.record_fill(&filled, fresh.len());
                self.wrote(keep, &fresh, sent, expire, &filled);
            }
            None => {
                let _ = self
                    .swap_header(
                        claimed,
                        Freshness {
                            retry_at: 0,
                            ..header
                        },
                        json,
                    )
                    .await;
            }
        }
        Recomputed::New(value)
    }

    /// Replaces the value at `version` with the same JSON under `header`, keeping it no longer
    /// than the header, or this call's `expire + max_stale`, allows; the new version, or `None`
    /// if the value changed meanwhile.
    async fn swap_header(
        &self,
        version: Lease,
        header: Freshness,
        json: &bytes::Bytes,
    ) -> Result<Option<Lease>, StoreError> {
        swap_header(
            self.store,
            &self.wire,
            version,
            header,
            json,
            (
                self.expire.saturating_add(self.max_stale()),
                Some(self.deadline),
            ),
        )
        .await
    }

    /// Marks the key as backed off for `backoff`, under `lease`. The item outlives the backoff by
    /// a second (memcached's TTLs are whole seconds), and says itself when the backoff ends.
    async fn back_off(&self, lease: Lease, backoff: Duration) {
        let (marker, flags) = codec::backoff_marker(std::time::SystemTime::now() + backoff);
        let ttl = backoff + Duration::from_secs(1);
        if self
            .store
            .fill(&self.wire, lease, &marker, flags, ttl)
            .await
            .is_err()
        {
            self.store.release_later(&self.wire, lease);
        }
        debug!(
            key = self.key,
            ?backoff,
            "the getter failed; backing the key off"
        );
    }

    /// The value's expire: the getter's choice (`entry::set_expire`, at most 365 days), or the
    /// call's.
    fn expire_of(&self, decision: Decision) -> Duration {
        decision
            .expire
            .map_or(self.expire, |expire| expire.min(MAX_DURATION))
    }

    /// A value not stored but shared with this process's callers waiting for it: as JSON, or,
    /// if it has none, each of them computes its own.
    fn run_shared<T: Serialize>(&self, leader: Leader<'_>, value: T) -> T {
        match codec::encode(&value, usize::MAX) {
            Ok(json) => leader.publish(json),
            Err(_) => leader.uncached(),
        }
        value
    }

    /// How long a marker of an unstorable value lives: `expire`, at most `MARKER_TTL`.
    fn marker_ttl(&self) -> Duration {
        self.expire.min(codec::MARKER_TTL)
    }

    /// Counts and logs how storing a computed value ended, if not stored.
    fn record_fill(&self, filled: &Result<Fill, StoreError>, size: usize) {
        let stats = &self.core.stats;
        match filled {
            Ok(Fill::Stored) => {}
            Ok(Fill::LeaseLost) => {
                stats.lost_fills.incr();
                debug!(
                    key = self.key,
                    "the lease was taken over, or the refreshed value changed, before the value was stored; returned, not stored"
                );
            }
            Ok(Fill::TooLarge) => {
                stats.unstorable_values.incr();
                warn!(
                    key = self.key,
                    size,
                    "the store refused the value as too large (a server whose -I is under item_bytes, or over a sixteenth of in_process_max_bytes); returned, not stored"
                );
            }
            Err(err) => {
                stats.store_errors.incr();
                warn!(key = self.key, error = %err, "storing the value failed; returned, not stored");
            }
        }
    }

    /// The value is near its end and ours to refresh: run the getter and store its value under
    /// the item's version (a fill refused because the item changed meanwhile is only counted).
    /// If the getter fails, the current value (left in the store to expire) is the answer.
    async fn refresh<T, E, F>(&self, version: Lease, current: T, getter: F) -> T
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Getter<T, E>,
    {
        let stats = &self.core.stats;
        stats.refreshes.incr();
        let keep = self.keeps(&getter);
        let (value, decision) = match self.try_getter(getter).await {
            Ok(ended) => ended,
            Err(failed) => {
                if matches!(failed, Failed::TimedOut) {
                    stats.timeouts.incr();
                }
                debug!(
                    key = self.key,
                    "refreshing the value failed; returned the current one, which stays until it expires"
                );
                return current;
            }
        };
        if decision.skip_store {
            // The current value stays, to expire as usual.
            stats.skipped_stores.incr();
            return value;
        }
        let json = match codec::encode_for_store(&value, self.core.config.max_value_bytes) {
            Ok(json) => json,
            Err(err) => {
                stats.unstorable_values.incr();
                warn!(key = self.key, error = %err, "the refreshed value is returned but not stored");
                return value;
            }
        };
        let expire = self.expire_of(decision);
        let sent = keep.map(|_| self.core.near().sent());
        let filled = self.fill_packed(version, &json, expire).await;
        self.record_fill(&filled, json.len());
        // The successor replaces the current value kept (`Step::Refresh`): this process's later
        // reads do not go back to it.
        self.wrote(keep, &json, sent, expire, &filled);
        value
    }

    /// The store cannot be reached: run the getter without it, or fail, as configured. A store
    /// operation that failed only because the call's deadline passed says nothing of the store:
    /// the call has timed out.
    async fn without_store<T, E, F>(
        &self,
        leader: Leader<'_>,
        getter: F,
        err: StoreError,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Getter<T, E>,
    {
        if err.is_deadline() {
            return Err(self.timed_out());
        }
        let stats = &self.core.stats;
        stats.store_errors.incr();
        // A node already marked down was logged then (and, for a refused login, at each probe):
        // each call that finds it down says so at debug, not once per call at warn.
        let known = matches!(
            err.kind,
            StoreErrorKind::MarkedDown(_) | StoreErrorKind::NoNode(_)
        );
        match self.core.config.on_unavailable {
            OnUnavailable::Fail => {
                if known {
                    debug!(key = self.key, error = %err, "the cache store is unavailable; failing the call as configured");
                } else {
                    warn!(key = self.key, error = %err, "the cache store is unavailable; failing the call as configured");
                }
                Err(Error::Unavailable {
                    key: self.key.to_owned(),
                    source: err.into_box(),
                }
                .into())
            }
            OnUnavailable::RunGetter => {
                stats.degraded_calls.incr();
                if known {
                    debug!(key = self.key, error = %err, "the cache store is unavailable; running the getter without it");
                } else {
                    warn!(key = self.key, error = %err, "the cache store is unavailable; running the getter without it");
                }
                self.run_unstored(leader, getter).await
            }
        }
    }

    /// Runs the getter without a lease and without storing its value; this process's waiting
    /// callers still share it.
    async fn run_unstored<T, E, F>(&self, leader: Leader<'_>, getter: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Getter<T, E>,
    {
        let value = self.run_getter(getter).await?;
        Ok(match codec::encode(&value, usize::MAX) {
            Ok(json) => {
                leader.publish(json);
                value
            }
            Err(err) => self.unstorable(leader, value, err),
        })
    }

    /// Runs the getter as `run_getter` does, extending `lease` every `EXTEND_EVERY` meanwhile.
    async fn run_getter_holding<T, E, F>(&self, lease: Lease, getter: F) -> Result<(T, Decision), E>
    where
        E: From<Error>,
        F: Getter<T, E>,
    {
        let extending = AtomicBool::new(false);
        let mut keep = pin!(self.keep(lease, &extending));
        let ended = tokio::select! {
            biased;
            ended = self.run_getter_deciding(getter) => ended,
            never = keep.as_mut() => match never {},
        };
        if ended.is_ok() && extending.load(Ordering::Relaxed) {
            // An extension under way finishes before the fill: on another connection, it could
            // reach the server after the fill and cut the stored value's TTL to the lease's.
            // Within the deadline: past it, the fill is the call's one store operation left.
            let extended = std::future::poll_fn(|cx| {
                let _pending = keep.as_mut().poll(cx);
                if extending.load(Ordering::Relaxed) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            });
            let _ = timeout_at(self.deadline, extended).await;
        }
        ended
    }

    /// Extends `lease` every `EXTEND_EVERY`, while it is known to be alive; never ends.
    /// `extending` is set while an extension is under way.
    async fn keep(&self, lease: Lease, extending: &AtomicBool) -> std::convert::Infallible {
        let trusted = self.lease_ttl().saturating_sub(LEASE_MARGIN);
        let mut alive_until = Instant::now() + trusted;
        loop {
            tokio::time::sleep(EXTEND_EVERY).await;
            let sent = Instant::now();
            if sent >= alive_until {
                // The process stalled, or the node did not answer the last extensions: the stub
                // may have expired, and the key be another's. Touching it could shorten another's
                // value; the fill, gated on our CAS, tells whether the lease lasted.
                debug!(
                    key = self.key,
                    "the lease may have expired while the getter ran; no longer extended"
                );
                return std::future::pending().await;
            }
            extending.store(true, Ordering::Relaxed);
            let extended = self.store.extend(&self.wire, lease, self.lease_ttl()).await;
            extending.store(false, Ordering::Relaxed);
            match extended {
                Ok(true) => {
                    self.core.stats.lease_extensions.incr();
                    alive_until = sent + trusted;
                }
                Ok(false) => {
                    debug!(
                        key = self.key,
                        "the lease was taken over while the getter ran"
                    );
                    return std::future::pending().await;
                }
                // Tried again at the next tick, while the lease is known to be alive.
                Err(err) => debug!(key = self.key, error = %err, "extending the lease failed"),
            }
        }
    }

    /// Runs the getter within the deadline, a panic caught and made a typed error.
    async fn run_getter<T, E, F>(&self, getter: F) -> Result<T, E>
    where
        E: From<Error>,
        F: Getter<T, E>,
    {
        self.run_getter_deciding(getter)
            .await
            .map(|(value, _decision)| value)
    }

    /// As `run_getter`, with what the getter decided about storing its value (`entry.rs`).
    async fn run_getter_deciding<T, E, F>(&self, getter: F) -> Result<(T, Decision), E>
    where
        E: From<Error>,
        F: Getter<T, E>,
    {
        self.try_getter(getter)
            .await
            .map_err(|failed| self.failure(failed))
    }

    /// How a getter run ended without a value, as the caller's error.
    fn failure<E: From<Error>>(&self, failed: Failed<E>) -> E {
        match failed {
            Failed::Error(err) => err,
            Failed::Panicked(message) => Error::GetterPanicked {
                key: self.key.to_owned(),
                message,
            }
            .into(),
            Failed::TimedOut => self.timed_out(),
        }
    }

    /// Runs the getter within the deadline, a panic caught; logs and counts how it ended.
    async fn try_getter<T, E, F>(&self, getter: F) -> Result<(T, Decision), Failed<E>>
    where
        F: Getter<T, E>,
    {
        let stats = &self.core.stats;
        stats.getter_runs.incr();
        let started = Instant::now();
        let run = entry::deciding(catch_unwind(|| getter.call()));
        match timeout_at(self.deadline, run).await {
            Err(_elapsed) => {
                warn!(key = self.key, limit = ?self.exec_limit, "the getter ran out of time and was dropped");
                Err(Failed::TimedOut)
            }
            Ok((Err(panic), _)) => {
                stats.getter_panics.incr();
                let message = panic_message(&*panic);
                error!(key = self.key, panic = %message, "the getter panicked");
                Err(Failed::Panicked(message))
            }
            Ok((Ok(Err(err)), _)) => {
                stats.getter_errors.incr();
                debug!(key = self.key, "the getter failed");
                Err(Failed::Error(err))
            }
            Ok((Ok(Ok(value)), decision)) => {
                self.core.estimates.record_run(self.site, started.elapsed());
                Ok((value, decision))
            }
        }
    }

    /// A value that cannot be stored is still returned; this process's waiting callers share it
    /// when it could be encoded at all, and otherwise each compute their own at once.
    fn unstorable<T>(&self, leader: Leader<'_>, value: T, err: EncodeError) -> T {
        self.core.stats.unstorable_values.incr();
        warn!(key = self.key, error = %err, "the value is returned but not stored");
        match err {
            EncodeError::TooLarge { bytes, .. } => leader.publish(bytes),
            _ => leader.uncached(),
        }
        value
    }

    fn decode_miss(&self, err: &codec::DecodeError) {
        if let DecodeError::Forged = err {
            self.core.stats.forged_values.incr();
            warn!(
                key = self.key,
                "an item without a valid signature was read; recomputing and replacing it"
            );
            return;
        }
        if let DecodeError::Chunks { missing: true, .. } = err {
            // Evicted, or on a node lost since: a plain miss, said in `chunks.rs`.
            return;
        }
        self.core.stats.decode_misses.incr();
        warn!(key = self.key, error = %err, "a cached item does not decode as the requested type; recomputing");
    }

    fn timed_out<E: From<Error>>(&self) -> E {
        self.core.stats.timeouts.incr();
        Error::timeout(self.key, self.exec_limit).into()
    }

    /// The lease's TTL: `LEASE`, or less for an `exec_limit` that ends before the lease would.
    fn lease_ttl(&self) -> Duration {
        lease_ttl(self.exec_limit)
    }

    /// How near its end a value is refreshed ahead (zero: never), from `refresh_ahead`.
    #[inline]
    fn refresh_window(&self) -> Duration {
        let fraction = self.refresh_ahead;
        if fraction > 0.0 {
            self.expire.mul_f64(fraction)
        } else {
            Duration::ZERO
        }
    }
}

/// Whether an item's bytes are not the value as stored whole: a big value's manifest, or a
/// compressed value.
#[inline]
fn packed(flags: u32) -> bool {
    flags == ZSTD_JSON_FLAGS || flags == ZSTD_FRESHNESS_FLAGS || flags == MANIFEST_FLAGS
}

/// `d` in whole milliseconds, as [`Freshness`] counts.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// memcached TTLs have one-second resolution: `exec_limit` rounded up to whole seconds, plus one,
/// outlasts a holder bounded by `exec_limit` without extending; longer limits get `LEASE`, which
/// the holder extends while its getter runs.
#[inline]
pub(crate) fn lease_ttl(exec_limit: Duration) -> Duration {
    Duration::from_secs(whole_seconds(exec_limit).saturating_add(1)).min(LEASE)
}

/// Swaps the value at `version` for the same JSON under `header`, to live until the header's
/// `stale_until`, at most `cap` (a forged header cannot make it live longer than a value of this
/// call would); `None` if it changed meanwhile, or its time is up. Compressed if that is done
/// `by` then (the call's deadline, if a call waits).
async fn swap_header<S: Store>(
    store: &S,
    wire: &WireKey,
    version: Lease,
    header: Freshness,
    json: &bytes::Bytes,
    (cap, by): (Duration, Option<Instant>),
) -> Result<Option<Lease>, StoreError> {
    let now = codec::unix_millis(std::time::SystemTime::now());
    let left = Duration::from_millis(header.stale_until.saturating_sub(now)).min(cap);
    if left.is_zero() {
        return Ok(None);
    }
    let (bytes, flags) = codec::pack_off_worker(Some(header), json, by).await;
    store.swap(wire, version, &bytes, flags, left).await
}

/// A claim to recompute a stale value, given up from a spawned task if the call is cancelled
/// while its getter runs, so that the next caller recomputes at once rather than after the
/// claim's end.
struct HeldClaim<'a, S: Store> {
    store: &'a S,
    wire: &'a WireKey,
    claim: Option<(Lease, Freshness, bytes::Bytes)>,
    ttl_cap: Duration,
}

impl<S: Store> HeldClaim<'_, S> {
    fn disarm(&mut self) {
        self.claim = None;
    }
}

impl<S: Store> Drop for HeldClaim<'_, S> {
    fn drop(&mut self) {
        let Some((claimed, header, json)) = self.claim.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, wire, cap) = (self.store.clone(), self.wire.clone(), self.ttl_cap);
            let open = Freshness {
                retry_at: 0,
                ..header
            };
            runtime.spawn(async move {
                let _ = swap_header(&store, &wire, claimed, open, &json, (cap, None)).await;
            });
        }
    }
}

/// A lease we hold: handed back explicitly, or from a spawned task if the call is cancelled.
struct HeldLease<'a, S: Store> {
    store: &'a S,
    wire: &'a WireKey,
    lease: Option<Lease>,
    /// What to fill the lease with when dropped, instead of handing it back.
    marker: Option<Marker>,
}

/// A marker of an unstorable value, to leave in a key from a spawned task.
struct Marker {
    bytes: bytes::Bytes,
    flags: u32,
    ttl: Duration,
    /// For a new lease, if the store dropped ours with the value it refused.
    lease_ttl: Duration,
}

impl Marker {
    /// Fills `lease` with the marker; if the lease is gone (memcached 1.6.18 deletes the stub of
    /// a value it refuses as too large), takes a new one for it, unless another caller has.
    async fn leave<S: Store>(self, store: &S, wire: &WireKey, lease: Lease) {
        let fill = |lease| store.fill(wire, lease, &self.bytes, self.flags, self.ttl);
        if let Ok(Fill::LeaseLost) = fill(lease).await {
            let deadline = Instant::now() + self.lease_ttl;
            if let Ok(Lookup::Won(lease)) = store
                .lookup(wire, self.lease_ttl, Duration::ZERO, false, deadline)
                .await
            {
                let _ = fill(lease).await;
            }
        }
    }
}

impl<S: Store> HeldLease<'_, S> {
    async fn release(&mut self) {
        if let Some(lease) = self.lease.take()
            && let Err(err) = self.store.release(self.wire, lease).await
        {
            debug!(error = %err, "handing the lease back failed; tried again on the next connection");
            self.store.release_later(self.wire, lease);
        }
    }

    fn disarm(&mut self) {
        self.lease = None;
    }
}

impl<S: Store> Drop for HeldLease<'_, S> {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        // The call was cancelled while it held the lease, or leaves a marker in it: in the
        // background, so that other callers need not wait for the lease to expire.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let wire = self.wire.clone();
            let marker = self.marker.take();
            runtime.spawn(async move {
                match marker {
                    Some(marker) => marker.leave(&store, &wire, lease).await,
                    None => {
                        if store.release(&wire, lease).await.is_err() {
                            store.release_later(&wire, lease);
                        }
                    }
                }
            });
        }
    }
}

/// Runs `getter` to completion, catching a panic in creating or polling its future.
async fn catch_unwind<F, Fut>(getter: F) -> Result<Fut::Output, Box<dyn Any + Send>>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    let mut future = pin!(std::panic::catch_unwind(AssertUnwindSafe(getter))?);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_outlives_a_short_exec_limit_by_at_least_a_second_and_is_short() {
        assert_eq!(
            lease_ttl(Duration::from_millis(200)),
            Duration::from_secs(2)
        );
        assert_eq!(lease_ttl(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(
            lease_ttl(Duration::from_millis(1001)),
            Duration::from_secs(3)
        );
        assert_eq!(lease_ttl(Duration::from_secs(3)), LEASE);
        assert_eq!(lease_ttl(Duration::from_secs(60)), LEASE);
        // A holder extends its lease at least once more while it knows the lease alive.
        assert!(EXTEND_EVERY * 2 <= LEASE - LEASE_MARGIN);
    }
}
