//! Who may ring whom: blocks, call privacy, do-not-disturb, rate caps, and the host
//! application's policy hook, decided once for every way a call is placed (REST, sockets, an
//! embedding application, any instance).
//!
//! The service asks [`CallPolicy::admit`] before it creates a call. The facts come from the
//! store in one read ([`CallPolicyStore::facts`]), so every instance decides from the same
//! data, and a block made through one instance holds on all of them at once. [`decide`] is
//! pure: the facts, the caps and `now` (the injected clock's) in, an [`Admission`] or a
//! [`PolicyRefusal`] out. Only when the store's facts admit the call is the hook asked, so a
//! flood of refused attempts never reaches the host application.
//!
//! Every refusal that tells the caller "not allowed" looks the same to them (one code, one
//! message), whatever the reason: a caller must not learn that they are blocked rather than
//! outside someone's privacy setting. Do-not-disturb is not a refusal at all: the call is
//! created and rings for the caller, but none of the callee's devices ring and it ends as
//! missed, so the caller cannot tell it from an unanswered call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::ports::{Page, PageRequest, RepositoryError, UserProfile};
use crate::values::{CallType, ConversationId, Timestamp, UserId, WhoCanCall};

/// The window of [`RateCaps::calls_per_minute`].
pub const CALL_RATE_WINDOW: Duration = Duration::from_secs(60);

/// How far back unanswered calls count against [`RateCaps::unanswered_per_callee`].
pub const UNANSWERED_WINDOW: Duration = Duration::from_secs(10 * 60);

/// A user's call settings. The defaults ring them for everyone, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallSettings {
    pub who_can_call: WhoCanCall,
    pub do_not_disturb: bool,
    pub do_not_disturb_until: Option<Timestamp>,
    /// The user's calls connect only through a TURN relay, so that the other party never
    /// learns the user's IP address from a candidate.
    pub relay_only: bool,
    /// While the user is in an active call, a second call rings them as a waiting call
    /// instead of being refused as busy; taking it ends the first.
    pub call_waiting: bool,
}

impl CallSettings {
    /// Whether calls to the user ring none of their devices at `now`: `do_not_disturb_until`,
    /// when set, decides (quiet until then, whatever the switch says, so "for an hour" ends by
    /// itself); otherwise the `do_not_disturb` switch does.
    pub fn is_quiet_at(&self, now: Timestamp) -> bool {
        self.do_not_disturb_until.map_or(self.do_not_disturb, |until| now < until)
    }

    /// These settings with `change` applied (the fields it names, the others kept).
    #[must_use]
    pub fn changed_by(self, change: &CallSettingsChange) -> Self {
        Self {
            who_can_call: change.who_can_call.unwrap_or(self.who_can_call),
            do_not_disturb: change.do_not_disturb.unwrap_or(self.do_not_disturb),
            do_not_disturb_until: change.do_not_disturb_until.unwrap_or(self.do_not_disturb_until),
            relay_only: change.relay_only.unwrap_or(self.relay_only),
            call_waiting: change.call_waiting.unwrap_or(self.call_waiting),
        }
    }
}

/// Some of a user's call settings, to change (a `PATCH`): `None` keeps a field as it is;
/// `do_not_disturb_until: Some(None)` clears the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallSettingsChange {
    pub who_can_call: Option<WhoCanCall>,
    pub do_not_disturb: Option<bool>,
    pub do_not_disturb_until: Option<Option<Timestamp>>,
    pub relay_only: Option<bool>,
    pub call_waiting: Option<bool>,
}

/// Calls within a window: how many, and when the oldest of them counts from (the moment it
/// leaves the window is when a place frees up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecentCalls {
    pub count: u32,
    pub oldest: Option<Timestamp>,
}

/// Which calls the store counts for one rate cap: those after `since`, the most recent `limit`
/// of them at most (more never changes the answer). A `limit` of zero (the cap is off) counts
/// nothing, and the store reads nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedCalls {
    pub since: Timestamp,
    pub limit: u32,
}

