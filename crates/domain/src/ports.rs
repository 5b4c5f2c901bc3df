//! The traits the outer crates implement. Each says what it promises in an `# Errors` section;
//! the domain never learns which database, directory or clock sits behind them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::accounts::AccountStatus;
use crate::call::{Call, CallMoment, NewCall, Transition};
use crate::quality::CallQuality;
use crate::values::{CallId, CallStatus, ConversationId, DeviceId, NotificationVerb, Timestamp, UserId};

/// A failure of the call repository that its callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No call has that id.
    #[error("call not found")]
    NotFound,
    /// The stored status is no longer the one the transition was computed from: another
    /// request, device or server instance changed the call first. Re-read and decide again.
    #[error("call changed concurrently; it is now {current}")]
    Conflict { current: CallStatus },
    /// `user` is already in another open call, so a new call cannot take their line.
    #[error("a party is already in another call")]
    LineBusy { user: UserId },
    /// The store failed or returned data the domain rejects. Logged at the edge, never shown.
    #[error("call storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A store that could not be reached: it is down, restarting, or had no free connection in
/// time. Adapters wrap such failures in this (inside [`RepositoryError::Storage`] or
/// [`DirectoryError`]) so the edge can answer "try again shortly" (HTTP 503 with
/// `Retry-After`) instead of reporting a server fault: nothing was lost and nothing is broken.
#[derive(Debug, thiserror::Error)]
#[error("the store is unavailable: {0}")]
pub struct StoreUnavailable(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Whether `error` or anything it was caused by is a [`StoreUnavailable`].
pub fn is_store_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<StoreUnavailable>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// Which of a user's calls to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallListFilter {
    /// Only calls whose other party is this user (the original app's `?user_id=`).
    pub with_user: Option<UserId>,
}

/// A 1-based page of `per_page` items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub per_page: u32,
}

impl PageRequest {
    /// Items skipped before this page.
    pub fn offset(self) -> u64 {
        u64::from(self.page.saturating_sub(1)) * u64::from(self.per_page)
    }
}

/// One page of results and how many there are in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

/// Where calls live.
///
/// Implementations must make [`CallRepository::create`] and [`CallRepository::apply`] atomic
/// with respect to each other across every process that shares the store: that is what makes
/// "exactly one wins" hold when two devices, two requests or two server instances race.
///
/// A change stores the notification it causes ([`NotificationVerb::caused_by`]) in the same
/// atomic step: the receiver's incoming-call notification with a new ringing call, the
/// missed-call notification with the change to `missed`. Observers hear of a change after it
/// is stored, so whoever reads notifications after any event of the change finds it, and no
/// crash between the two can lose it; [`NotificationRepository::caused_by`] reads it back.
#[async_trait]
pub trait CallRepository: Send + Sync + std::fmt::Debug {
    /// Stores a new ringing call and claims both parties' lines in the same atomic step.
    ///
    /// # Errors
    /// `LineBusy` naming a party already in another open call (nothing is stored);
    /// `Storage` when the store fails.
    async fn create(&self, call: NewCall) -> Result<Call, RepositoryError>;

    /// Stores `call` (made with [`NewCall::waiting`]) as a waiting call if its receiver's line
    /// is held by an *active* call, in one atomic step: the caller's line and the receiver's
    /// one waiting place are claimed with it. `None` when the receiver's line is no longer
    /// held by an active call (it ended meanwhile, or a call only rings there): nothing is
    /// stored, and the caller rings as usual. When the receiver's active call ends before a
    /// waiting call does, the waiting call takes the receiver's line (as if rung normally).
    ///
    /// # Errors
    /// `LineBusy` naming the caller if they are on a line, or the receiver if a call already
    /// waits for them; `Storage` when the store fails.
    async fn create_waiting(&self, call: NewCall) -> Result<Option<Call>, RepositoryError>;

    /// Call waiting: applies `ended` (the receiver's active call, ending as switched) and
    /// `accepted` (the waiting call, answered) in one transaction, each a compare-and-set as
    /// [`CallRepository::apply`]. `ended` may find its call already over (its other party hung
    /// up meanwhile): then only `accepted` is applied, and `false` returned. If `accepted`
    /// loses, nothing is applied.
    ///
    /// # Errors
    /// `Conflict`/`NotFound` for `accepted`, as [`CallRepository::apply`]; `Storage`.
    async fn switch(&self, ended: &Transition, accepted: &Transition) -> Result<bool, RepositoryError>;

