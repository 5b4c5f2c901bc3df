//! What Ringline sends to other hosts, in the background and after the change that causes it
//! has committed: call webhooks to the host application ([`webhooks`]), Web Push messages
//! to browsers ([`web_push`], signed with the server's [`Vapid`] identity) and mobile pushes
//! through Expo, FCM and APNs ([`mobile_push`]), each over its own HTTP client with its own
//! bounds. One exchange happens before a change instead: the host
//! application's call policy hook ([`policy_hook`]), asked whether a call may be placed. Every URL a user (not the operator) gave goes through
//! [`user_urls`], the rules against server-side request forgery, when stored and again when
//! sent.
//!
//! The HTTP API crate makes no request of its own and does not depend on this one: it sees the
//! domain's ports (`UserUrlPolicy`, `PushSubscriptions`), and the server wires the two.

pub mod mobile_push;
mod outbox;
pub mod policy_hook;
pub mod user_urls;
mod vapid;
pub mod web_push;
pub mod webhooks;

pub use mobile_push::{MobilePushSender, MobilePushSettings};
pub use policy_hook::{HttpPolicyHook, PolicyHookSettings};
pub use user_urls::{AllowedHosts, UserUrlRules};
pub use vapid::{Vapid, VapidError};
pub use web_push::{CONCURRENT_PUSHES, PUSH_QUEUE, WebPushObserver, WebPushSender, WebPushSettings, WebPushSetupError};
pub use webhooks::{WebhookSender, WebhookSettings};

/// Renders a call, with its parties' profiles, as the JSON the events carry: the REST API's
/// call object (`ringline_api::call_json`), passed in so that one type keeps that shape.
pub type RenderCall = fn(&ringline_domain::Call, &[ringline_domain::UserProfile]) -> serde_json::Value;

/// Wakes an outbox's sender when a call changes here, so that what the change stored goes out
/// at once rather than at the sender's next look: a [`CallObserver`] to add to the
/// `CallService` (`observed_by`) before the sender exists, since the sender needs the
/// signaling hub built on that service. One per sender (each keeps its own wake-up).
///
/// [`CallObserver`]: ringline_domain::CallObserver
#[derive(Debug, Default)]
pub struct OutboxWaker(std::sync::Arc<tokio::sync::Notify>);

impl OutboxWaker {
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::default())
    }

    /// What the sender waits on.
    pub(crate) fn notify(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.0)
    }
}

#[async_trait::async_trait]
impl ringline_domain::CallObserver for OutboxWaker {
    async fn ringing(&self, _call: &ringline_domain::Call, _parties: &[ringline_domain::UserProfile]) {
        self.0.notify_one();
    }

    async fn changed(
        &self,
        _transition: &ringline_domain::Transition,
        _origin: ringline_domain::ChangeOrigin<'_>,
        _parties: Option<&[ringline_domain::UserProfile]>,
    ) {
        self.0.notify_one();
    }
}
