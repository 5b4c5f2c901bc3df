//! Receiving: what other instances publish, delivered to this instance's sessions.

use std::sync::Arc;

use redis::{PushInfo, PushKind, Value};
use ringline_domain::{Audience, ConversationId, DeviceId, Signal, SignalRouter, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RedisBus, Wire};
use crate::events;
use crate::hub::Signaling;

impl RedisBus {
    /// Delivers what other instances publish.
    pub(super) async fn receive(
        &self,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
        signaling: &Signaling,
        stop: &CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                () = stop.cancelled() => return,
                push = pushes.recv() => match push {
                    Some(push) => push,
                    None => return,
                },
            };
            match push.kind {
                PushKind::Message => self.deliver(&push.data, signaling),
                PushKind::Disconnection => {
                    self.record(Some(&redis::RedisError::from((redis::ErrorKind::Io, "connection to Redis lost"))));
                }
                _ => {}
            }
        }
    }

    pub(super) fn deliver(&self, data: &[Value], signaling: &Signaling) {
        let [Value::BulkString(channel), Value::BulkString(message), ..] = data else { return };
        let (Ok(channel), Ok(message)) = (std::str::from_utf8(channel), std::str::from_utf8(message)) else { return };
        let Some(rest) = channel.strip_prefix(self.prefix.as_str()).and_then(|rest| rest.strip_prefix(':')) else {
            return;
        };
        if rest == "calls" {
            if let Some((id, stage)) = message.split_once(' ')
                && let (Ok(id), Ok(stage)) = (id.parse::<i64>(), stage.parse::<u8>())
                && let Ok(id) = ringline_domain::CallId::new(id)
            {
                signaling.announcer.cache.forget_older(id, stage);
            }
            return;
        }
        let Ok(wire) = serde_json::from_str::<Wire<'_>>(message) else {
            tracing::warn!("ignoring an unreadable cross-instance message");
            return;
        };
        if wire.from == self.local.instance() {
            return; // Delivered here when it was published.
        }
        let audience = if let Some(user) = rest.strip_prefix("u:") {
            let Ok(user) = UserId::parse(user) else { return };
            if let Some(present) = wire.notification_sockets {
                self.local.set_elsewhere(&user, wire.from, present);
                return;
            }
            Audience::User(user)
        } else if let Some(conversation) = rest.strip_prefix("c:") {
            let Some(conversation) = conversation.parse::<i64>().ok().and_then(|id| ConversationId::new(id).ok())
            else {
                return;
            };
            Audience::Conversation(conversation)
        } else {
            return;
        };
        let Some(payload) = wire.payload else { return };
        let except_device = wire.except_device.map(|(instance, serial)| DeviceId::new(instance, serial));
        let except_user = wire.except_user.and_then(|user| UserId::parse(user.as_ref()).ok());
        let payload: Arc<str> = Arc::from(payload.as_ref());
        // A user's event is kept in this instance's window too, so a session here that
        // resumes gets it, in the order it was delivered here.
        if let Audience::User(user) = &audience
            && let Some(id) = events::stream_id(&payload)
        {
            signaling.announcer.replay.record(user, &id, Arc::clone(&payload), &mut |payload| {
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