    /// The call with this id, if any.
    ///
    /// # Errors
    /// `Storage` when the store fails or holds an inconsistent record.
    async fn get(&self, id: CallId) -> Result<Option<Call>, RepositoryError>;

    /// The calls `user` placed or received, newest first (by `started_at`, then id).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn list_for_user(
        &self,
        user: &UserId,
        filter: &CallListFilter,
        page: PageRequest,
    ) -> Result<Page<Call>, RepositoryError>;

    /// The open (ringing or active) calls in which `user` is a party.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn open_calls_of(&self, user: &UserId) -> Result<Vec<Call>, RepositoryError>;

    /// Up to `limit` calls still unanswered that started before `cutoff`, oldest first: the
    /// ones the ring timeout is due to expire.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn unanswered_started_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError>;

    /// Writes `transition.call` only if the stored status is still `transition.from`, and
    /// frees both parties' lines when the call finishes, in one atomic step.
    ///
    /// # Errors
    /// `Conflict` with the current status when another change won; `NotFound` when the call
    /// does not exist; `Storage` when the store fails.
    async fn apply(&self, transition: &Transition) -> Result<(), RepositoryError>;

    /// The newest call `user` placed or received (by id, the order calls were stored in). A
    /// party holds one line at a time and no call can be stored while a line is held, so a
    /// user's open call, when there is one, is always their newest.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn newest_call_of(&self, user: &UserId) -> Result<Option<Call>, RepositoryError>;

    /// The users who hold a line: the parties of every open call.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn users_on_lines(&self) -> Result<Vec<UserId>, RepositoryError>;

    /// Records that `users` had a live socket at `at`, on the lines they hold (users without
    /// one are skipped). Never moves a party's last-seen moment backwards, so several server
    /// instances may report the same user.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn mark_seen(&self, users: &[UserId], at: Timestamp) -> Result<(), RepositoryError>;

    /// Up to `limit` calls nobody is left in, each with the moment the last one was seen: active
    /// calls neither of whose parties was seen at or after `seen_before` (with the later of the
    /// two last-seen moments), and ringing calls whose caller was not (with the caller's).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn abandoned_calls(
        &self,
        seen_before: Timestamp,
        limit: u32,
    ) -> Result<Vec<(Call, Timestamp)>, RepositoryError>;

    /// Up to `limit` active calls answered before `cutoff`, oldest first.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn active_answered_before(&self, cutoff: Timestamp, limit: u32) -> Result<Vec<Call>, RepositoryError>;

    /// [`CallRepository::apply`], and only if still nobody the call needs was seen at or
    /// after `seen_before` (either party of an active call, the caller of a ringing one): a
    /// party that came back in time keeps the call, even when another server instance decided
    /// to end it a moment earlier.
    ///
    /// # Errors
    /// `Conflict` when the status changed or a party was seen since; as `apply` otherwise.
    async fn apply_if_abandoned(&self, transition: &Transition, seen_before: Timestamp) -> Result<(), RepositoryError>;

    /// Makes `device` the receiver's device of active call `id` ([`Call::callee_device`]) if
    /// no device holds it, `device` already does, or `replacing` does (a device the caller of
    /// this method knows is gone), in one atomic step: of several instances claiming at once,
    /// exactly one is granted.
    ///
    /// # Errors
    /// `NotFound` when the call does not exist; `Storage` when the store fails.
    async fn claim_callee_device(
        &self,
        id: CallId,
        device: DeviceId,
        replacing: Option<DeviceId>,
    ) -> Result<DeviceClaim, RepositoryError>;

    /// Lets go of call `id` if `device` holds it (its socket closed), so that the receiver's
    /// next device may claim it. Nothing happens otherwise.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn release_callee_device(&self, id: CallId, device: DeviceId) -> Result<(), RepositoryError>;

    /// Replaces call `id`'s quality summary with `next` if it is still `current` (`None`: no
    /// summary yet), in one atomic step; returns whether it did. Touches nothing else of the
    /// call, and no change of the call's status is recorded for it.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn set_quality(
        &self,
        id: CallId,
        current: Option<&CallQuality>,
        next: &CallQuality,
    ) -> Result<bool, RepositoryError>;

    /// Records `moment` of call `id` as `at` if it has not happened yet and the call is still
    /// in the status the moment belongs to (`Rang`: ringing; `VideoStarted`: active), in one
    /// atomic step; returns whether it did (of several devices or instances reporting at
    /// once, exactly one). Touches nothing else of the call.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn record_moment(&self, id: CallId, moment: CallMoment, at: Timestamp) -> Result<bool, RepositoryError>;
}