/// What the store knows about a call attempt from `caller` to `callee`, read at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyFacts {
    /// Either of the two blocks the other.
    pub blocked: bool,
    pub callee_settings: CallSettings,
    /// The two share a conversation in the directory.
    pub share_conversation: bool,
    /// The caller's calls started within [`CALL_RATE_WINDOW`] (up to the cap; `oldest` is the
    /// oldest of those counted).
    pub caller_recent: RecentCalls,
    /// The caller's calls to the callee that were missed, cancelled or declined within
    /// [`UNANSWERED_WINDOW`] (up to the cap, as `caller_recent`).
    pub unanswered_to_callee: RecentCalls,
}

/// How often one user may call. Zero turns a cap off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCaps {
    /// Calls a caller may start within [`CALL_RATE_WINDOW`], to anyone.
    pub calls_per_minute: u32,
    /// Unanswered calls from one caller to one callee within [`UNANSWERED_WINDOW`] after which
    /// the caller must wait.
    pub unanswered_per_callee: u32,
}

impl Default for RateCaps {
    fn default() -> Self {
        Self { calls_per_minute: 20, unanswered_per_callee: 3 }
    }
}

/// How an admitted call rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The callee's devices ring.
    Ring,
    /// The callee is in do-not-disturb: the call is created and rings for the caller only,
    /// and ends as missed at the ring timeout.
    Silently,
    /// The callee's devices ring, and a callee in an active call is rung for a waiting call
    /// instead of being busy (they turned call waiting on).
    RingOrWait,
}

/// Why the caller may not reach the callee. The caller is told the same for every reason;
/// the reason is for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotAllowedReason {
    /// A block, in either direction.
    Blocked,
    /// The callee's `who_can_call` leaves the caller out.
    Privacy,
    /// The host application's policy hook said no.
    Hook,
    /// The hook did not answer in time or failed, and the policy fails closed.
    HookUnavailable,
}
crate::values::named_enum!(NotAllowedReason, "reason", "is not a refusal reason", {
    Blocked => "blocked",
    Privacy => "privacy",
    Hook => "hook",
    HookUnavailable => "hook_unavailable",
});

/// Which rate cap a caller reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateCap {
    CallsPerMinute,
    UnansweredPerCallee,
}
crate::values::named_enum!(RateCap, "cap", "is not a rate cap", {
    CallsPerMinute => "calls_per_minute",
    UnansweredPerCallee => "unanswered_per_callee",
});

/// Why a call attempt is refused before anything is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRefusal {
    #[error("the callee does not take calls from the caller ({0})")]
    NotAllowed(NotAllowedReason),
    #[error("too many calls ({cap}); retry in {} s", retry_after.as_secs())]
    RateLimited { cap: RateCap, retry_after: Duration },
}

impl PolicyRefusal {
    /// The bounded label metrics count this refusal under.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::NotAllowed(reason) => reason.as_str(),
            Self::RateLimited { cap, .. } => cap.as_str(),
        }
    }
}

/// Decides a call attempt from what the store knows, before the hook: blocks and privacy
/// first (they hold whatever the rates), then the caps, then do-not-disturb.
///
/// # Errors
/// The [`PolicyRefusal`] that applies first.
pub fn decide(facts: &PolicyFacts, caps: RateCaps, now: Timestamp) -> Result<Admission, PolicyRefusal> {
    if facts.blocked {
        return Err(PolicyRefusal::NotAllowed(NotAllowedReason::Blocked));
    }
    let admitted = match facts.callee_settings.who_can_call {
        WhoCanCall::Everyone => true,
        WhoCanCall::Conversations => facts.share_conversation,
        WhoCanCall::Nobody => false,
    };
    if !admitted {
        return Err(PolicyRefusal::NotAllowed(NotAllowedReason::Privacy));
    }
    let capped = [
        (RateCap::CallsPerMinute, caps.calls_per_minute, facts.caller_recent, CALL_RATE_WINDOW),
        (RateCap::UnansweredPerCallee, caps.unanswered_per_callee, facts.unanswered_to_callee, UNANSWERED_WINDOW),
    ];
    for (cap, limit, recent, window) in capped {
        if limit > 0 && recent.count >= limit {
            return Err(PolicyRefusal::RateLimited { cap, retry_after: retry_after(recent.oldest, window, now) });
        }
    }
    Ok(if facts.callee_settings.is_quiet_at(now) {
        Admission::Silently
    } else if facts.callee_settings.call_waiting {
        Admission::RingOrWait
    } else {
        Admission::Ring
    })
}

