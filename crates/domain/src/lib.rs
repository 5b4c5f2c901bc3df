//! Ringline's domain: what a one-to-one call is and how it may change, with no I/O.
//!
//! Layout:
//! - [`values`]: identifiers and small value types, parsed once at the boundary so that an
//!   invalid user id or call type cannot exist past it;
//! - [`call`]: the [`Call`] record and its state machine. Every transition is a pure function
//!   of the call, the acting user and `now`, returning the changed call plus the event it
//!   causes, or a [`TransitionError`] value;
//! - [`rules`]: who may start a call right now (self-calls, busy lines, glare);
//! - [`policy`]: who may ring whom at all (blocks, call privacy, do-not-disturb, rate caps,
//!   the host application's hook), decided from one read of the store;
//! - [`ports`]: the traits that the outer crates implement (call repository, notification
//!   repository, directory of users and conversations, signal router, clock, and the
//!   observers the service tells of every call change);
//! - [`accounts`]: [`Accounts`], whether the user a valid token names may still use the
//!   service (removed and deactivated users may not), with active users remembered briefly;
//! - [`service`]: [`CallService`], the use cases (initiate, accept, reject, end, expire, read)
//!   written once over the ports for every entry point (REST, WebSocket, timer);
//! - [`mobile_push`]: device tokens and the pushes that ring a phone whose app is closed
//!   (Expo, FCM, APNs VoIP), with their retry rules;
//! - [`quality`]: what the parties' clients report about a call's media, summarised per
//!   party with a MOS and tags;
//! - [`error_codes`]: [`ErrorCode`], the catalogue of every error code clients see (with its
//!   HTTP status and message), and [`Refusal`], the one mapping of the use cases' errors that
//!   REST and sockets share.
//!
//! This crate depends on no runtime, database, HTTP or Redis crate; CI checks that with
//! `cargo tree`.

pub mod accounts;
pub mod call;
pub mod error_codes;
pub mod mobile_push;
pub mod policy;
pub mod ports;
pub mod quality;
pub mod rules;
pub mod service;
pub mod values;
pub mod webhooks;

pub use accounts::{AccountStatus, Accounts};
pub use call::{Call, CallEvent, CallMoment, CallParts, InvalidCall, NewCall, Outcome, Transition, TransitionError};
pub use error_codes::{ErrorCode, Refusal};
pub use mobile_push::{
    DevicePlatform, DeviceRegistration, DeviceToken, DeviceTokens, InvalidDeviceToken, MAX_DEVICE_TOKENS_PER_USER,
    MobilePush, MobilePushKind, MobilePushOutbox, MobilePushOutcome, PushProvider, PushRefusal,
};
pub use policy::{
    Admission, BlockedUser, CALL_RATE_WINDOW, CallPolicy, CallPolicyHook, CallPolicyStore, CallSettings,
    CallSettingsChange, CountedCalls, HookUnavailable, NotAllowedReason, PolicyError, PolicyFacts, PolicyQuestion,
    PolicyRefusal, RateCap, RateCaps, RecentCalls, UNANSWERED_WINDOW,
};
pub use ports::{
    Audience, CallListFilter, CallObserver, CallRepository, ChangeOrigin, Clock, DeviceClaim, Directory,
    DirectoryError, MAX_PUSH_SUBSCRIPTIONS_PER_USER, ManualClock, NewNotification, Notification,
    NotificationRepository, Page, PageRequest, PushSubscription, PushSubscriptions, RepositoryError, Signal,
    SignalRouter, StoreUnavailable, SystemClock, UserProfile, UserUrlPolicy, VapidKeys, is_store_unavailable,
};
pub use quality::{CallQuality, InvalidReport, Party, PartyQuality, QualityRefusal, QualityReport};
pub use rules::{InitiateDecision, InitiateRefusal, decide_initiate};
pub use service::{
    CallAction, CallService, CallServiceError, DEFAULT_RING_TIMEOUT, InitiateCommand, Initiated, LivenessPolicy,
    QualityReported,
};
pub use values::{
    Action, CallId, CallStatus, CallType, CandidateType, ConversationId, DeviceId, EndReason, HangupReason,
    InvalidValue, NotificationVerb, QualityTag, Timestamp, TransportProtocol, UserId, WhoCanCall,
};
pub use webhooks::{DeliveryOutcome, WebhookDelivery, WebhookEvent, WebhookEventType, WebhookOutbox};
