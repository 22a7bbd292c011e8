//! Credentials from a slow source (a helper command, ECR's API), fetched
//! once for every caller: one fetch at a time runs on a task of its own,
//! holding no lock and stopped by no caller that gives up. What it gave is
//! reused while fresh, and for a grace period after while the next fetch
//! runs or fails; after a failure the source is asked again only once a
//! backoff has passed (1 s, doubling up to 5 min). A caller waits for a
//! fetch at most as long as it is given.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::sync::lock;

/// The wait after a first failure; it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long one fetch may run: one that hangs (a helper or a credential
/// service that never answers) fails then, and the next is backed off,
/// instead of leaving every caller waiting on it.
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// What one fetch gave, and how long it may be used.
#[derive(Debug)]
pub(crate) struct Fetched<T> {
    /// The credentials.
    pub(crate) value: T,
    /// How long they are used without asking again; `None`: until they
    /// are refused.
    pub(crate) fresh: Option<Duration>,
    /// How long past that they are still used while the next fetch runs
    /// or fails.
    pub(crate) grace: Duration,
}

/// Why no credentials came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unready {
    /// The source failed (now, or lately: it is not asked again until its
    /// backoff has passed).
    Failed(String),
    /// The fetch still runs after the wait allowed; it goes on for later
    /// callers.
    Late(Duration),
}

/// A fetch of the source, started anew each time.
type Fetch<T> =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Fetched<T>, String>> + Send>> + Send + Sync>;

/// The outcome of the fetch that runs, published once it ends.
type Outcome<T> = watch::Receiver<Option<Result<T, String>>>;

/// Credentials that one source gives, fetched once for every caller.
pub(crate) struct Refreshed<T> {
    fetch: Fetch<T>,
    state: Arc<Mutex<State<T>>>,
}

impl<T> std::fmt::Debug for Refreshed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refreshed").finish_non_exhaustive()
    }
}

/// The last credentials fetched.
struct Good<T> {
    value: T,
    /// When they were fetched.
    at: Instant,
    /// Until when they are used without asking again.
    fresh_until: Option<Instant>,
    /// Until when they are used while the next fetch runs or fails.
    usable_until: Option<Instant>,
}

struct State<T> {
    good: Option<Good<T>>,
    /// The fetch running, if one is.
    running: Option<Outcome<T>>,
    /// The last failure, when the source may be asked again, and the
    /// backoff that gave that time.
    failed: Option<(String, Instant, Duration)>,
}

