//! Mobile push: ringing a phone whose app is closed, through the push services its app
//! registered with (Expo, Firebase Cloud Messaging, Apple's VoIP pushes).
//!
//! - A device registers a token ([`DeviceRegistration`]) as the original app does at
//!   `/api/device-tokens/`; the service it belongs to is named or inferred
//!   ([`PushProvider::inferred`]).
//! - Every call that rings its receiver (not a do-not-disturb call) stores one
//!   [`MobilePushKind::Ring`] per token of the receiver, and the change that makes it stop
//!   ringing one [`MobilePushKind::StopRinging`] per token whose service takes it, in the
//!   call's own statement (the storage crate's triggers): a crash loses none.
//! - A push that fails is retried ([`after_failure`]) until it stops mattering
//!   ([`MobilePush::deadline`]); a ring whose call no longer rings is dropped, not sent.
//!
//! The storage crate keeps the tokens and the outbox ([`DeviceTokens`], [`MobilePushOutbox`]);
//! the outbound crate sends.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Call, CallStatus, Page, PageRequest, RepositoryError, Timestamp, UserId};

/// The longest token stored. Expo's are about 41 characters, FCM's about 160, APNs' 64.
pub const MAX_DEVICE_TOKEN_LENGTH: usize = 512;

/// The most devices one user's calls ring by mobile push; registering another drops the one
/// seen longest ago. A ring costs a request per token, so one call must not fan out into
/// hundreds of requests.
pub const MAX_DEVICE_TOKENS_PER_USER: usize = 10;

/// How long after a call was missed its missed-call notification is still worth pushing.
pub const MISSED_CALL_PUSH_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The kind of device, as the original app's `DeviceToken.platform` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DevicePlatform {
    Ios,
    Android,
    Web,
}

impl DevicePlatform {
    pub const ALL: [Self; 3] = [Self::Ios, Self::Android, Self::Web];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ios => "ios",
            Self::Android => "android",
            Self::Web => "web",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|platform| platform.as_str() == text)
    }
}

/// The push service a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PushProvider {
    /// Expo's push service (`ExponentPushToken[…]`), for Expo and React Native apps on iOS and
    /// Android.
    Expo,
    /// Firebase Cloud Messaging (HTTP v1): web browsers through the Firebase SDK, and native
    /// Android apps.
    Fcm,
    /// Apple's push service, VoIP pushes (a PushKit token of a native iOS app).
    ApnsVoip,
}

impl PushProvider {
    pub const ALL: [Self; 3] = [Self::Expo, Self::Fcm, Self::ApnsVoip];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expo => "expo",
            Self::Fcm => "fcm",
            Self::ApnsVoip => "apns_voip",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|provider| provider.as_str() == text)
    }

    /// The service of a token registered without one, as the original app decides: an Expo
    /// token is Expo's; otherwise an iOS token is a PushKit (VoIP) token, and any other an FCM
    /// token.
    pub fn inferred(token: &str, platform: DevicePlatform) -> Self {
        if is_expo_token(token) {
            Self::Expo
        } else if platform == DevicePlatform::Ios {
            Self::ApnsVoip
        } else {
            Self::Fcm
        }
    }

    /// Whether a ring's end is pushed too: Expo and FCM take a data message that dismisses
    /// the incoming-call screen. Apple requires every VoIP push to report a new call to
    /// CallKit, so an iOS app learns of the end from Ringline itself once woken.
    pub fn takes_stop_ringing(self) -> bool {
        matches!(self, Self::Expo | Self::Fcm)
    }
}

/// `ExponentPushToken[…]` or `ExpoPushToken[…]`.
pub fn is_expo_token(token: &str) -> bool {
    (token.starts_with("ExponentPushToken[") || token.starts_with("ExpoPushToken[")) && token.ends_with(']')
}

/// Why a token cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDeviceToken {
    #[error("token must not be empty")]
    Empty,
    #[error("token must be at most {MAX_DEVICE_TOKEN_LENGTH} characters")]
    TooLong,
    #[error("token must be printable ASCII without spaces")]
    Characters,
    #[error("an expo token looks like ExponentPushToken[…]")]
    NotExpo,
    #[error("an apns_voip token is the hexadecimal device token PushKit gives, on platform ios")]
    NotApns,
}

/// A token a device asks to be rung at, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRegistration {
    pub token: String,
    pub platform: DevicePlatform,
    pub provider: PushProvider,
}

