//! [`WebPushSender`]: rings the browsers of a call's receiver, and tells them when it stops
//! ringing, through their push services.
//!
//! - Messages are encrypted to the subscription's keys (RFC 8291, `aes128gcm`, by the
//!   `web-push-native` crate) and signed with the server's VAPID key ([`crate::Vapid`]).
//! - `call.ringing` goes with `TTL` no longer than the ring time left and `Topic: call-<id>`;
//!   when the call stops ringing (answered on any device, declined, cancelled, missed) a
//!   second message with the same topic replaces it at the push service if the first was not
//!   delivered yet, and tells the service worker to take the notification down. The instance
//!   that rang sends it, to the browsers it rang; when the call stops ringing through another
//!   instance, the service worker takes the notification down at the ring deadline instead.
//! - A push service that answers 404 or 410 has dropped the subscription: it is deleted.
//! - Endpoints are URLs users gave: every request follows [`crate::user_urls`] (checked as
//!   written and as resolved, no redirects).
//! - Call changes only queue the work ([`PUSH_QUEUE`] jobs at most; a ring that finds the queue
//!   full is not pushed, and said so in the log once a second). One task, [`WebPushSender::run`],
//!   sends them, [`CONCURRENT_PUSHES`] requests at a time, and stops with the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ringline_domain::{
    Call, CallId, CallObserver, CallStatus, ChangeOrigin, Clock, PushSubscription, PushSubscriptions, Timestamp,
    Transition, UserProfile,
};
use ringline_metrics::Metrics;
use ringline_metrics::dependencies::PushResult;
use ringline_signaling::CancellationToken;
use ringline_signaling::throttle::OncePerSecond;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use web_push_native::p256;

use crate::RenderCall;
use crate::user_urls::UserUrlRules;
use crate::vapid::Vapid;

/// How long one request to a push service may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Jobs (a ring, or the end of one) waiting to be sent; beyond, new ones are dropped. Each
/// costs at most [`ringline_domain::MAX_PUSH_SUBSCRIPTIONS_PER_USER`] requests.
pub const PUSH_QUEUE: usize = 1024;

/// Requests to push services in flight at once.
pub const CONCURRENT_PUSHES: usize = 16;

/// One thing to push.
#[derive(Debug)]
enum PushJob {
    /// Ring every browser of `call`'s receiver. `caller` is what a missed call's message says
    /// of who called (from the rendered call), kept with the browsers the ring went to.
    Ring { call: Box<Call>, message: serde_json::Value, caller: serde_json::Value },
    /// Tell the browsers a ring went to that it stopped.
    StopRinging { call_id: CallId, subscriptions: Vec<PushSubscription>, message: serde_json::Value },
}

/// A ring pushed from here: the browsers it went to, the caller as the messages name them,
/// and when it stops mattering.
#[derive(Debug)]
struct Rung {
    subscriptions: Vec<PushSubscription>,
    caller: serde_json::Value,
    until: Timestamp,
}

/// Sends Web Push messages when calls ring (see the module documentation).
#[derive(Debug)]
pub struct WebPushSender {
    subscriptions: Arc<dyn PushSubscriptions>,
    vapid: Vapid,
    rules: UserUrlRules,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    ring_timeout: Duration,
    render_call: RenderCall,
    /// The calls whose ring was pushed from here, with the browsers it went to and when it
    /// stops mattering: the end of the ring goes to the same browsers without reading them
    /// again (most calls ring nobody's browser, and then nothing is read at all).
    rung: Mutex<HashMap<CallId, Rung>>,
    queue: mpsc::Sender<PushJob>,
    /// Taken by [`WebPushSender::run`].
    jobs: Mutex<Option<mpsc::Receiver<PushJob>>>,
    dropped_logged: OncePerSecond,
    metrics: Arc<Metrics>,
}