/// Whole seconds until the oldest counted call leaves its window (at least one: a client that
/// retries at once is refused again).
fn retry_after(oldest: Option<Timestamp>, window: Duration, now: Timestamp) -> Duration {
    let Some(oldest) = oldest else { return Duration::from_secs(1) };
    let frees_at = oldest.plus(window);
    let micros = frees_at.unix_micros().saturating_sub(now.unix_micros()).max(0);
    let seconds = u64::try_from(micros).unwrap_or(0).div_ceil(1_000_000);
    Duration::from_secs(seconds.max(1))
}

/// What the host application's policy hook is asked before a call is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyQuestion {
    pub caller: UserId,
    pub callee: UserId,
    pub call_type: CallType,
    pub conversation: Option<ConversationId>,
}

/// The hook did not answer (timeout, connection refused, an error status, an answer that is
/// not `{"allow": bool}`). Never shown to users.
#[derive(Debug, thiserror::Error)]
#[error("the call policy hook did not answer: {0}")]
pub struct HookUnavailable(pub String);

/// The host application's say on a call, asked after the store's facts admit it.
#[async_trait]
pub trait CallPolicyHook: Send + Sync + std::fmt::Debug {
    /// Whether the call may be placed.
    ///
    /// # Errors
    /// [`HookUnavailable`] when there is no answer to go by.
    async fn allows(&self, question: &PolicyQuestion) -> Result<bool, HookUnavailable>;
}

/// A user someone blocks, with when they were blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedUser {
    pub profile: UserProfile,
    pub blocked_at: Timestamp,
}

/// Where call settings and blocks live.
#[async_trait]
pub trait CallPolicyStore: Send + Sync + std::fmt::Debug {
    /// Everything [`decide`] needs about a call from `caller` to `callee`, in one read:
    /// `caller_recent` says which of the caller's calls count for the per-minute cap,
    /// `unanswered` which of their unanswered calls to the callee count for the per-callee one
    /// (the most recent ones first, up to each cap; nothing when a cap is off).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn facts(
        &self,
        caller: &UserId,
        callee: &UserId,
        caller_recent: CountedCalls,
        unanswered: CountedCalls,
    ) -> Result<PolicyFacts, RepositoryError>;

    /// `user`'s settings (the defaults if they never changed any).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn settings(&self, user: &UserId) -> Result<CallSettings, RepositoryError>;

    /// Applies `change` to `user`'s settings in one step (two changes at once to different
    /// fields both hold) and returns the settings after it.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn change_settings(
        &self,
        user: &UserId,
        change: &CallSettingsChange,
        at: Timestamp,
    ) -> Result<CallSettings, RepositoryError>;

    /// The users `user` blocks, most recently blocked first.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn blocks(&self, user: &UserId, page: PageRequest) -> Result<Page<BlockedUser>, RepositoryError>;

    /// `blocker` blocks `blocked` (already blocking is no error, and keeps the first moment),
    /// and returns since when. Both must exist.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn block(&self, blocker: &UserId, blocked: &UserId, at: Timestamp) -> Result<Timestamp, RepositoryError>;

    /// `blocker` no longer blocks `blocked`; whether they did.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn unblock(&self, blocker: &UserId, blocked: &UserId) -> Result<bool, RepositoryError>;

    /// Replaces everyone `user` blocks with `blocked` in one step (users blocked before and
    /// still keep their first moment). All must exist.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn replace_blocks(&self, user: &UserId, blocked: &[UserId], at: Timestamp) -> Result<(), RepositoryError>;
}