impl DeviceRegistration {
    /// Checks `token` for `provider` (inferred when `None`). The token ends up in a request to
    /// its service (an APNs token in the URL's path), so only what the service's tokens are
    /// made of is taken.
    ///
    /// # Errors
    /// [`InvalidDeviceToken`] saying what is wrong.
    pub fn new(
        token: String,
        platform: DevicePlatform,
        provider: Option<PushProvider>,
    ) -> Result<Self, InvalidDeviceToken> {
        if token.is_empty() {
            return Err(InvalidDeviceToken::Empty);
        }
        if token.len() > MAX_DEVICE_TOKEN_LENGTH {
            return Err(InvalidDeviceToken::TooLong);
        }
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(InvalidDeviceToken::Characters);
        }
        let provider = provider.unwrap_or_else(|| PushProvider::inferred(&token, platform));
        match provider {
            PushProvider::Expo if !is_expo_token(&token) => return Err(InvalidDeviceToken::NotExpo),
            PushProvider::ApnsVoip
                if platform != DevicePlatform::Ios
                    || !token.len().is_multiple_of(2)
                    || token.len() > 200
                    || !token.bytes().all(|byte| byte.is_ascii_hexdigit()) =>
            {
                return Err(InvalidDeviceToken::NotApns);
            }
            _ => {}
        }
        Ok(Self { token, platform, provider })
    }
}

/// A stored token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceToken {
    pub id: i64,
    pub user: UserId,
    pub token: String,
    pub platform: DevicePlatform,
    pub provider: PushProvider,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// The device tokens users registered.
#[async_trait]
pub trait DeviceTokens: Send + Sync + std::fmt::Debug {
    /// Stores `registration` for `user`: a token stored before (for anyone) moves to `user`,
    /// with this platform and service, and is seen now. Keeps the user's
    /// [`MAX_DEVICE_TOKENS_PER_USER`] tokens seen most recently, removing older ones.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn register(
        &self,
        user: &UserId,
        registration: &DeviceRegistration,
        now: Timestamp,
    ) -> Result<DeviceToken, RepositoryError>;

    /// `user`'s tokens, the one seen most recently first.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn list(&self, user: &UserId, page: PageRequest) -> Result<Page<DeviceToken>, RepositoryError>;

    /// Removes `user`'s token `id`; whether it was theirs (another user's is not touched).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn remove(&self, user: &UserId, id: i64) -> Result<bool, RepositoryError>;
}

/// What a push says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MobilePushKind {
    /// The call rings this device's user.
    Ring,
    /// It stopped ringing (answered, declined, cancelled or missed).
    StopRinging,
}

impl MobilePushKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::StopRinging => "stop_ringing",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Ring, Self::StopRinging].into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One push due for one token, leased to the instance that claimed it.
#[derive(Debug, Clone)]
pub struct MobilePush {
    pub id: i64,
    pub kind: MobilePushKind,
    pub token: DeviceToken,
    /// The call as it is now (not as it was when the push was stored).
    pub call: Call,
    /// Attempts made before this one.
    pub attempts: u32,
}

impl MobilePush {
    /// When this push stops mattering: a ring at the call's ring deadline; the end of a ring
    /// when the ring would have ended anyway, but a missed call's notification an hour after
    /// it was missed.
    pub fn deadline(&self, ring_timeout: Duration) -> Timestamp {
        match self.kind {
            MobilePushKind::Ring => self.call.started_at().plus(ring_timeout),
            MobilePushKind::StopRinging => {
                let ended = self.call.ended_at().unwrap_or_else(|| self.call.updated_at());
                if self.call.status() == CallStatus::Missed {
                    ended.plus(MISSED_CALL_PUSH_LIFETIME)
                } else {
                    ended.plus(ring_timeout).max(self.call.started_at().plus(ring_timeout))
                }
            }
        }
    }

    /// Why it must not be sent any more, if so: a ring whose call no longer rings, a push
    /// past its [`MobilePush::deadline`], or a token that has since moved to another user.
    pub fn stale(&self, now: Timestamp, ring_timeout: Duration) -> Option<&'static str> {
        if &self.token.user != self.call.receiver() {
            Some("the token now belongs to another user")
        } else if self.kind == MobilePushKind::Ring && self.call.status() != CallStatus::Ringing {
            Some("the call no longer rings")
        } else if now >= self.deadline(ring_timeout) {
            Some("its moment has passed")
        } else {
            None
        }
    }
}

/// How a push service refused a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefusal {
    /// The token is no longer valid (uninstalled app, expired token): it is deleted.
    TokenGone { reason: String },
    /// Worth another try: a 5xx, a 429 (with the service's `Retry-After`, if it gave one), a
    /// timeout, no connection.
    Transient { status: Option<u16>, retry_after: Option<Duration>, error: String },
    /// Never worth another try: the message or Ringline's credentials were refused.
    Permanent { status: Option<u16>, error: String },
}

