//! Ringline's signaling: WebSocket sessions, the router that fans call events out to users and
//! conversations, and the facade through which every call change is announced.
//!
//! - [`protocol`]: client frames, close codes, error codes (`docs/protocol.md` describes them);
//! - [`events`]: the events the server sends;
//! - [`router`]: [`LocalRouter`], the in-process implementation of the domain's
//!   `SignalRouter`, with a bounded queue per session;
//! - [`hub`]: [`Signaling`], the calls facade (REST, sockets and the timer change calls
//!   through it); beside it, private modules announce changes (`announce`), relay offers,
//!   answers and ICE candidates (`relay`), cache calls for the relay (`call_cache`) and attach
//!   and detach sessions (`lifecycle`);
//! - [`session`]: one connection's loop: limits, keepalive, shutdown; [`settings`] holds its
//!   keepalive and frame-rate settings;
//! - [`ring_timer`]: expires unanswered calls; [`liveness`] ends calls whose parties are gone;
//! - [`background`]: [`Background`], which runs both (and any further background work) and
//!   closes the sessions on shutdown, the same way in the server and in embedding apps.
//!
//! - [`streams`](EventStreams): every user's stream of events (numbered, kept for resume,
//!   routed), the one way events leave;
//!
//! Several instances are joined by the `ringline-bus` crate, which implements this crate's
//! ports ([`SignalRouter`](ringline_domain::SignalRouter), [`Presence`], [`SubscriptionGate`],
//! [`BusStatus`]) over Redis and uses only the public surface of [`Signaling`].

mod announce;
pub mod background;
mod call_cache;
mod callee_device;
pub mod events;
pub mod hub;
mod lifecycle;
mod limits;
pub mod liveness;
pub mod protocol;
mod relay;
pub mod replay;
pub mod ring_timer;
pub mod router;
pub mod session;
pub mod settings;
mod streams;
pub mod throttle;

pub use background::Background;
pub use hub::Signaling;
pub use relay::SessionContext;
pub use replay::{InMemoryReplay, ReplayLimits, ReplayStore};
pub use router::{BusStatus, LocalRouter, Presence, SessionKind, SubscriptionGate};
pub use session::{CallPresenter, Inbound, Outbound, SessionIdentity};
pub use settings::{FrameRate, Keepalive};
pub use streams::EventStreams;
pub use tokio_util::sync::CancellationToken;
