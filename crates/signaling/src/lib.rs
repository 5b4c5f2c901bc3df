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
//! - [`bus`]: [`SharedBus`], the `SignalRouter` for several instances: it delivers to this
//!   instance's sessions and publishes to the others over a backplane: Redis pub/sub (one
//!   server, or a cluster with sharded pub/sub), or [`MemoryHub`] for instances in one process.

mod announce;
pub mod background;
pub mod bus;
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
pub mod throttle;

pub use background::Background;
pub use bus::{BusHealth, MemoryHub, RedisSettings, RedisTopology, SharedBus};
pub use hub::Signaling;
pub use relay::SessionContext;
pub use replay::{InMemoryReplay, ReplayLimits, ReplayStore};
pub use router::{LocalRouter, Presence, SessionKind, SubscriptionGate};
pub use session::{CallPresenter, Inbound, Outbound, SessionIdentity};
pub use settings::{FrameRate, Keepalive};
pub use tokio_util::sync::CancellationToken;
