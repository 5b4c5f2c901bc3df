//! Call webhooks, sent: [`WebhookSender`] reads due deliveries from the outbox (see
//! `ringline_domain::webhooks` and `ringline_storage::SqlWebhookOutbox`), POSTs each event,
//! signed, to its subscription's URL, and records the outcome. `docs/webhooks.md` is the
//! receiver's side of it.
//!
//! - Sent at once: the sender is woken by every change made here ([`crate::OutboxWaker`]); changes
//!   made on other instances are found within a second (it also looks every second).
//! - Bounded: at most [`IN_FLIGHT`] requests at a time, each within the configured timeout, in
//!   the background: a slow or dead receiver delays only its own events, never a call.
//! - One at a time per call and subscription, in order (the outbox hands out only the oldest
//!   undelivered event of each), leased so that one instance sends each attempt.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ringline_domain::{Clock, DeliveryOutcome, Directory, WebhookDelivery, WebhookEventType, WebhookOutbox};
use ringline_metrics::dependencies::WebhookResult;
use ringline_signaling::{CancellationToken, Signaling};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::RenderCall;

/// Requests in flight at once, over all subscriptions.
const IN_FLIGHT: usize = 32;

/// How long a claimed delivery is reserved for the instance that claimed it: longer than a
/// request may take, so that no other instance sends it meanwhile.
const LEASE_MARGIN: Duration = Duration::from_secs(20);

/// Where events go and how hard to try.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub urls: Vec<String>,
    /// Signs every request (`Ringline-Signature`).
    pub secret: SecretString,
    /// How long one request may take.
    pub timeout: Duration,
    /// After how long an event that never got through is given up.
    pub give_up_after: Duration,
    /// How long finished events are kept.
    pub retention: Duration,
    /// The ring timeout: a `call.ringing` is not retried past its call's ring deadline.
    pub ring_timeout: Duration,
    /// Who this sender is, the same across its restarts (the server uses host and port): the
    /// deliveries it was sending when it stopped are released when it starts again.
    pub sender: String,
}

#[async_trait::async_trait]
impl crate::outbox::OutboxWork for WebhookSender {
    type Item = WebhookDelivery;
    const NAME: &'static str = "webhook";

    async fn claim(&self, room: u32) -> Result<Vec<WebhookDelivery>, ringline_domain::RepositoryError> {
        let now = self.clock.now();
        let lease_until = now.plus(self.settings.timeout + LEASE_MARGIN);
        self.outbox.claim_due(&self.settings.sender, now, lease_until, room).await
    }

    async fn deliver(self: Arc<Self>, delivery: WebhookDelivery) {
        self.send_one(delivery).await;
    }

    async fn prune(&self) -> Result<u64, ringline_domain::RepositoryError> {
        self.outbox.prune(self.clock.now().minus(self.settings.retention)).await
    }
}

/// Whether `url` can receive webhooks: an absolute `http://` or `https://` URL with a host.
pub fn is_valid_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
}

/// The value of the `Ringline-Signature` header for `body` sent at `timestamp` (unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// Sends the outbox's events (see the module documentation).
#[derive(Debug)]
pub struct WebhookSender {
    outbox: Arc<dyn WebhookOutbox>,
    directory: Arc<dyn Directory>,
    signaling: Arc<Signaling>,
    clock: Arc<dyn Clock>,
    client: reqwest::Client,
    settings: WebhookSettings,
    wake: Arc<Notify>,
    render_call: RenderCall,
}