/// How an attempt ended, as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MobilePushOutcome {
    /// The service accepted it.
    Sent,
    /// The service said the token is gone: the token is deleted, with its other pushes.
    TokenGone { reason: String },
    /// Not sent: it no longer mattered ([`MobilePush::stale`]).
    Dropped { reason: String },
    /// Tried again at `at`.
    RetryAt { at: Timestamp, status: Option<u16>, error: String },
    /// Given up: refused for good, or no retry could arrive before the deadline.
    Failed { status: Option<u16>, error: String },
}

impl MobilePushOutcome {
    /// The outbox's name of the state it leaves the push in.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::TokenGone { .. } => "token_gone",
            Self::Dropped { .. } => "dropped",
            Self::RetryAt { .. } => "pending",
            Self::Failed { .. } => "failed",
        }
    }
}

/// What follows `refusal` of `push` at `now`: a transient failure is retried after the
/// webhooks' backoff ([`crate::webhooks::retry_delay`]), or after the service's `Retry-After`
/// when that is longer, unless the retry would come after the push's deadline.
pub fn after_failure(
    push: &MobilePush,
    refusal: PushRefusal,
    now: Timestamp,
    ring_timeout: Duration,
    jitter: f64,
) -> MobilePushOutcome {
    match refusal {
        PushRefusal::TokenGone { reason } => MobilePushOutcome::TokenGone { reason },
        PushRefusal::Permanent { status, error } => MobilePushOutcome::Failed { status, error },
        PushRefusal::Transient { status, retry_after, error } => {
            let backoff = crate::webhooks::retry_delay(push.attempts + 1, jitter);
            let at = now.plus(retry_after.map_or(backoff, |asked| asked.max(backoff)));
            if at >= push.deadline(ring_timeout) {
                MobilePushOutcome::Failed { status, error: format!("{error} (no retry in time)") }
            } else {
                MobilePushOutcome::RetryAt { at, status, error }
            }
        }
    }
}

/// The outbox of mobile pushes (in the storage crate). Pushes are stored by the call's own
/// statement, only for the services marked active ([`MobilePushOutbox::set_providers`]).
#[async_trait]
pub trait MobilePushOutbox: Send + Sync + std::fmt::Debug {
    /// Makes `providers` the services pushes are stored for; the pending pushes of any other
    /// are dropped. (Every instance should be configured alike: the last to start decides.)
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn set_providers(&self, providers: &[PushProvider]) -> Result<(), RepositoryError>;

    /// Leases up to `limit` pushes due at `now` for one of `providers` to `sender` until
    /// `lease_until`, with their tokens and calls as they are now. A push waits while an older
    /// one for the same call and token is in flight, so a ring's end never overtakes it.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn claim_due(
        &self,
        sender: &str,
        providers: &[PushProvider],
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<MobilePush>, RepositoryError>;

