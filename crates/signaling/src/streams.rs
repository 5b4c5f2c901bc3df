//! [`EventStreams`]: every user's stream of events. Each event a user is sent is numbered in
//! their stream (its `event_id`), kept in the replay window for sockets that resume, and
//! routed to the user's sessions (on every instance, through the router). The announcer, the
//! relay and the bus send through it; nothing else touches the window or the router.

use std::sync::Arc;

use ringline_domain::{Audience, DeviceId, Signal, SignalRouter, UserId};

use crate::replay::{Attached, ReplayStore};

/// Users' event streams over a replay window and a router.
#[derive(Debug)]
pub struct EventStreams {
    replay: Arc<dyn ReplayStore>,
    router: Arc<dyn SignalRouter>,
}

impl EventStreams {
    pub fn new(replay: Arc<dyn ReplayStore>, router: Arc<dyn SignalRouter>) -> Self {
        Self { replay, router }
    }

    /// The next event of `user`'s stream, built by `event(event_id)`: kept for sockets that
    /// resume, and one copy for each of `user`'s sessions but `except_device`, wherever they
    /// are (which sockets: [`Audience::User`]).
    pub fn send(&self, user: &UserId, except_device: Option<DeviceId>, event: impl Fn(&str) -> String) {
        self.replay.append(user, &mut |event_id| event(event_id), &mut |payload| {
            self.router.route(Signal {
                audience: Audience::User(user.clone()),
                except_device,
                except_user: None,
                payload,
            });
        });
    }

    /// The next event of `user`'s stream, built by `encode(event_id)`, kept, and handed to
    /// `deliver` instead of the router (a bus telling only this instance's sessions).
    pub fn send_with(&self, user: &UserId, encode: &mut dyn FnMut(&str) -> String, deliver: &mut dyn FnMut(Arc<str>)) {
        self.replay.append(user, encode, deliver);
    }

    /// Keeps `event`, an event of `user`'s stream that another instance numbered `id`, after
    /// the events kept so far, and hands it to `deliver` (see [`ReplayStore::record`]).
    pub fn record(&self, user: &UserId, id: &str, event: Arc<str>, deliver: &mut dyn FnMut(Arc<str>)) {
        self.replay.record(user, id, event, deliver);
    }

    /// The router events and other signals leave through.
    pub fn router(&self) -> &Arc<dyn SignalRouter> {
        &self.router
    }

    /// Registers a session with `register` and collects what it missed since `resume`, in one
    /// step (see [`ReplayStore::attach`]).
    pub(crate) fn attach(&self, user: &UserId, resume: Option<&str>, register: &mut dyn FnMut()) -> Attached {
        self.replay.attach(user, resume, register)
    }

    /// Forgets events older than the window.
    pub(crate) fn prune(&self) {
        self.replay.prune();
    }
}