impl WebhookSender {
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(
        outbox: Arc<dyn WebhookOutbox>,
        directory: Arc<dyn Directory>,
        signaling: Arc<Signaling>,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
        waker: &crate::OutboxWaker,
        render_call: RenderCall,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect is a failed attempt: events go where they were configured to go.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Ringline-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { outbox, directory, signaling, clock, client, settings, wake: waker.notify(), render_call })
    }

    /// Sends until `stop`: first makes everything pending due at once (after a restart nothing
    /// waits for its backoff), then keeps sending. Requests in flight at `stop` are
    /// abandoned; their leases run out and they are sent again. (The subscriptions are the
    /// caller's to set first: `WebhookOutbox::set_subscriptions`.)
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        match self.outbox.release_leases(&self.settings.sender).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "sending again the webhook events in flight at the last stop"),
            Err(error) => tracing::warn!(%error, "cannot release this sender's webhook leases"),
        }
        match self.outbox.due_now(self.clock.now()).await {
            Ok(0) => {}
            Ok(waiting) => tracing::info!(waiting, "sending webhook events that were waiting for a retry"),
            Err(error) => tracing::warn!(%error, "cannot reschedule pending webhook events"),
        }
        let wake = Arc::clone(&self.wake);
        crate::outbox::drain(self, &wake, IN_FLIGHT, stop).await;
    }

    /// One attempt: sends the event and records what happened.
    async fn send_one(self: Arc<Self>, delivery: WebhookDelivery) {
        let outcome = match self.attempt(&delivery).await {
            Ok(status) => DeliveryOutcome::Delivered { status },
            Err((status, error)) => {
                let jitter = f64::from(uuid::Uuid::new_v4().as_fields().0 % 1000) / 1000.0;
                let outcome = ringline_domain::webhooks::after_failure(
                    &delivery,
                    status,
                    error,
                    self.clock.now(),
                    self.settings.ring_timeout,
                    self.settings.give_up_after,
                    jitter,
                );
                // The URL may carry a token: only its host is logged.
                let host = reqwest::Url::parse(&delivery.url).ok().and_then(|url| url.host_str().map(str::to_owned));
                tracing::warn!(
                    event = %delivery.event.id,
                    kind = delivery.event.kind.as_str(),
                    host = host.as_deref().unwrap_or("?"),
                    status,
                    attempts = delivery.attempts + 1,
                    next = ?outcome,
                    "webhook delivery failed"
                );
                outcome
            }
        };
        self.signaling.metrics().dependencies.webhook(match &outcome {
            DeliveryOutcome::Delivered { .. } => WebhookResult::Delivered,
            DeliveryOutcome::RetryAt { .. } => WebhookResult::Retry,
            DeliveryOutcome::Gone => WebhookResult::Gone,
            DeliveryOutcome::Expired { .. } | DeliveryOutcome::GaveUp { .. } => WebhookResult::GivenUp,
        });
        if let Err(error) = self.outbox.finish(delivery.id, &outcome, self.clock.now()).await {
            // The lease runs out and the event is sent again: at least once.
            tracing::warn!(%error, "cannot record a webhook delivery");
        }
    }

    /// Sends `delivery`; the receiver's status when it was 2xx, else the status (if any) and
    /// what went wrong.
    async fn attempt(&self, delivery: &WebhookDelivery) -> Result<u16, (Option<u16>, String)> {
        let body = self.body(delivery).await;
        let timestamp = self.clock.now().unix_micros() / 1_000_000;
        let signature = signature(self.settings.secret.expose_secret().as_bytes(), timestamp, body.as_bytes());
        let response = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("ringline-signature", signature)
            .header("ringline-event-id", &delivery.event.id)
            .header("ringline-event-type", delivery.event.kind.as_str())
            .body(body)
            .send()
            .await
            .map_err(|error| (None, describe(error)))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err((Some(status.as_u16()), format!("the receiver answered {status}")))
        }
    }

    /// The event's JSON: `{"id", "type", "created_at", "data": {"call", "receiver_online"}}`.
    async fn body(&self, delivery: &WebhookDelivery) -> String {
        let event = &delivery.event;
        let call = &event.call;
        let profiles =
            self.directory.users(&[call.caller().clone(), call.receiver().clone()]).await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot read the parties of a call for a webhook; sending their ids only");
                Vec::new()
            });
        let mut data = serde_json::Map::new();
        data.insert("call".into(), (self.render_call)(call, &profiles));
        if event.kind == WebhookEventType::Ringing {
            let online = match event.receiver_online {
                Some(online) => online,
                None => {
                    // Decided once, when first sent (moments after the call rang), and kept.
                    let online = self.signaling.devices_online(call.receiver()).await > 0;
                    if let Err(error) = self.outbox.set_receiver_online(event.row, online).await {
                        tracing::warn!(%error, "cannot record whether a callee was online");
                    }
                    online
                }
            };
            data.insert("receiver_online".into(), online.into());
        }
        serde_json::json!({
            "id": event.id,
            "type": event.kind.as_str(),
            "created_at": event.created_at.as_datetime().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "data": data,
        })
        .to_string()
    }
}

/// What went wrong with a request, without its URL (which may carry a token).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        "the request timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect to the receiver".to_owned()
    } else {
        error.without_url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example (`docs/webhooks.md`) signs to this value (computed with
    /// Python's `hmac` module).
    #[test]
    fn the_signature_is_an_hmac_of_the_timestamp_and_the_body() {
        assert_eq!(
            signature(b"whsec_test", 1_764_806_400, br#"{"id":"evt_1"}"#),
            "t=1764806400,v1=65a8a4115cda0d1fceef9dfbb65319161a7fc0687d08d8e6dc9a082cf36582a9"
        );
    }
}