/// The policy a [`crate::CallService`] consults before it creates a call.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    store: Arc<dyn CallPolicyStore>,
    caps: RateCaps,
    hook: Option<Arc<dyn CallPolicyHook>>,
    hook_fails_open: bool,
}

/// Why [`CallPolicy::admit`] did not admit a call.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Refused(#[from] PolicyRefusal),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

impl CallPolicy {
    pub fn new(store: Arc<dyn CallPolicyStore>, caps: RateCaps) -> Self {
        Self { store, caps, hook: None, hook_fails_open: true }
    }

    /// Asks `hook` too, after the store's facts admit a call. When it has no answer, the call
    /// is placed if `fails_open`, refused otherwise.
    #[must_use]
    pub fn with_hook(mut self, hook: Arc<dyn CallPolicyHook>, fails_open: bool) -> Self {
        self.hook = Some(hook);
        self.hook_fails_open = fails_open;
        self
    }

    pub fn store(&self) -> &Arc<dyn CallPolicyStore> {
        &self.store
    }

    pub fn caps(&self) -> RateCaps {
        self.caps
    }

    /// Whether `question.caller` may ring `question.callee` at `now`, and how.
    ///
    /// # Errors
    /// `Refused` with the reason; `Repository` when the store fails (nothing is decided).
    pub async fn admit(&self, question: &PolicyQuestion, now: Timestamp) -> Result<Admission, PolicyError> {
        // A cap that is off costs no read: its count is limited to zero.
        let caller_recent = CountedCalls { since: now.minus(CALL_RATE_WINDOW), limit: self.caps.calls_per_minute };
        let unanswered = CountedCalls { since: now.minus(UNANSWERED_WINDOW), limit: self.caps.unanswered_per_callee };
        let facts = self.store.facts(&question.caller, &question.callee, caller_recent, unanswered).await?;
        let admission = decide(&facts, self.caps, now)?;
        let Some(hook) = &self.hook else { return Ok(admission) };
        match hook.allows(question).await {
            Ok(true) => Ok(admission),
            Ok(false) => Err(PolicyRefusal::NotAllowed(NotAllowedReason::Hook).into()),
            // The hook's adapter logs and counts its own failures.
            Err(_) if self.hook_fails_open => Ok(admission),
            Err(_) => Err(PolicyRefusal::NotAllowed(NotAllowedReason::HookUnavailable).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).single().expect("valid").into()
    }

    fn recent(count: u32, oldest: i64) -> RecentCalls {
        RecentCalls { count, oldest: Some(at(oldest)) }
    }

    #[test]
    fn a_block_and_privacy_refuse_the_same_way_to_the_caller() {
        let blocked = PolicyFacts { blocked: true, ..PolicyFacts::default() };
        assert_eq!(
            decide(&blocked, RateCaps::default(), at(0)),
            Err(PolicyRefusal::NotAllowed(NotAllowedReason::Blocked))
        );
        for (who, shared, admitted) in [
            (WhoCanCall::Everyone, false, true),
            (WhoCanCall::Conversations, true, true),
            (WhoCanCall::Conversations, false, false),
            (WhoCanCall::Nobody, true, false),
        ] {
            let facts = PolicyFacts {
                callee_settings: CallSettings { who_can_call: who, ..CallSettings::default() },
                share_conversation: shared,
                ..PolicyFacts::default()
            };
            let expected =
                if admitted { Ok(Admission::Ring) } else { Err(PolicyRefusal::NotAllowed(NotAllowedReason::Privacy)) };
            assert_eq!(decide(&facts, RateCaps::default(), at(0)), expected, "{who} shared={shared}");
        }
    }

    #[test]
    fn rate_caps_refuse_at_their_edge_until_the_oldest_call_leaves_the_window() {
        let caps = RateCaps { calls_per_minute: 20, unanswered_per_callee: 3 };
        let under =
            PolicyFacts { caller_recent: recent(19, 0), unanswered_to_callee: recent(2, 0), ..PolicyFacts::default() };
        assert_eq!(decide(&under, caps, at(30)), Ok(Admission::Ring));
        let at_cap = PolicyFacts { caller_recent: recent(20, 0), ..under };
        assert_eq!(
            decide(&at_cap, caps, at(30)),
            Err(PolicyRefusal::RateLimited { cap: RateCap::CallsPerMinute, retry_after: Duration::from_secs(30) })
        );
        let unanswered = PolicyFacts { unanswered_to_callee: recent(3, 0), ..under };
        assert_eq!(
            decide(&unanswered, caps, at(599)),
            Err(PolicyRefusal::RateLimited { cap: RateCap::UnansweredPerCallee, retry_after: Duration::from_secs(1) })
        );
        // A part of a second left is a whole second to wait; zero turns a cap off.
        let frees_in_a_fraction = PolicyFacts { caller_recent: recent(20, 0), ..PolicyFacts::default() };
        let now = at(59).plus(Duration::from_millis(400));
        assert_eq!(
            decide(&frees_in_a_fraction, caps, now),
            Err(PolicyRefusal::RateLimited { cap: RateCap::CallsPerMinute, retry_after: Duration::from_secs(1) })
        );
        let off = RateCaps { calls_per_minute: 0, unanswered_per_callee: 0 };
        assert_eq!(decide(&at_cap, off, at(30)), Ok(Admission::Ring));
    }

    #[test]
    fn do_not_disturb_rings_silently_until_its_time_passes() {
        let quiet = |do_not_disturb, until: Option<i64>| PolicyFacts {
            callee_settings: CallSettings {
                do_not_disturb,
                do_not_disturb_until: until.map(at),
                ..CallSettings::default()
            },
            ..PolicyFacts::default()
        };
        assert_eq!(decide(&quiet(true, None), RateCaps::default(), at(0)), Ok(Admission::Silently));
        assert_eq!(decide(&quiet(false, None), RateCaps::default(), at(0)), Ok(Admission::Ring));
        assert_eq!(decide(&quiet(false, Some(10)), RateCaps::default(), at(9)), Ok(Admission::Silently));
        assert_eq!(decide(&quiet(true, Some(10)), RateCaps::default(), at(10)), Ok(Admission::Ring));
        // A block outranks do-not-disturb: the blocked caller does not even ring silently.
        let both = PolicyFacts { blocked: true, ..quiet(true, None) };
        assert!(decide(&both, RateCaps::default(), at(0)).is_err());
    }

    #[test]
    fn a_change_keeps_the_fields_it_does_not_name() {
        let settings = CallSettings {
            who_can_call: WhoCanCall::Nobody,
            do_not_disturb: true,
            do_not_disturb_until: Some(at(5)),
            relay_only: true,
            call_waiting: false,
        };
        let change = CallSettingsChange { do_not_disturb_until: Some(None), ..CallSettingsChange::default() };
        assert_eq!(settings.changed_by(&change), CallSettings { do_not_disturb_until: None, ..settings });
        let change = CallSettingsChange { relay_only: Some(false), ..CallSettingsChange::default() };
        assert_eq!(settings.changed_by(&change), CallSettings { relay_only: false, ..settings });
        let change = CallSettingsChange { call_waiting: Some(true), ..CallSettingsChange::default() };
        assert_eq!(settings.changed_by(&change), CallSettings { call_waiting: true, ..settings });
    }

    #[test]
    fn call_waiting_rings_unless_do_not_disturb_silences() {
        let waiting = |quiet| PolicyFacts {
            callee_settings: CallSettings { call_waiting: true, do_not_disturb: quiet, ..CallSettings::default() },
            ..PolicyFacts::default()
        };
        assert_eq!(decide(&waiting(false), RateCaps::default(), at(0)), Ok(Admission::RingOrWait));
        assert_eq!(decide(&waiting(true), RateCaps::default(), at(0)), Ok(Admission::Silently));
        assert_eq!(decide(&PolicyFacts::default(), RateCaps::default(), at(0)), Ok(Admission::Ring));
    }
}
