//! What Ringline sends to other hosts, in the background and after the change that causes it
//! has committed: call webhooks to the host application ([`webhooks`]) and Web Push messages
//! to browsers ([`web_push`], signed with the server's [`Vapid`] identity), each over its own
//! HTTP client with its own bounds. One exchange happens before a change instead: the host
//! application's call policy hook ([`policy_hook`]), asked whether a call may be placed. Every URL a user (not the operator) gave goes through
//! [`user_urls`], the rules against server-side request forgery, when stored and again when
//! sent.
//!
//! The HTTP API crate makes no request of its own and does not depend on this one: it sees the
//! domain's ports (`UserUrlPolicy`, `PushSubscriptions`), and the server wires the two.

pub mod policy_hook;
pub mod user_urls;
mod vapid;
pub mod web_push;
pub mod webhooks;

pub use policy_hook::{HttpPolicyHook, PolicyHookSettings};
pub use user_urls::{AllowedHosts, UserUrlRules};
pub use vapid::{Vapid, VapidError};
pub use web_push::{CONCURRENT_PUSHES, PUSH_QUEUE, WebPushObserver, WebPushSender, WebPushSettings, WebPushSetupError};
pub use webhooks::{WebhookSender, WebhookSettings, WebhookWaker};

/// Renders a call, with its parties' profiles, as the JSON the events carry: the REST API's
/// call object (`ringline_api::call_json`), passed in so that one type keeps that shape.
pub type RenderCall = fn(&ringline_domain::Call, &[ringline_domain::UserProfile]) -> serde_json::Value;