/// What [`CallRepository::claim_callee_device`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClaim {
    /// The device holds the call now (or held it already).
    Granted,
    /// Another device holds it.
    HeldBy(DeviceId),
    /// The call is not active (not answered yet, or over): nobody holds it.
    NotActive(CallStatus),
}

/// What the API shows of a user. Deliberately no email or phone number: the other party of a
/// call must not learn them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    pub id: UserId,
    pub username: String,
    pub first_name: String,
    pub last_name: String,
    pub profile_image_url: Option<String>,
}

/// A failure of the directory.
#[derive(Debug, thiserror::Error)]
#[error("directory lookup failed: {0}")]
pub struct DirectoryError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// Who exists and who belongs to which conversation. The standalone server keeps this in its
/// own database; an application that embeds Ringline answers from its own user tables.
#[async_trait]
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The user with this id, if known.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails (not when the user is unknown).
    async fn user(&self, id: &UserId) -> Result<Option<UserProfile>, DirectoryError>;

    /// The known users among `ids`, in no particular order; unknown ids are left out.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    async fn users(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, DirectoryError>;

    /// The participants of a conversation, or `None` if there is no such conversation.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    async fn conversation_participants(&self, id: ConversationId) -> Result<Option<Vec<UserId>>, DirectoryError>;

    /// The people `user` may call from a contact list: the other participants of every
    /// conversation `user` is in, each once, ordered by username, at most `limit`. Nobody else
    /// is revealed. A directory that cannot tell returns none (the default): clients then list
    /// the people of the call history only.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    async fn contacts_of(&self, user: &UserId, limit: u32) -> Result<Vec<UserProfile>, DirectoryError> {
        let _ = (user, limit);
        Ok(Vec::new())
    }

    /// Whether `id` may use the service ([`AccountStatus`]). The default knows only whether the
    /// user is known: a directory that removes or deactivates users says so.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    async fn account_status(&self, id: &UserId) -> Result<AccountStatus, DirectoryError> {
        Ok(if self.user(id).await?.is_some() { AccountStatus::Active } else { AccountStatus::Unknown })
    }

    /// Every user whose tokens are refused ([`AccountStatus::Inactive`] or
    /// [`AccountStatus::Removed`]). The default knows none.
    ///
    /// # Errors
    /// `DirectoryError` when the lookup fails.
    async fn refused_accounts(&self) -> Result<Vec<(UserId, AccountStatus)>, DirectoryError> {
        Ok(Vec::new())
    }
}

/// The current time. Passed in so that tests and the state machine never read a global clock.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from(chrono::Utc::now())
    }
}

/// A clock that moves only when told: tests (and simulations) drive every decision in time
/// with it, instead of waiting for the wall clock. Starts at the system's time.
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::starting_at(SystemClock.now())
    }

    pub fn starting_at(now: Timestamp) -> Self {
        Self { now: std::sync::Mutex::new(now) }
    }

    /// Moves the clock `by` forward.
    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *now = now.plus(by);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Who receives a signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One copy per live session of the user, on exactly one kind of socket: every
    /// notification socket of theirs, or, only while they have none open, every chat socket of
    /// theirs instead.
    ///
    /// Why one kind: the original app's clients feed both sockets into one handler and apply
    /// every copy they get, so a second copy of an SDP answer breaks the peer connection. Every
    /// page of theirs holds a notification socket; the chat socket is the fallback that still
    /// reaches a user whose notification socket is down (`docs/protocol.md`, "Routing").
    User(UserId),
    /// Every chat socket open on the conversation (typing indicators).
    Conversation(ConversationId),
}