impl<T: Clone + Send + Sync + 'static> Refreshed<T> {
    /// Credentials that `fetch` gives.
    pub(crate) fn new<F, Fut>(fetch: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched<T>, String>> + Send + 'static,
    {
        Self {
            fetch: Arc::new(
                move || -> Pin<Box<dyn Future<Output = Result<Fetched<T>, String>> + Send>> {
                    Box::pin(fetch())
                },
            ),
            state: Arc::new(Mutex::new(State {
                good: None,
                running: None,
                failed: None,
            })),
        }
    }

    /// The credentials to use now: fresh ones at once; else those still
    /// in their grace period at once (a fetch starts behind them); else
    /// the outcome of a fetch, waited for at most `within`. During a
    /// backoff the last failure, at once.
    pub(crate) async fn get(&self, within: Duration) -> Result<T, Unready> {
        let mut running = {
            let mut state = lock(&self.state);
            let now = Instant::now();
            if let Some(good) = &state.good {
                if good.fresh_until.is_none_or(|t| now < t) {
                    return Ok(good.value.clone());
                }
            }
            let stale = state
                .good
                .as_ref()
                .filter(|g| g.usable_until.is_none_or(|t| now < t))
                .map(|g| g.value.clone());
            // A fetch whose task ended without an outcome (it panicked) no
            // longer runs.
            let running = state
                .running
                .as_ref()
                .filter(|r| r.has_changed().is_ok())
                .cloned();
            let backing_off = state
                .failed
                .as_ref()
                .filter(|(_, retry_at, _)| now < *retry_at)
                .map(|(why, _, _)| why.clone());
            let running = match (running, backing_off) {
                (Some(running), _) => running,
                (None, Some(why)) => return stale.ok_or(Unready::Failed(why)),
                (None, None) => self.start(&mut state),
            };
            if let Some(stale) = stale {
                return Ok(stale);
            }
            running
        };
        match tokio::time::timeout(within, running.wait_for(Option::is_some)).await {
            Err(_) => Err(Unready::Late(within)),
            Ok(Err(_)) => Err(Unready::Failed("the fetch ended without an answer".into())),
            Ok(Ok(outcome)) => match &*outcome {
                Some(Ok(value)) => Ok(value.clone()),
                Some(Err(why)) => Err(Unready::Failed(why.clone())),
                None => Err(Unready::Failed("the fetch ended without an answer".into())),
            },
        }
    }

    /// Forgets the credentials the upstream refused: those fetched at or
    /// before `asked`, when the refused request took them (newer ones
    /// are kept: a late refusal of old credentials costs no fetch).
    pub(crate) fn forget(&self, asked: Instant) {
        let mut state = lock(&self.state);
        if state.good.as_ref().is_some_and(|g| g.at <= asked) {
            state.good = None;
        }
    }

    /// Starts a fetch on a task of its own; its outcome is published to
    /// every caller waiting for it.
    fn start(&self, state: &mut State<T>) -> Outcome<T> {
        let (publish, outcome) = watch::channel(None);
        state.running = Some(outcome.clone());
        let fetch = Arc::clone(&self.fetch);
        let shared = Arc::clone(&self.state);
        tokio::spawn(async move {
            // A fetch that panics or hangs fails like any other.
            let fetched = std::panic::AssertUnwindSafe(tokio::time::timeout(FETCH_LIMIT, fetch()));
            let fetched = match futures::FutureExt::catch_unwind(fetched).await {
                Ok(Ok(fetched)) => fetched,
                Ok(Err(_)) => Err(format!("no answer within {FETCH_LIMIT:?}")),
                Err(_) => Err("the fetch failed (it panicked)".to_owned()),
            };
            let now = Instant::now();
            let outcome = {
                let mut state = lock(&shared);
                state.running = None;
                match fetched {
                    Ok(fetched) => {
                        let fresh_until = fetched.fresh.map(|d| now + d);
                        state.good = Some(Good {
                            value: fetched.value.clone(),
                            at: now,
                            fresh_until,
                            usable_until: fresh_until.map(|t| t + fetched.grace),
                        });
                        state.failed = None;
                        Ok(fetched.value)
                    }
                    Err(why) => {
                        let backoff = state
                            .failed
                            .as_ref()
                            .map_or(FIRST_BACKOFF, |(_, _, b)| (*b * 2).min(MAX_BACKOFF));
                        state.failed = Some((why.clone(), now + backoff, backoff));
                        tracing::warn!(error = %why, ?backoff, "no credentials; asked again after the backoff");
                        Err(why)
                    }
                }
            };
            let _ = publish.send(Some(outcome));
        });
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source counting its fetches, each taking `takes`, failing while
    /// `failing` holds, fresh for `fresh` with `grace` after.
    fn source(
        runs: &Arc<AtomicUsize>,
        failing: &Arc<std::sync::atomic::AtomicBool>,
        takes: Duration,
        fresh: Option<Duration>,
        grace: Duration,
    ) -> Refreshed<usize> {
        let (runs, failing) = (Arc::clone(runs), Arc::clone(failing));
        Refreshed::new(move || {
            let (runs, failing) = (Arc::clone(&runs), Arc::clone(&failing));
            async move {
                tokio::time::sleep(takes).await;
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if failing.load(Ordering::SeqCst) {
                    return Err(format!("failure {n}"));
                }
                Ok(Fetched {
                    value: n,
                    fresh,
                    grace,
                })
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn one_fetch_serves_every_caller_and_a_slow_one_is_waited_for_only_so_long() {
        let runs = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let creds = Arc::new(source(
            &runs,
            &failing,
            Duration::from_secs(30),
            Some(Duration::from_secs(60)),
            Duration::from_secs(60),
        ));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let creds = Arc::clone(&creds);
                tokio::spawn(async move { creds.get(Duration::from_secs(2)).await })
            })
            .collect();
        for caller in callers {
            assert_eq!(
                caller.await.expect("task"),
                Err(Unready::Late(Duration::from_secs(2)))
            );
        }
        // The fetch went on without its callers.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(creds.get(Duration::ZERO).await, Ok(1));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one fetch for 9 callers");
        // Past freshness, within grace: the old ones at once, a fetch behind them.
        let before = Instant::now();
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(creds.get(Duration::ZERO).await, Ok(1));
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(creds.get(Duration::ZERO).await, Ok(2));
        // Refused: forgotten, unless newer than the refused request.
        creds.forget(before);
        assert_eq!(creds.get(Duration::ZERO).await, Ok(2), "kept");
        creds.forget(Instant::now());
        assert_eq!(
            creds.get(Duration::from_secs(40)).await,
            Ok(3),
            "fetched again"
        );
    }

    /// A fetch that never answers fails after [`FETCH_LIMIT`], and the
    /// next fetch starts after the backoff (before, the hung fetch stayed
    /// "running" and no caller ever got credentials again).
    #[tokio::test(start_paused = true)]
    async fn a_hung_fetch_fails_and_is_tried_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let creds = source(
            &runs,
            &failing,
            Duration::from_secs(3600),
            None,
            Duration::ZERO,
        );
        assert_eq!(
            creds.get(Duration::from_secs(1)).await,
            Err(Unready::Late(Duration::from_secs(1)))
        );
        // The first caller waited 1 s of the fetch's limit.
        tokio::time::sleep(FETCH_LIMIT - Duration::from_millis(500)).await;
        assert!(
            matches!(creds.get(Duration::ZERO).await, Err(Unready::Failed(why)) if why.contains("no answer")),
            "the hung fetch failed"
        );
        tokio::time::sleep(FIRST_BACKOFF).await;
        assert_eq!(
            creds.get(Duration::ZERO).await,
            Err(Unready::Late(Duration::ZERO)),
            "a new fetch runs"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 0, "none answered yet");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_the_last_good_credentials_last_their_grace() {
        let runs = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let creds = source(
            &runs,
            &failing,
            Duration::ZERO,
            Some(Duration::from_secs(10)),
            Duration::from_secs(10),
        );
        assert!(matches!(
            creds.get(Duration::from_secs(1)).await,
            Err(Unready::Failed(_))
        ));
        for _ in 0..5 {
            assert!(matches!(
                creds.get(Duration::from_secs(1)).await,
                Err(Unready::Failed(_))
            ));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "backed off");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _ = creds.get(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _ = creds.get(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the backoff doubled");
        tokio::time::sleep(Duration::from_secs(1)).await;
        failing.store(false, Ordering::SeqCst);
        assert_eq!(creds.get(Duration::from_secs(1)).await, Ok(3));
        // Stale and failing: the good ones for their grace, then the failure.
        failing.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(creds.get(Duration::from_secs(1)).await, Ok(3));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(matches!(
            creds.get(Duration::from_secs(1)).await,
            Err(Unready::Failed(_))
        ));
    }
}
