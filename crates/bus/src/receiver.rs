//! Receiving: what other instances publish, delivered to this instance's sessions.

use std::sync::Arc;

use ringline_domain::{Audience, ConversationId, Signal, SignalRouter, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backplane::{BackplaneError, Incoming};
use super::call_copy::{self, CallNews};
use super::{SharedBus, Wire};
use ringline_signaling::Signaling;

impl SharedBus {
    /// Delivers what other instances publish.
    pub(super) async fn receive(
        &self,
        mut incoming: mpsc::UnboundedReceiver<Incoming>,
        signaling: &Signaling,
        stop: &CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                next = incoming.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            match next {
                Incoming::Message { channel, message } => self.deliver(&channel, &message, signaling),
                Incoming::Disconnected => self.record(Some(&BackplaneError("the connection was lost".into()))),
            }
        }
    }

    pub(super) fn deliver(&self, channel: &str, message: &str, signaling: &Signaling) {
        let Some(rest) = channel.strip_prefix(self.prefix.as_str()).and_then(|rest| rest.strip_prefix(':')) else {
            return;
        };
        if rest == "accounts" {
            if let Some((status, user)) = message.split_once(' ')
                && let (Some(status), Ok(user)) = (super::parse_account_status(status), UserId::parse(user))
            {
                // Known first: a socket closed here reconnects, and must be refused.
                signaling.accounts().changed(&user, status);
                self.local.account_changed(&user, status);
            }
            return;
        }
        if rest == "calls" {
            // Kept where a party has sessions: their next request or frame reads nothing.
            let has_party = |caller: &UserId, receiver: &UserId| {
                self.local.sessions_of(caller) + self.local.sessions_of(receiver) > 0
            };
            match call_copy::decode(message, has_party) {
                Some(CallNews::Copied { call, parties }) => signaling.call_copied_elsewhere(&call, parties),
                Some(CallNews::Reached { id, stage }) => signaling.call_changed_elsewhere(id, stage),
                None => {}
            }
            return;
        }
        let Some(wire) = Wire::decode(message) else {
            tracing::warn!("ignoring an unreadable cross-instance message");
            return;
        };
        if wire.from() == self.local.instance() {
            return; // Delivered here when it was published.
        }
        // `u:{user}` and `c:{conversation}`: the braces are hash tags (see `redis_backplane.rs`).
        let tagged = |kind: &str| rest.strip_prefix(kind).and_then(|tag| tag.strip_prefix('{')?.strip_suffix('}'));
        let audience = if let Some(user) = tagged("u:") {
            let Ok(user) = UserId::parse(user) else { return };
            if let Wire::Presence { from, present } = wire {
                self.local.set_elsewhere(&user, from, present);
                return;
            }
            Audience::User(user)
        } else if let Some(conversation) = tagged("c:") {
            let Some(conversation) = conversation.parse::<i64>().ok().and_then(|id| ConversationId::new(id).ok())
            else {
                return;
            };
            if let Wire::Removed { user, .. } = wire {
                if let Ok(removed) = UserId::parse(user) {
                    self.local.participant_removed(conversation, &removed);
                }
                return;
            }
            Audience::Conversation(conversation)
        } else {
            return;
        };
        let Wire::Event { except_device, except_user, stream_id, payload, .. } = wire else { return };
        let except_user = except_user.and_then(|user| UserId::parse(user).ok());
        let payload: Arc<str> = Arc::from(payload);
        // A user's event is kept in this instance's window too, so a session here that
        // resumes gets it, in the order it was delivered here.
        if let Audience::User(user) = &audience
            && let Some(id) = stream_id
        {
            signaling.streams().record(user, id, Arc::clone(&payload), &mut |payload| {
                self.local.route(Signal {
                    audience: audience.clone(),
                    except_device,
                    except_user: except_user.clone(),
                    payload,
                });
            });
            return;
        }
        self.local.route(Signal { audience, except_device, except_user, payload });
    }
}