/// An encoded server event on its way to live sessions. The payload is opaque here: the wire
/// protocol belongs to the signaling crate.
#[derive(Debug, Clone)]
pub struct Signal {
    pub audience: Audience,
    /// The session that caused the event and must not get it back.
    pub except_device: Option<DeviceId>,
    /// For a conversation audience: a user whose sessions must not get it (the sender).
    pub except_user: Option<UserId>,
    /// The encoded event, shared by every recipient.
    pub payload: Arc<str>,
}

/// Delivers signals to live sessions, in this process or (for a shared implementation such as
/// Redis pub/sub) in every process.
///
/// `route` never blocks and never waits for slow recipients: each implementation decides, in
/// its own documentation, what happens to a recipient that cannot keep up.
pub trait SignalRouter: Send + Sync + std::fmt::Debug {
    fn route(&self, signal: Signal);

    /// Tells the other instances that `call` changed, so that copies of it they keep (the
    /// relay's cache) follow; with its `parties`' profiles when known, so that an instance
    /// holding a party's sessions can keep the new copy rather than read it again. A single
    /// process has nobody to tell.
    fn call_changed(&self, _call: &Call, _parties: Option<&[UserProfile]>) {}

    /// `user` is no longer a participant of `conversation`: the sessions that joined it as
    /// `user` (chat sockets), on every instance, are closed. A router without such sessions
    /// has nothing to do.
    fn participant_removed(&self, _conversation: ConversationId, _user: &UserId) {}

    /// `user`'s account is now `status` (removed, deactivated or restored): every instance
    /// updates its [`crate::Accounts`], and a refused user's sessions, on every instance, are
    /// closed. A single process has nobody to tell and, without sessions, nothing to close.
    fn account_changed(&self, _user: &UserId, _status: AccountStatus) {}
}

/// A notification about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub recipient: UserId,
    pub actor: Option<UserId>,
    pub verb: NotificationVerb,
    pub call: CallId,
    pub conversation: Option<ConversationId>,
    pub created_at: Timestamp,
}

/// A stored notification about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub recipient: UserId,
    pub actor: Option<UserId>,
    pub verb: NotificationVerb,
    pub call: CallId,
    pub conversation: Option<ConversationId>,
    pub unread: bool,
    pub created_at: Timestamp,
}

/// The server's VAPID key pair (Web Push): the private key as PKCS#8 DER, base64 (standard
/// alphabet), and the public key as the 65-byte uncompressed point, base64url without padding
/// (what browsers' `applicationServerKey` takes). Made once, kept by the storage, shared by
/// every instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VapidKeys {
    pub private_pkcs8_base64: String,
    pub public_key: String,
}

/// Whether the server may send requests to a URL a user gave it (a Web Push endpoint): the
/// rules against server-side request forgery, asked when the URL is stored. (Whoever sends to
/// it checks again, as the name then resolves.)
pub trait UserUrlPolicy: Send + Sync + std::fmt::Debug {
    /// # Errors
    /// Why the URL is refused, for people, as a predicate: "must be an https:// URL".
    fn check(&self, url: &str) -> Result<(), String>;
}

/// Where notifications live.
#[async_trait]
pub trait NotificationRepository: Send + Sync + std::fmt::Debug {
    /// # Errors
    /// `Storage` when the store fails.
    async fn create(&self, notification: NewNotification) -> Result<Notification, RepositoryError>;

    /// The notification that `call`'s change to its current status (`call` as it is after the
    /// change) stored for `recipient` with `verb` (see [`CallRepository`]), if any. The
    /// notification is made of the call, so a store reads only what the call cannot tell.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn caused_by(
        &self,
        recipient: &UserId,
        call: &Call,
        verb: NotificationVerb,
    ) -> Result<Option<Notification>, RepositoryError>;

    /// `recipient`'s notifications, newest first.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn list(&self, recipient: &UserId, page: PageRequest) -> Result<Page<Notification>, RepositoryError>;

    /// Marks one of `recipient`'s notifications read; `false` if they have none with that id.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn mark_read(&self, recipient: &UserId, id: i64) -> Result<bool, RepositoryError>;

    /// Marks all of `recipient`'s notifications read and returns how many were unread.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn mark_all_read(&self, recipient: &UserId) -> Result<u64, RepositoryError>;
}

