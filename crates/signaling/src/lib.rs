//! Ringline's signaling: WebSocket sessions, the router that fans call events out to users and
//! conversations, and the facade through which every call change is announced.
//!
//! - [`protocol`]: client frames, close codes, error codes (`docs/protocol.md` describes them);
//! - [`events`]: the events the server sends;
//! - [`router`]: [`LocalRouter`], the in-process implementation of the domain's
//!   `SignalRouter`, with a bounded queue per session;
//! - [`hub`]: [`Signaling`], the calls facade (REST, sockets and the timer change calls
//!   through it) and the relay of offers, answers and ICE candidates;
//! - [`session`]: one connection's loop: limits, keepalive, shutdown;
//! - [`ring_timer`]: expires unanswered calls.
//!
//! A Redis-backed router can implement `SignalRouter` to publish to every instance and feed
//! each instance's `LocalRouter` from its subscription; nothing else changes.

pub mod events;
pub mod hub;
pub mod liveness;
pub mod protocol;
pub mod replay;
pub mod ring_timer;
pub mod router;
pub mod session;

pub use hub::{SessionContext, Signaling};
pub use replay::{InMemoryReplay, ReplayLimits, ReplayStore};
pub use router::{LocalRouter, SessionKind};
pub use session::{CallPresenter, FrameRate, Inbound, Keepalive, Outbound, SessionIdentity};
pub use tokio_util::sync::CancellationToken;
