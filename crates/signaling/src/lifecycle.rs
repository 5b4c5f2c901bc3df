//! How sessions join and leave: attaching a new socket to its user's stream, what it is told
//! about the user's calls on connect, recording when the last socket of a party in a call
//! closes, and shutting every session down.

use std::sync::Arc;

use ringline_domain::{Call, CallServiceError, CallStatus, EndReason, UserId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::hub::Signaling;
use crate::protocol::EventIds;
use crate::relay::SessionContext;
use crate::replay::Attached;
use crate::router::{LocalRouter, Presence, SessionKind, SessionSlot, SubscriptionGate};
use crate::settings::Keepalive;

/// Sockets one user may hold open on one instance unless configured: phones, laptops and many
/// tabs, with each tab's chat socket.
pub const DEFAULT_MAX_SOCKETS_PER_USER: usize = 32;

/// This process's sessions: who is connected (the router's registry), what a new session gets
/// (keepalive, the cap per user, what it waits for), the ids of events outside users' streams,
/// and shutdown.
#[derive(Debug)]
pub(crate) struct Sessions {
    pub(crate) local: Arc<LocalRouter>,
    pub(crate) keepalive: Keepalive,
    /// Sockets one user may hold open on this instance; the next is refused (4429).
    pub(crate) max_per_user: usize,
    /// Ids of the events that are not part of a user's stream (pongs, errors, typing).
    pub(crate) ids: EventIds,
    /// The running sessions, so that shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// What a new session waits for before reading its snapshot (a bus's subscription).
    pub(crate) gate: Option<Arc<dyn SubscriptionGate>>,
    /// Where a user's devices on other instances are counted, and which instances live (a bus).
    pub(crate) presence: Option<Arc<dyn Presence>>,
}

impl Sessions {
    pub(crate) fn new(local: Arc<LocalRouter>) -> Self {
        Self {
            local,
            keepalive: Keepalive::default(),
            max_per_user: DEFAULT_MAX_SOCKETS_PER_USER,
            ids: EventIds::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            gate: None,
            presence: None,
        }
    }

    /// How many sessions (tabs, phones) `user` has open, on every instance.
    pub(crate) async fn devices_online(&self, user: &UserId) -> usize {
        match &self.presence {
            Some(presence) => presence.devices(user).await,
            None => self.local.sessions_of(user),
        }
    }

    /// Stops accepting sessions and tells every open one to close.
    fn begin_shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
    }
}

/// How long after a call finished a party that connects without `resume` is still sent its
/// `call.end`: a client whose socket was down meanwhile (a phone switching networks) may still
/// ring for it or show it. Calls the server ended because both parties were gone are told for
/// longer: nobody was connected to hear it.
const TELL_FINISHED_CALLS_FOR: std::time::Duration = std::time::Duration::from_secs(5 * 60);
const TELL_LOST_CALLS_FOR: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// What [`Signaling::calls_on_connect`] found.
#[derive(Debug, Default)]
pub(crate) struct CallsOnConnect {
    /// The user's ringing or active call.
    pub open: Option<Call>,
    /// The user's newest call, when it finished recently.
    pub recently_finished: Option<Call>,
}

impl Signaling {
    /// Registers a new session of `user` and attaches it to the user's stream: it receives
    /// every later event, and `replay` holds what it missed since `resume`, if given.
    pub(crate) fn attach(
        &self,
        user: &UserId,
        kind: SessionKind,
        resume: Option<&str>,
    ) -> (Arc<SessionSlot>, tokio::sync::mpsc::Receiver<Arc<str>>, Attached) {
        let mut registered = None;
        let attached = self.streams.attach(user, resume, &mut || {
            registered = Some(self.sessions.local.register(user.clone(), kind));
        });
        let (slot, events) = registered.unwrap_or_else(|| self.sessions.local.register(user.clone(), kind));
        let mut attached = attached;
        // With several instances this window holds what other instances sent only while this
        // one followed the user: a resume from before it started following has a gap.
        if resume.is_some()
            && let Some(gate) = &self.sessions.gate
            && !gate.following(user)
        {
            attached.replay = crate::replay::Replay::Gap;
        }
        (slot, events, attached)
    }

    /// Unregisters a session and lets go of the answered calls its device held as the callee's.
    /// When it was its user's last one here and the user is in a call, the moment is recorded
    /// as their last-seen, so a call both parties left ends measured up to when the last of
    /// them went (not up to the last heartbeat before).
    pub(crate) async fn detach(&self, slot: &SessionSlot, context: &SessionContext) {
        // Taken before the session leaves the registry: whoever sees it gone sees this moment
        // already passed, however long the writes below take.
        let gone_at = self.service.now();
        self.sessions.local.unregister(slot);
        self.release_held_calls(context).await;
        let on_line =
            self.announcer.on_lines.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&slot.user);
        if on_line
            && self.sessions.local.sessions_of(&slot.user) == 0
            && let Err(error) = self.service.mark_seen_at(std::slice::from_ref(&slot.user), gone_at).await
        {
            tracing::warn!(%error, "cannot record when a party of a call went away");
        }
    }

    /// What a connecting session of `user` is told about their calls: the open call, if any
    /// (`connection.ack`'s `open_calls`), or else the newest call if it finished recently (an
    /// old client that missed its end while offline needs a `call.end`: it ignores
    /// `open_calls`). A party of an open call counts as seen from now.
    ///
    /// # Errors
    /// As [`CallService::newest_call_of`].
    pub(crate) async fn calls_on_connect(&self, user: &UserId) -> Result<CallsOnConnect, CallServiceError> {
        let Some(newest) = self.service.newest_call_of(user).await? else {
            return Ok(CallsOnConnect::default());
        };
        // A call placed while the user was in do-not-disturb rings none of their devices, this
        // one included: it is not theirs to see until it is missed.
        let silenced_for_user = newest.is_silenced() && newest.receiver() == user;
        if newest.status().is_open() && !(silenced_for_user && newest.status() == CallStatus::Ringing) {
            self.announcer.on_lines.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(user.clone());
            if let Err(error) = self.service.mark_seen(std::slice::from_ref(user)).await {
                tracing::warn!(%error, "cannot record that a party of a call is back");
            }
            self.calls.remember(&newest);
            return Ok(CallsOnConnect { open: Some(newest), recently_finished: None });
        }
        let told_for = if newest.end_reason() == Some(EndReason::ConnectionLost) {
            TELL_LOST_CALLS_FOR
        } else {
            TELL_FINISHED_CALLS_FOR
        };
        let recent = newest.ended_at().is_some_and(|ended| ended.plus(told_for) > self.service.now());
        Ok(CallsOnConnect { open: None, recently_finished: recent.then_some(newest) })
    }

    /// Asks every session to close (code 1001) and refuses new ones.
    pub fn begin_shutdown(&self) {
        self.sessions.begin_shutdown();
    }

    /// Waits up to `grace` for the sessions to finish closing; returns whether they all did.
    pub async fn drain(&self, grace: std::time::Duration) -> bool {
        self.begin_shutdown();
        tokio::time::timeout(grace, self.sessions.tasks.wait()).await.is_ok()
    }
}
