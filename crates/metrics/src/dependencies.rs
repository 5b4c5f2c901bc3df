//! What Ringline depends on: the database, the bus between instances, webhook receivers and
//! push services.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How a webhook delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed and will be tried again.
    Retry,
    /// The receiver answered 410 Gone: the event is not sent again.
    Gone,
    /// Given up: out of attempts, or its moment passed.
    GivenUp,
}

/// How a push to a push service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushResult {
    /// The push service accepted it.
    Sent,
    /// The subscription is gone (404/410) and was removed.
    Expired,
    /// Refused or failed (an error answer, a timeout, an endpoint the rules forbid).
    Failed,
}

/// How an attempt to send a mobile push (Expo, FCM, APNs) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MobilePushResult {
    /// The push service accepted it.
    Sent,
    /// It failed and will be tried again.
    Retry,
    /// The service said the token is gone; the token was deleted.
    TokenGone,
    /// Not sent: it no longer mattered (the call stopped ringing, its moment passed).
    Dropped,
    /// Given up: refused for good (the message, or Ringline's credentials), or out of time.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MobilePushLabels {
    provider: &'static str,
    result: &'static str,
}

/// How a question to the call policy hook ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyHookResult {
    Allowed,
    Refused,
    /// No usable answer in time (timeout, connection, status, body).
    Failed,
}

/// The dependencies' families.
#[derive(Debug)]
pub struct DependencyMetrics {
    write_seconds: Histogram,
    write_errors: Counter,
    bus_published: Counter,
    bus_dropped: Counter,
    bus_up: Gauge,
    webhooks: Family<ResultLabels, Counter>,
    webhook_oldest_pending: Gauge<f64, std::sync::atomic::AtomicU64>,
    pushes: Family<ResultLabels, Counter>,
    mobile_pushes: Family<MobilePushLabels, Counter>,
    policy_hook: Family<ResultLabels, Counter>,
    policy_hook_seconds: Histogram,
    /// Two scrapes at once must not both add the same difference to a mirrored counter.
    mirroring: std::sync::Mutex<()>,
}

impl DependencyMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            write_seconds: Histogram::new(LATENCY_BUCKETS),
            write_errors: Counter::default(),
            bus_published: Counter::default(),
            bus_dropped: Counter::default(),
            bus_up: Gauge::default(),
            webhooks: Family::default(),
            webhook_oldest_pending: Gauge::default(),
            pushes: Family::default(),
            mobile_pushes: Family::default(),
            policy_hook: Family::default(),
            policy_hook_seconds: Histogram::new(LATENCY_BUCKETS),
            mirroring: std::sync::Mutex::new(()),
        };
        registry.register_with_unit(
            "database_write",
            "Time a write took from being queued to its commit (SQLite's writer queue included)",
            Unit::Seconds,
            metrics.write_seconds.clone(),
        );
        registry.register("database_write_errors", "Database writes that failed", metrics.write_errors.clone());
        registry.register("bus_published", "Messages published to the other instances", metrics.bus_published.clone());
        registry.register(
            "bus_dropped",
            "Messages for the other instances that could not be published (the bus was down)",
            metrics.bus_dropped.clone(),
        );
        registry.register("bus_up", "1 while the bus to the other instances is connected", metrics.bus_up.clone());
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by result (delivered, retry, gone, given_up)",
            metrics.webhooks.clone(),
        );
        registry.register_with_unit(
            "webhook_oldest_pending_age",
            "Age of the oldest webhook event not yet delivered (0 when none waits)",
            Unit::Seconds,
            metrics.webhook_oldest_pending.clone(),
        );
        registry.register("pushes", "Web Push messages, by result (sent, expired, failed)", metrics.pushes.clone());
        registry.register(
            "mobile_pushes",
            "Mobile push attempts, by provider (expo, fcm, apns_voip) and result (sent, retry, token_gone, dropped, \
             failed)",
            metrics.mobile_pushes.clone(),
        );
        registry.register(
            "call_policy_hook_requests",
            "Questions to the call policy hook (RINGLINE_CALL_POLICY_URL), by result (allowed, refused, failed)",
            metrics.policy_hook.clone(),
        );
        registry.register_with_unit(
            "call_policy_hook_duration",
            "Time the call policy hook took to answer (or to fail)",
            Unit::Seconds,
            metrics.policy_hook_seconds.clone(),
        );
        metrics
    }

    pub fn wrote(&self, elapsed: std::time::Duration, failed: bool) {
        self.write_seconds.observe(elapsed.as_secs_f64());
        if failed {
            self.write_errors.inc();
        }
    }

    /// The bus's state and its own running totals of messages published and dropped, mirrored
    /// into the counters at scrape time (the bus counts them anyway, for `/readyz` and its logs).
    pub fn set_bus(&self, connected: bool, published: u64, dropped: u64) {
        let _mirroring = self.mirroring.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.bus_up.set(i64::from(connected));
        for (counter, total) in [(&self.bus_published, published), (&self.bus_dropped, dropped)] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    pub fn webhook(&self, result: WebhookResult) {
        let result = match result {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Retry => "retry",
            WebhookResult::Gone => "gone",
            WebhookResult::GivenUp => "given_up",
        };
        self.webhooks.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_webhook_oldest_pending(&self, age: std::time::Duration) {
        self.webhook_oldest_pending.set(age.as_secs_f64());
    }

    pub fn push(&self, result: PushResult) {
        let result = match result {
            PushResult::Sent => "sent",
            PushResult::Expired => "expired",
            PushResult::Failed => "failed",
        };
        self.pushes.get_or_create(&ResultLabels { result }).inc();
    }

    /// An attempt to push through `provider` (the domain's `PushProvider::as_str`) ended.
    pub fn mobile_push(&self, provider: &'static str, result: MobilePushResult) {
        let result = match result {
            MobilePushResult::Sent => "sent",
            MobilePushResult::Retry => "retry",
            MobilePushResult::TokenGone => "token_gone",
            MobilePushResult::Dropped => "dropped",
            MobilePushResult::Failed => "failed",
        };
        self.mobile_pushes.get_or_create(&MobilePushLabels { provider, result }).inc();
    }

    /// The call policy hook answered (or failed) after `elapsed`.
    pub fn policy_hook(&self, result: PolicyHookResult, elapsed: std::time::Duration) {
        let result = match result {
            PolicyHookResult::Allowed => "allowed",
            PolicyHookResult::Refused => "refused",
            PolicyHookResult::Failed => "failed",
        };
        self.policy_hook.get_or_create(&ResultLabels { result }).inc();
        self.policy_hook_seconds.observe(elapsed.as_secs_f64());
    }
}