/// Web Push could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebPushSetupError {
    #[error("cannot read or store the VAPID key: {0}")]
    Keys(#[from] ringline_domain::RepositoryError),
    #[error(transparent)]
    Vapid(#[from] crate::VapidError),
    #[error("cannot build the Web Push HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// What Web Push needs besides its ports.
#[derive(Debug, Clone)]
pub struct WebPushSettings {
    /// Who push services may contact about this server (VAPID `sub`).
    pub vapid_subject: String,
    pub rules: UserUrlRules,
    /// How long a call rings: a ring's push lives no longer.
    pub ring_timeout: Duration,
}

impl WebPushSender {
    /// A sender with the server's VAPID key (the one every instance shares, made on the first
    /// start and kept in `subscriptions`' store).
    ///
    /// # Errors
    /// When the key cannot be read or made, or the HTTP client cannot be built.
    pub async fn start(
        subscriptions: Arc<dyn PushSubscriptions>,
        settings: WebPushSettings,
        clock: Arc<dyn Clock>,
        render_call: RenderCall,
    ) -> Result<Self, WebPushSetupError> {
        let keys = subscriptions.vapid_keys(Vapid::generate).await?;
        let vapid = Vapid::new(&keys, settings.vapid_subject)?;
        Ok(Self::new(subscriptions, vapid, settings.rules, clock, settings.ring_timeout, render_call)?)
    }

    /// Counts the pushes in `metrics` (by default, in metrics nobody reads).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The server's VAPID identity.
    pub fn vapid(&self) -> &Vapid {
        &self.vapid
    }

    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        subscriptions: Arc<dyn PushSubscriptions>,
        vapid: Vapid,
        rules: UserUrlRules,
        clock: Arc<dyn Clock>,
        ring_timeout: Duration,
        render_call: RenderCall,
    ) -> Result<Self, reqwest::Error> {
        let client = rules.client(PUSH_TIMEOUT)?;
        let (queue, jobs) = mpsc::channel(PUSH_QUEUE);
        Ok(Self {
            subscriptions,
            vapid,
            rules,
            client,
            clock,
            ring_timeout,
            render_call,
            rung: Mutex::default(),
            queue,
            jobs: Mutex::new(Some(jobs)),
            dropped_logged: OncePerSecond::new(),
            metrics: Metrics::unread(),
        })
    }

    /// Sends what is queued until `stop`; then lets the requests in flight finish (each is
    /// bounded by its timeout) and drops what was still waiting.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut jobs) = self.jobs.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return tracing::error!("the Web Push sender was started twice");
        };
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                job = jobs.recv(), if in_flight.len() < CONCURRENT_PUSHES => match job {
                    Some(job) => {
                        let sender = Arc::clone(&self);
                        in_flight.spawn(async move { sender.push(job).await });
                    }
                    None => break,
                },
            }
        }
        jobs.close();
        if !jobs.is_empty() {
            tracing::info!(waiting = jobs.len(), "Web Push messages not sent: the server is stopping");
        }
        while in_flight.join_next().await.is_some() {}
    }

    fn enqueue(&self, job: PushJob) {
        if self.queue.try_send(job).is_err() && self.dropped_logged.due() {
            tracing::warn!("the Web Push queue is full; a browser is not rung (the sockets still are)");
        }
    }

    async fn push(&self, job: PushJob) {
        match job {
            PushJob::Ring { call, message, caller } => self.ring(&call, &message, caller).await,
            PushJob::StopRinging { call_id, subscriptions, message } => {
                let (body, topic) = (message.to_string(), topic(call_id));
                for subscription in subscriptions {
                    self.send(&subscription, body.as_bytes(), Duration::from_secs(60), &topic).await;
                }
            }
        }
    }

    /// Rings every browser of `call`'s receiver, and remembers which.
    async fn ring(&self, call: &Call, message: &serde_json::Value, caller: serde_json::Value) {
        let subscriptions = match self.subscriptions.of_user(call.receiver()).await {
            Ok(subscriptions) => subscriptions,
            Err(error) => return tracing::warn!(%error, "cannot read push subscriptions"),
        };
        if subscriptions.is_empty() {
            return;
        }
        let now = self.clock.now();
        {
            let mut rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
            rung.retain(|_, rung| rung.until > now);
            let until = call.started_at().plus(self.ring_timeout);
            rung.insert(call.id(), Rung { subscriptions: subscriptions.clone(), caller, until });
        }
        let (body, ttl, topic) = (message.to_string(), self.ring_time_left(call), topic(call.id()));
        for subscription in subscriptions {
            self.send(&subscription, body.as_bytes(), ttl, &topic).await;
        }
    }

    /// Queues telling the browsers `call` rang (from here) that it stopped ringing (`kind`).
    /// A call the receiver missed (nobody answered, or the caller gave up) says who called and
    /// how, so that the browser shows "Missed call" with a "Call back" action, also when the
    /// ring itself was never delivered (the same topic replaced it at the push service).
    fn stop_ringing(&self, call: &Call, kind: &str) {
        let Some(rung) = self.rung.lock().unwrap_or_else(PoisonError::into_inner).remove(&call.id()) else {
            return;
        };
        let mut message = serde_json::json!({"type": kind, "call_id": call.id().get().to_string()});
        if matches!(call.status(), CallStatus::Missed | CallStatus::Cancelled)
            && let Some(object) = message.as_object_mut()
        {
            object.insert("missed".into(), true.into());
            object.insert("call_type".into(), call.call_type().as_str().into());
            object.insert("caller".into(), rung.caller);
            object.insert("receiver_id".into(), call.receiver().as_str().into());
        }
        self.enqueue(PushJob::StopRinging { call_id: call.id(), subscriptions: rung.subscriptions, message });
    }

    /// One message to one browser; a subscription its push service no longer knows is deleted.
    async fn send(&self, subscription: &PushSubscription, body: &[u8], ttl: Duration, topic: &str) {
        let result = self.try_send(subscription, body, ttl, topic).await;
        self.metrics.dependencies.push(result);
    }

    async fn try_send(&self, subscription: &PushSubscription, body: &[u8], ttl: Duration, topic: &str) -> PushResult {
        let (Ok(endpoint), Some(key), Some(auth)) = (
            reqwest::Url::parse(&subscription.endpoint),
            URL_SAFE_NO_PAD
                .decode(&subscription.p256dh)
                .ok()
                .and_then(|key| p256::PublicKey::from_sec1_bytes(&key).ok()),
            URL_SAFE_NO_PAD.decode(&subscription.auth).ok().filter(|auth| auth.len() == 16),
        ) else {
            tracing::warn!("skipping an unusable push subscription");
            return PushResult::Failed;
        };
        // Stored before these rules, or under other settings: the rules of today decide.
        if let Err(refusal) = self.rules.check(&endpoint) {
            tracing::warn!(%refusal, "skipping a push subscription whose endpoint is not allowed");
            return PushResult::Failed;
        }
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let encrypted = match web_push_native::encrypt(body.to_vec(), &key, &auth) {
            Ok(encrypted) => encrypted,
            Err(error) => {
                tracing::warn!(%error, "cannot encrypt a push message");
                return PushResult::Failed;
            }
        };
        let authorization = match self.vapid.authorization(&endpoint, self.clock.now().unix_micros() / 1_000_000) {
            Ok(authorization) => authorization,
            Err(error) => {
                tracing::error!(%error, "cannot sign a push request");
                return PushResult::Failed;
            }
        };
        let host = endpoint.host_str().unwrap_or("?").to_owned();
        let sent = self
            .client
            .post(endpoint)
            .header("ttl", ttl.as_secs().max(1).to_string())
            .header("topic", topic)
            .header("urgency", "high")
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", authorization)
            .body(encrypted)
            .send()
            .await;
        match sent.map(|response| response.status().as_u16()) {
            Ok(200..=299) => PushResult::Sent,
            Ok(404 | 410) => {
                tracing::info!(host, "a push subscription has expired; removing it");
                if let Err(error) = self.subscriptions.forget(&subscription.endpoint).await {
                    tracing::warn!(%error, "cannot remove an expired push subscription");
                }
                PushResult::Expired
            }
            Ok(status) => {
                tracing::warn!(host, status, "a push service refused a message");
                PushResult::Failed
            }
            Err(error) => {
                tracing::warn!(host, error = %error_chain(&error.without_url()), "cannot reach a push service");
                PushResult::Failed
            }
        }
    }

    /// How long until `call` stops ringing, at least a second.
    fn ring_time_left(&self, call: &Call) -> Duration {
        let deadline = call.started_at().plus(self.ring_timeout);
        let left = deadline.unix_micros() - self.clock.now().unix_micros();
        Duration::from_micros(u64::try_from(left).unwrap_or(0)).max(Duration::from_secs(1))
    }
}

