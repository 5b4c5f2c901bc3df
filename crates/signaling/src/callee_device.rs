//! Which of the callee's devices an answered call belongs to. The caller's peer connection
//! takes one SDP answer, so once the call is answered only one of the callee's devices (tabs,
//! phones) may signal in it; the others get `answered_elsewhere` and nothing they send is
//! relayed.
//!
//! The database decides (`Call::callee_device`), so the rule holds across instances: a socket
//! accept records its device in the accept's own compare-and-set, and after an accept that named
//! no device (REST) the first device to signal claims the call. A device remembers a granted
//! claim (the relay stays free of database work) and lets go when its socket closes; a holder
//! whose instance stopped is replaced. `docs/protocol.md`, "Answered or declined on another
//! device", says what clients see.

use ringline_domain::{CallId, DeviceClaim, DeviceId, ErrorCode, UserId};

use crate::call_cache::Route;
use crate::hub::Signaling;
use crate::protocol::FrameError;
use crate::relay::{SessionContext, elsewhere, refusal};

/// How long a refusal the database gave (another device holds the call) is repeated from
/// memory before the next frame asks again: the holder may have let go meanwhile.
const RECHECK_HOLDER: std::time::Duration = std::time::Duration::from_secs(1);

impl Signaling {
    /// Refuses a frame from one of the callee's devices other than the one the answered call
    /// belongs to (the first to send SDP claims it, after an accept over REST).
    pub(crate) async fn callee_device_only(&self, route: &Route, session: &SessionContext) -> Result<(), FrameError> {
        if route.receiver() != &session.user || route.status().is_unanswered() {
            return Ok(());
        }
        self.hold_answered_call(route.id(), session).await
    }

    /// Claims the call for `session`'s device on the callee's side. While it rings, one of this
    /// process's devices at a time may try to accept it (the accept records the device, and of
    /// several instances' devices the accept's compare-and-set picks one); once answered, see
    /// [`Signaling::hold_answered_call`].
    pub(crate) async fn claim_as_callee(&self, route: &Route, session: &SessionContext) -> Result<(), FrameError> {
        if !route.status().is_unanswered() {
            return self.hold_answered_call(route.id(), session).await;
        }
        match self.calls.reserve_callee_device(route.id(), session.device) {
            Ok(()) => Ok(()),
            Err(holder) if !self.sessions.local.is_connected(&session.user, holder) => {
                self.calls.release_callee_device(route.id(), holder);
                self.calls.reserve_callee_device(route.id(), session.device).map_err(|_| elsewhere())
            }
            Err(_) => Err(elsewhere()),
        }
    }

    /// Lets `session`'s device signal in answered call `id` if it holds the call, or takes the
    /// call: when no device holds it (accepted over REST, or the holder let go when its socket
    /// closed) or the holder is gone (its instance stopped). The database decides, so the rule
    /// holds across instances; a device that holds the call, and a refusal the database gave
    /// within [`RECHECK_HOLDER`], are answered from memory.
    pub(crate) async fn hold_answered_call(&self, id: CallId, session: &SessionContext) -> Result<(), FrameError> {
        let cache = &self.calls;
        let mut replacing = None;
        match cache.callee_device(id) {
            Some(holder) if holder.device == session.device && holder.confirmed.is_some() => return Ok(()),
            Some(holder) if holder.device == session.device => {}
            Some(holder) if holder.device.instance() == self.sessions.local.instance() => {
                if self.sessions.local.is_connected(&session.user, holder.device) {
                    return Err(elsewhere());
                }
                replacing = Some(holder.device);
            }
            Some(holder) if holder.confirmed_within(RECHECK_HOLDER) => return Err(elsewhere()),
            _ => {}
        }
        // Twice at most: a claim that finds the call held by a device that is gone replaces it.
        for _ in 0..2 {
            match self.service.claim_callee_device(id, session.device, replacing).await {
                Ok(DeviceClaim::Granted) => {
                    cache.confirm_callee_device(id, session.device);
                    self.remember_held(session, id);
                    return Ok(());
                }
                Ok(DeviceClaim::HeldBy(holder)) => {
                    cache.confirm_callee_device(id, holder);
                    if replacing == Some(holder) || !self.device_gone(&session.user, holder).await {
                        return Err(elsewhere());
                    }
                    replacing = Some(holder);
                }
                Ok(DeviceClaim::NotActive(status)) => {
                    return Err(FrameError::with_detail(
                        ErrorCode::InvalidCallState,
                        format!("Call is already {status}."),
                    ));
                }
                Err(error) if ringline_domain::is_store_unavailable(&error) => {
                    if crate::throttle::database_outage_log_due() {
                        tracing::warn!(%error, "cannot claim a call for a device: the database is unavailable");
                    }
                    return self.hold_without_database(id, session, replacing);
                }
                Err(error) => return Err(refusal(error)),
            }
        }
        Err(elsewhere())
    }

    /// [`Signaling::hold_answered_call`] while the database is unreachable: an answered call's
    /// frames keep flowing (the relay needs no database), so this process decides alone, as
    /// if it were the only instance: the device takes the call unless another device it knows
    /// of holds it. Its claim is not stored, so during an outage a device on another instance
    /// may take the call too.
    fn hold_without_database(
        &self,
        id: CallId,
        session: &SessionContext,
        replacing: Option<DeviceId>,
    ) -> Result<(), FrameError> {
        let cache = &self.calls;
        match cache.callee_device(id) {
            Some(holder) if holder.device != session.device && Some(holder.device) != replacing => Err(elsewhere()),
            _ => {
                // Confirmed here, so that its next frames do not wait on the database again.
                cache.confirm_callee_device(id, session.device);
                self.remember_held(session, id);
                Ok(())
            }
        }
    }

    /// Whether the callee's device `device`, which holds a call, is gone without letting go:
    /// its socket here closed, or its instance stopped. A device of a live instance lets go
    /// when its socket closes; when the bus cannot tell whether an instance lives, the device
    /// is taken to be there (two answers would break the caller's call; a refused device can
    /// call back).
    async fn device_gone(&self, user: &UserId, device: DeviceId) -> bool {
        if device.instance() == self.sessions.local.instance() {
            return !self.sessions.local.is_connected(user, device);
        }
        match &self.sessions.presence {
            Some(presence) => presence.instance_alive(device.instance()).await == Some(false),
            // No bus: another instance id is an earlier run of this process.
            None => true,
        }
    }

    /// Records that `session`'s device holds call `id`, to let go of it when the socket closes.
    pub(crate) fn remember_held(&self, session: &SessionContext, id: CallId) {
        session.holds(id, |earlier| self.known_finished(earlier));
    }

    /// Whether this process knows call `id` to be over.
    fn known_finished(&self, id: CallId) -> bool {
        self.calls.get(id).is_some_and(|route| !route.status().is_open())
    }

    /// Lets go of the answered calls `session`'s device holds (its socket closed), so that the
    /// callee's next device may take them over on any instance. The database lets go only if
    /// this device still holds the call; this process's copy is not asked (a copy read
    /// meanwhile may name an earlier holder), only whether the call is known to be over.
    pub(crate) async fn release_held_calls(&self, session: &SessionContext) {
        for id in session.take_held_calls() {
            if self.known_finished(id) {
                continue;
            }
            self.calls.release_callee_device(id, session.device);
            if let Err(error) = self.service.release_callee_device(id, session.device).await
                && (!ringline_domain::is_store_unavailable(&error) || crate::throttle::database_outage_log_due())
            {
                tracing::warn!(%error, call = %id, "cannot let go of a call a closed device held");
            }
        }
    }
}
