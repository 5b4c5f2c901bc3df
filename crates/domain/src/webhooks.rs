//! Call webhooks: the events a host app is told of, and the rules of their delivery. The
//! storage crate keeps the outbox ([`WebhookOutbox`]); the api crate sends.
//!
//! Every stored change of a call's status becomes one event per webhook subscription, written
//! by the database in the same statement as the change (so a crash loses none). A delivery is
//! tried until the receiver answers 2xx, with retries that back off from 2 s to 5 minutes
//! ([`retry_delay`]); what happens after a failure is [`after_failure`].

use std::time::Duration;

use async_trait::async_trait;

use crate::{Call, CallStatus, RepositoryError, Timestamp};

/// What happened to a call, as a webhook's `type` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEventType {
    Ringing,
    Accepted,
    Rejected,
    Cancelled,
    Missed,
    Ended,
}

impl WebhookEventType {
    pub const ALL: [Self; 6] =
        [Self::Ringing, Self::Accepted, Self::Rejected, Self::Cancelled, Self::Missed, Self::Ended];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "call.ringing",
            Self::Accepted => "call.accepted",
            Self::Rejected => "call.rejected",
            Self::Cancelled => "call.cancelled",
            Self::Missed => "call.missed",
            Self::Ended => "call.ended",
        }
    }

    /// The event a call entering `status` causes (none for `initiating`, never stored).
    pub fn for_status(status: CallStatus) -> Option<Self> {
        Some(match status {
            CallStatus::Initiating => return None,
            CallStatus::Ringing => Self::Ringing,
            CallStatus::Active => Self::Accepted,
            CallStatus::Rejected => Self::Rejected,
            CallStatus::Cancelled => Self::Cancelled,
            CallStatus::Missed => Self::Missed,
            CallStatus::Ended => Self::Ended,
        })
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One event of the outbox: the call as it was right after the change.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    /// The event's id, unique and stable across retries: the receiver's idempotency key.
    pub id: String,
    pub kind: WebhookEventType,
    pub call: Call,
    pub created_at: Timestamp,
    /// For `call.ringing`: whether the callee had a socket open anywhere when it was first
    /// sent (kept, so every retry says the same).
    pub receiver_online: Option<bool>,
    /// The outbox's own key of the event.
    pub row: i64,
}

/// One event due for one subscription, leased to the instance that claimed it.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub id: i64,
    pub url: String,
    pub event: WebhookEvent,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How an attempt ended, as the outbox records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// The receiver answered 410 Gone: no more attempts for this event to this subscription.
    Gone,
    /// A `call.ringing` that can no longer matter: the ring deadline has passed.
    Expired { status: Option<u16>, error: String },
    /// Retried at `at`.
    RetryAt { at: Timestamp, status: Option<u16>, error: String },
    /// Tried for longer than the outbox keeps trying.
    GaveUp { status: Option<u16>, error: String },
}

/// The first retry waits about this long; each next one twice as long, up to [`MAX_RETRY_DELAY`].
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(2);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);

/// How long to wait after the `failures`-th failed attempt (1 for the first): 2 s, 4 s, 8 s …
/// up to 5 minutes, each stretched by `jitter` (0.0–1.0 adds up to 20 %), so that receivers
/// coming back are not hit by every instance at the same instant.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let delay = FIRST_RETRY_DELAY.saturating_mul(1 << doublings).min(MAX_RETRY_DELAY);
    delay.mul_f64(1.0 + 0.2 * jitter.clamp(0.0, 1.0)).min(MAX_RETRY_DELAY)
}

/// What follows a failed attempt (`status`: the receiver's answer, if any).
///
/// - 410 Gone: the subscription wants no more of this event.
/// - A `call.ringing` past its ring deadline (`started_at + ring_timeout`) is not retried: by
///   then the call was answered, cancelled or missed, and that event follows.
/// - Past `give_up_after` since the event: given up.
/// - Otherwise retried after [`retry_delay`].
pub fn after_failure(
    delivery: &WebhookDelivery,
    status: Option<u16>,
    error: String,
    now: Timestamp,
    ring_timeout: Duration,
    give_up_after: Duration,
    jitter: f64,
) -> DeliveryOutcome {
    if status == Some(410) {
        return DeliveryOutcome::Gone;
    }
    let event = &delivery.event;
    if event.kind == WebhookEventType::Ringing && now >= event.call.started_at().plus(ring_timeout) {
        return DeliveryOutcome::Expired { status, error };
    }
    if now >= event.created_at.plus(give_up_after) {
        return DeliveryOutcome::GaveUp { status, error };
    }
    let at = now.plus(retry_delay(delivery.attempts + 1, jitter));
    DeliveryOutcome::RetryAt { at, status, error }
}

/// The outbox of call webhooks (in the storage crate).
#[async_trait]
pub trait WebhookOutbox: Send + Sync + std::fmt::Debug {
    /// Makes `urls` the subscriptions: new ones are added (they get events from now on),
    /// missing ones are switched off (their pending deliveries are dropped).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn set_subscriptions(&self, urls: &[String]) -> Result<(), RepositoryError>;

    /// Leases up to `limit` deliveries that are due at `now` to `sender` until `lease_until`:
    /// for each subscription and call only the oldest undelivered event, so a call's events
    /// arrive in order. A delivery leased by another sender is not returned until its lease
    /// ends.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn claim_due(
        &self,
        sender: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, RepositoryError>;

    /// Ends the leases `sender` holds: it has just started, so whatever it was sending when it
    /// stopped (a crash, a kill) is due again at once instead of when the lease runs out.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn release_leases(&self, sender: &str) -> Result<u64, RepositoryError>;

    /// Records whether the callee was online when `call.ringing` was first sent.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn set_receiver_online(&self, event_row: i64, online: bool) -> Result<(), RepositoryError>;

    /// Records how an attempt ended and releases the lease.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn finish(&self, delivery: i64, outcome: &DeliveryOutcome, now: Timestamp) -> Result<(), RepositoryError>;

    /// Makes every waiting delivery due now (after a restart: pending events go out at once).
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn due_now(&self, now: Timestamp) -> Result<u64, RepositoryError>;

    /// Deletes events created before `before` none of whose deliveries is still pending;
    /// returns how many.
    ///
    /// # Errors
    /// `Storage` when the store fails.
    async fn prune(&self, before: Timestamp) -> Result<u64, RepositoryError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_two_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(n, 0.0).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(1, 1.0), Duration::from_millis(2400));
        assert_eq!(retry_delay(40, 1.0), MAX_RETRY_DELAY, "never past five minutes");
    }

    #[test]
    fn every_stored_status_has_its_event() {
        for status in CallStatus::ALL.iter().copied() {
            let kind = WebhookEventType::for_status(status);
            assert_eq!(kind.is_none(), status == CallStatus::Initiating);
            if let Some(kind) = kind {
                assert_eq!(WebhookEventType::parse(kind.as_str()), Some(kind));
            }
        }
    }
}