/// An error with its causes (reqwest's own text hides why a connection failed).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// A call's messages share a topic, so a later one replaces an earlier one not yet delivered.
fn topic(call: CallId) -> String {
    format!("call-{}", call.get())
}

/// [`WebPushSender`] as the call observer that triggers it.
#[derive(Debug)]
pub struct WebPushObserver(pub Arc<WebPushSender>);

#[async_trait]
impl CallObserver for WebPushObserver {
    async fn ringing(&self, call: &Call, parties: &[UserProfile]) {
        if call.is_silenced() {
            return; // Do-not-disturb: the receiver's browsers do not ring either.
        }
        let deadline = call.started_at().plus(self.0.ring_timeout).as_datetime();
        let rendered = (self.0.render_call)(call, parties);
        let caller = rendered.get("caller").cloned().unwrap_or_default();
        let message = serde_json::json!({
            "type": "call.ringing",
            "call": rendered,
            "expires_at": deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        self.0.enqueue(PushJob::Ring { call: Box::new(call.clone()), message, caller });
    }

    async fn changed(&self, transition: &Transition, _origin: ChangeOrigin<'_>, _parties: Option<&[UserProfile]>) {
        if transition.from != CallStatus::Ringing || transition.call.is_silenced() {
            return; // Nothing rang, so nothing is to stop.
        }
        // It stopped ringing: the same topic replaces a ring not yet delivered, and the
        // service worker takes a shown one down.
        let call = &transition.call;
        let kind = match call.status() {
            CallStatus::Active => "call.accepted",
            CallStatus::Rejected => "call.rejected",
            CallStatus::Cancelled => "call.cancelled",
            CallStatus::Missed => "call.missed",
            _ => "call.ended",
        };
        self.0.stop_ringing(call, kind);
    }
}