    /// Records how an attempt ended and releases the lease; [`MobilePushOutcome::TokenGone`]
    /// deletes the token too.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn finish(
        &self,
        push: &MobilePush,
        outcome: &MobilePushOutcome,
        now: Timestamp,
    ) -> Result<(), RepositoryError>;

    /// Ends the leases `sender` holds (it has just started: what it was sending when it
    /// stopped is due again at once).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn release_leases(&self, sender: &str) -> Result<u64, RepositoryError>;

    /// Deletes finished pushes finished before `before`; returns how many.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn prune(&self, before: Timestamp) -> Result<u64, RepositoryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_inferred_as_the_original_app_does() {
        use DevicePlatform::*;
        use PushProvider::*;
        assert_eq!(PushProvider::inferred("ExponentPushToken[abc]", Ios), Expo);
        assert_eq!(PushProvider::inferred("ExpoPushToken[abc]", Android), Expo);
        assert_eq!(PushProvider::inferred("fcm-token:APA91b", Web), Fcm);
        assert_eq!(PushProvider::inferred("fcm-token:APA91b", Android), Fcm);
        assert_eq!(PushProvider::inferred("a1b2", Ios), ApnsVoip);
    }

    #[test]
    fn tokens_are_checked_for_their_service() {
        let register = |token: &str, platform, provider| DeviceRegistration::new(token.to_owned(), platform, provider);
        assert!(register("ExponentPushToken[x]", DevicePlatform::Android, None).is_ok());
        assert_eq!(register("", DevicePlatform::Web, None), Err(InvalidDeviceToken::Empty));
        assert_eq!(register(&"a".repeat(513), DevicePlatform::Web, None), Err(InvalidDeviceToken::TooLong));
        assert_eq!(register("a b", DevicePlatform::Web, None), Err(InvalidDeviceToken::Characters));
        assert_eq!(register("é", DevicePlatform::Web, None), Err(InvalidDeviceToken::Characters));
        assert_eq!(
            register("abc", DevicePlatform::Android, Some(PushProvider::Expo)),
            Err(InvalidDeviceToken::NotExpo)
        );
        // An iOS token that is not hexadecimal would become part of the APNs request's path.
        assert_eq!(register("../../x", DevicePlatform::Ios, None), Err(InvalidDeviceToken::NotApns));
        assert_eq!(
            register("abcd", DevicePlatform::Android, Some(PushProvider::ApnsVoip)),
            Err(InvalidDeviceToken::NotApns)
        );
        let apns = register(&"ab".repeat(32), DevicePlatform::Ios, None).expect("a PushKit token");
        assert_eq!(apns.provider, PushProvider::ApnsVoip);
        let fcm = register("ios-fcm:token", DevicePlatform::Ios, Some(PushProvider::Fcm)).expect("named");
        assert_eq!(fcm.provider, PushProvider::Fcm);
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000 + seconds * 1_000_000).expect("in range")
    }

    fn push(kind: MobilePushKind, call: Call, receiver: &str) -> MobilePush {
        let token = DeviceToken {
            id: 1,
            user: UserId::parse(receiver).expect("id"),
            token: "ExponentPushToken[x]".into(),
            platform: DevicePlatform::Android,
            provider: PushProvider::Expo,
            created_at: at(0),
            last_seen_at: at(0),
        };
        MobilePush { id: 1, kind, token, call, attempts: 0 }
    }

    fn ringing() -> Call {
        let (alice, bob) = (UserId::parse("alice").expect("id"), UserId::parse("bob").expect("id"));
        crate::NewCall::ring(alice, bob, crate::CallType::Voice, None, at(0))
            .expect("two parties")
            .into_call(crate::CallId::new(7).expect("id"))
    }

    fn changed(outcome: crate::Outcome) -> Call {
        match outcome {
            crate::Outcome::Changed(transition) => transition.call,
            crate::Outcome::AlreadyDone(call) => call,
        }
    }

    const RING: Duration = Duration::from_secs(30);

    #[test]
    fn a_ring_matters_while_its_call_rings_and_only_to_its_receiver() {
        let ring = push(MobilePushKind::Ring, ringing(), "bob");
        assert_eq!(ring.deadline(RING), at(30));
        assert_eq!(ring.stale(at(29), RING), None);
        assert!(ring.stale(at(30), RING).is_some(), "past the ring deadline");
        let declined = changed(ringing().reject(&UserId::parse("bob").expect("id"), at(5)).expect("reject"));
        assert!(push(MobilePushKind::Ring, declined.clone(), "bob").stale(at(6), RING).is_some());
        assert_eq!(push(MobilePushKind::StopRinging, declined.clone(), "bob").stale(at(6), RING), None);
        assert!(push(MobilePushKind::StopRinging, declined, "carol").stale(at(6), RING).is_some(), "moved");
        let missed = changed(ringing().expire(at(30), RING).expect("missed"));
        assert_eq!(push(MobilePushKind::StopRinging, missed, "bob").deadline(RING), at(30 + 3600));
    }

    #[test]
    fn failures_are_retried_while_they_matter() {
        let ring = push(MobilePushKind::Ring, ringing(), "bob");
        let transient = |retry_after| PushRefusal::Transient { status: Some(429), retry_after, error: "busy".into() };
        // The backoff (2 s), or the service's Retry-After when longer.
        assert_eq!(
            after_failure(&ring, transient(None), at(1), RING, 0.0),
            MobilePushOutcome::RetryAt { at: at(3), status: Some(429), error: "busy".into() }
        );
        let asked = after_failure(&ring, transient(Some(Duration::from_secs(10))), at(1), RING, 0.0);
        assert!(matches!(asked, MobilePushOutcome::RetryAt { at: when, .. } if when == at(11)));
        // No retry that would come after the ring ended.
        let late = after_failure(&ring, transient(Some(Duration::from_secs(40))), at(1), RING, 0.0);
        assert!(matches!(late, MobilePushOutcome::Failed { .. }), "{late:?}");
        let gone = after_failure(&ring, PushRefusal::TokenGone { reason: "Unregistered".into() }, at(1), RING, 0.0);
        assert_eq!(gone.state(), "token_gone");
        let refused = PushRefusal::Permanent { status: Some(400), error: "bad".into() };
        assert_eq!(after_failure(&ring, refused, at(1), RING, 0.0).state(), "failed");
    }

    #[test]
    fn names_round_trip() {
        for provider in PushProvider::ALL {
            assert_eq!(PushProvider::parse(provider.as_str()), Some(provider));
        }
        for platform in DevicePlatform::ALL {
            assert_eq!(DevicePlatform::parse(platform.as_str()), Some(platform));
        }
        for kind in [MobilePushKind::Ring, MobilePushKind::StopRinging] {
            assert_eq!(MobilePushKind::parse(kind.as_str()), Some(kind));
        }
    }
}
