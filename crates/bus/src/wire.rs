//! [`Wire`]: the text of a message on a user's or a conversation's channel. One header line,
//! then the event exactly as sockets get it, so nothing is escaped on the way out or unescaped
//! on the way in (an SDP offer is kilobytes of quotes and newlines):
//!
//! ```text
//! E <from> <except device|-> <except user|-> <stream id|->\n<event>   an event
//! P <from> <1|0>                                                     presence
//! R <from> <user>                                                    removed from a conversation
//! ```
//!
//! `<from>` is the publishing instance, in hex; an excepted device is `<instance hex>.<serial>`.
//! No field may hold a space or a newline: user ids and stream ids never do.

use std::fmt::Write as _;

use ringline_domain::DeviceId;

/// One message on a user's or a conversation's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// An event for the channel's user or conversation.
    Event {
        /// The publishing instance (it ignores its own messages: it delivered them already).
        from: u64,
        /// The session that caused the event and must not get it back.
        except_device: Option<DeviceId>,
        /// For a conversation: the user whose sessions must not get it (the sender).
        except_user: Option<&'a str>,
        /// The event's position in its user's stream (its `event_id`), when it is a stream
        /// event: kept in the receiving instance's window too.
        stream_id: Option<&'a str>,
        payload: &'a str,
    },
    /// `from` holds (or no longer holds) a notification socket of the channel's user.
    Presence { from: u64, present: bool },
    /// `user` was removed from the channel's conversation: their chat sockets on it close.
    Removed { from: u64, user: &'a str },
}

const NONE: &str = "-";

impl<'a> Wire<'a> {
    pub(crate) fn from(&self) -> u64 {
        match self {
            Self::Event { from, .. } | Self::Presence { from, .. } | Self::Removed { from, .. } => *from,
        }
    }

    pub(crate) fn encode(&self) -> String {
        match self {
            Self::Event { from, except_device, except_user, stream_id, payload } => {
                // Sized once: the payload (kilobytes for an SDP offer) is copied once.
                let mut message = String::with_capacity(payload.len() + 128);
                let _ = write!(message, "E {from:x} ");
                let _ = match except_device {
                    Some(device) => write!(message, "{:x}.{}", device.instance(), device.serial()),
                    None => write!(message, "{NONE}"),
                };
                let _ = writeln!(message, " {} {}", except_user.unwrap_or(NONE), stream_id.unwrap_or(NONE));
                message.push_str(payload);
                message
            }
            Self::Presence { from, present } => format!("P {from:x} {}", u8::from(*present)),
            Self::Removed { from, user } => format!("R {from:x} {user}"),
        }
    }

    /// Reads what [`Wire::encode`] wrote; `None` for anything else.
    pub(crate) fn decode(message: &'a str) -> Option<Self> {
        let (head, payload) = message.split_once('\n').unwrap_or((message, ""));
        let mut fields = head.split(' ');
        let kind = fields.next()?;
        let from = u64::from_str_radix(fields.next()?, 16).ok()?;
        let field = |text: &'a str| (text != NONE).then_some(text);
        let wire = match kind {
            "E" => {
                let except_device = match fields.next()? {
                    NONE => None,
                    device => {
                        let (instance, serial) = device.split_once('.')?;
                        Some(DeviceId::new(u64::from_str_radix(instance, 16).ok()?, serial.parse().ok()?))
                    }
                };
                let except_user = field(fields.next()?);
                let stream_id = field(fields.next()?);
                Self::Event { from, except_device, except_user, stream_id, payload }
            }
            "P" => Self::Presence {
                from,
                present: match fields.next()? {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
            },
            "R" => Self::Removed { from, user: fields.next()? },
            _ => return None,
        };
        fields.next().is_none().then_some(wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let sdp = r#"{"type":"call.offer","event_id":"3f2a-1f","offer":{"sdp":"v=0\r\no=- 1 2 IN IP4 \"x\"\r\n"}}"#;
        let messages = [
            Wire::Event {
                from: u64::MAX,
                except_device: Some(DeviceId::new(0xabc, 7)),
                except_user: None,
                stream_id: Some("3f2a-1f"),
                payload: sdp,
            },
            Wire::Event { from: 1, except_device: None, except_user: Some("alice"), stream_id: None, payload: "{}" },
            Wire::Event { from: 2, except_device: None, except_user: None, stream_id: None, payload: "a\nb" },
            Wire::Presence { from: 3, present: true },
            Wire::Presence { from: 4, present: false },
            Wire::Removed { from: 5, user: "bob" },
        ];
        for message in messages {
            let encoded = message.encode();
            assert_eq!(Wire::decode(&encoded), Some(message.clone()), "{encoded}");
        }
        // The event travels as it is: no escaping.
        let encoded =
            Wire::Event { from: 1, except_device: None, except_user: None, stream_id: None, payload: sdp }.encode();
        assert!(encoded.ends_with(sdp));
    }

    #[test]
    fn anything_else_is_refused() {
        for message in
            ["", "E", "E zz - - -\n{}", "E 1 - -\n{}", "E 1 1 - -\n{}", "P 1 2", "P 1 1 1", "X 1", "{\"from\":1}"]
        {
            assert_eq!(Wire::decode(message), None, "{message:?}");
        }
    }
}