/// Where a call change came from, beyond the change itself. Empty for REST requests, timers
/// and sweeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeOrigin<'a> {
    /// The device (socket) whose frame made the change: its user's *other* devices are told.
    pub device: Option<DeviceId>,
    /// The callee's SDP answer, as the raw JSON its device sent, when a socket `call.answer`
    /// accepted the call: the caller gets it with the acceptance.
    pub answer: Option<&'a str>,
}

/// Told of every change the [`crate::CallService`] stores, right after it is stored, before
/// the service returns: the signaling hub announces calls to devices this way, and metrics,
/// webhooks or push can listen the same way. Whoever drives the service (REST, sockets, the
/// timers, an embedding application) therefore cannot change a call without it being told.
///
/// Observers must not fail the change: it is already stored. They log their own failures.
#[async_trait]
pub trait CallObserver: Send + Sync + std::fmt::Debug {
    /// `call` was created and is ringing. `parties` are the profiles of its parties the
    /// directory knew (read to place the call).
    async fn ringing(&self, call: &Call, parties: &[UserProfile]);

    /// `transition` was stored. `parties` when the service read them for this change (an
    /// accepted crossing call), so the observer need not read them again.
    async fn changed(&self, transition: &Transition, origin: ChangeOrigin<'_>, parties: Option<&[UserProfile]>);

    /// A call attempt was refused by the policy before anything was stored (nothing else is
    /// told of it). Only the reason: no user.
    async fn refused(&self, _refusal: crate::policy::PolicyRefusal) {}

    /// `moment` was recorded on `call` (it is in `call`), the first time it happened.
    async fn moment(&self, _call: &Call, _moment: CallMoment) {}
}

/// A browser's Web Push subscription (`PushSubscription.toJSON()`): where its push service
/// takes messages, and the keys the messages are encrypted to (base64url, as the browser
/// gives them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    pub endpoint: String,
    /// The browser's P-256 public key (65 bytes, uncompressed).
    pub p256dh: String,
    /// The browser's authentication secret (16 bytes).
    pub auth: String,
}

/// The most browsers one user's calls ring by Web Push: a user signs in on a handful, and
/// each ring costs a request per browser, so a user must not be able to make one call fan out
/// into hundreds of requests.
pub const MAX_PUSH_SUBSCRIPTIONS_PER_USER: usize = 5;

/// The Web Push subscriptions of users' browsers (several per user).
#[async_trait]
pub trait PushSubscriptions: Send + Sync + std::fmt::Debug {
    /// Stores `subscription` for `user`; an endpoint stored before (for anyone) is replaced:
    /// a browser has one subscription, for whoever signed in last. Keeps the user's
    /// [`MAX_PUSH_SUBSCRIPTIONS_PER_USER`] most recently stored subscriptions, removing older
    /// ones.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn subscribe(
        &self,
        user: &UserId,
        subscription: &PushSubscription,
        now: Timestamp,
    ) -> Result<(), RepositoryError>;

    /// The server's VAPID key pair: the stored one, or `generate`d and stored now (the first
    /// of several instances starting at once wins; every one returns the stored pair).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn vapid_keys(&self, generate: fn() -> VapidKeys) -> Result<VapidKeys, RepositoryError>;

    /// Removes `user`'s subscription at `endpoint`; whether there was one.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn unsubscribe(&self, user: &UserId, endpoint: &str) -> Result<bool, RepositoryError>;

    /// Removes the subscription at `endpoint`, whoever's it was (its push service said it is
    /// gone).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn forget(&self, endpoint: &str) -> Result<(), RepositoryError>;

    /// `user`'s subscriptions.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn of_user(&self, user: &UserId) -> Result<Vec<PushSubscription>, RepositoryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    /// The marker is found however deep the adapters wrapped it, and only where it is.
    #[test]
    fn an_unavailable_store_is_recognised_through_its_wrappers() {
        let wrapped = RepositoryError::Storage(Box::new(StoreUnavailable(Box::new(Refused))));
        assert!(is_store_unavailable(&wrapped));
        let directory = DirectoryError(Box::new(StoreUnavailable(Box::new(Refused))));
        assert!(is_store_unavailable(&directory));
        assert!(!is_store_unavailable(&RepositoryError::Storage(Box::new(Refused))));
        assert!(!is_store_unavailable(&RepositoryError::NotFound));
    }
}
