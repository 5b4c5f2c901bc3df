//! [`CallCopy`]: a call as the `calls` channel carries it after a change, with its parties'
//! profiles when known, so that an instance holding a party's sessions keeps the new copy
//! instead of reading the call (and the profiles) from the database on its next request or
//! frame. Read back through [`Call::restore`], so a copy breaks no invariant of the state
//! machine; the database still decides every change (each write is a compare-and-set).
//!
//! The message is `<id> <stage>`, then, when the call can be copied, its caller and receiver and
//! the copy as JSON, all separated by spaces: an instance with no session of either party reads
//! the ids and skips the JSON. A call with a quality report is not copied (reports come after
//! the end, and nothing reads a finished call on the hot path): instances holding an older copy
//! drop it.

use std::borrow::Cow;
use std::sync::Arc;

use ringline_domain::{Call, CallId, CallParts, ConversationId, DeviceId, Timestamp, UserId, UserProfile};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct CallCopy<'a> {
    conversation: Option<i64>,
    #[serde(borrow)]
    caller: Cow<'a, str>,
    #[serde(borrow)]
    receiver: Cow<'a, str>,
    call_type: Cow<'a, str>,
    status: Cow<'a, str>,
    started_at: i64,
    answered_at: Option<i64>,
    ended_at: Option<i64>,
    duration_seconds: Option<u32>,
    end_reason: Option<Cow<'a, str>>,
    created_at: i64,
    updated_at: i64,
    callee_device: Option<(u64, u64)>,
    silenced: bool,
    #[serde(default)]
    rang_at: Option<i64>,
    #[serde(default)]
    video_at: Option<i64>,
    #[serde(default)]
    waiting: bool,
    #[serde(default, borrow)]
    parties: Vec<Party<'a>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Party<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    username: Cow<'a, str>,
    #[serde(borrow)]
    first_name: Cow<'a, str>,
    #[serde(borrow)]
    last_name: Cow<'a, str>,
    #[serde(borrow)]
    profile_image_url: Option<Cow<'a, str>>,
}

/// What the `calls` channel said about one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallNews {
    /// The call reached `stage`; no copy came with it.
    Reached { id: CallId, stage: u8 },
    /// The call as it is now, and its parties' profiles when the sender knew them.
    Copied { call: Box<Call>, parties: Option<Arc<[UserProfile]>> },
}

/// The `calls` channel's message for `call`, with `parties` when known.
pub(crate) fn encode(call: &Call, parties: Option<&[UserProfile]>) -> String {
    let head = format!("{} {}", call.id().get(), call.status().stage());
    if call.quality().is_some() {
        return head;
    }
    let copy = CallCopy {
        conversation: call.conversation().map(ConversationId::get),
        caller: call.caller().as_str().into(),
        receiver: call.receiver().as_str().into(),
        call_type: call.call_type().as_str().into(),
        status: call.status().as_str().into(),
        started_at: call.started_at().unix_micros(),
        answered_at: call.answered_at().map(Timestamp::unix_micros),
        ended_at: call.ended_at().map(Timestamp::unix_micros),
        duration_seconds: call.duration_seconds(),
        end_reason: call.end_reason().map(|reason| reason.as_str().into()),
        created_at: call.created_at().unix_micros(),
        updated_at: call.updated_at().unix_micros(),
        callee_device: call.callee_device().map(|device| (device.instance(), device.serial())),
        silenced: call.is_silenced(),
        rang_at: call.rang_at().map(Timestamp::unix_micros),
        video_at: call.video_at().map(Timestamp::unix_micros),
        waiting: call.is_waiting(),
        parties: parties
            .unwrap_or_default()
            .iter()
            .map(|profile| Party {
                id: profile.id.as_str().into(),
                username: profile.username.as_str().into(),
                first_name: profile.first_name.as_str().into(),
                last_name: profile.last_name.as_str().into(),
                profile_image_url: profile.profile_image_url.as_deref().map(Into::into),
            })
            .collect(),
    };
    match serde_json::to_string(&copy) {
        Ok(json) => format!("{head} {} {} {json}", call.caller(), call.receiver()),
        Err(_) => head,
    }
}

/// Reads a `calls` channel message; `None` when it is not one. The copy is read only when
/// `wanted(caller, receiver)` says this instance keeps it; a copy that does not read back into a
/// valid call of those parties counts as no copy.
pub(crate) fn decode(message: &str, wanted: impl Fn(&UserId, &UserId) -> bool) -> Option<CallNews> {
    let mut parts = message.splitn(5, ' ');
    let id = CallId::new(parts.next()?.parse().ok()?).ok()?;
    let stage: u8 = parts.next()?.parse().ok()?;
    let reached = CallNews::Reached { id, stage };
    let (Some(caller), Some(receiver), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
        return Some(reached);
    };
    let (Ok(caller), Ok(receiver)) = (UserId::parse(caller), UserId::parse(receiver)) else { return Some(reached) };
    if !wanted(&caller, &receiver) {
        return Some(reached);
    }
    match restore(id, json) {
        Some((call, parties)) if call.caller() == &caller && call.receiver() == &receiver => {
            Some(CallNews::Copied { call: Box::new(call), parties })
        }
        _ => Some(reached),
    }
}

fn restore(id: CallId, json: &str) -> Option<(Call, Option<Arc<[UserProfile]>>)> {
    let copy: CallCopy<'_> = serde_json::from_str(json).ok()?;
    let time = Timestamp::from_unix_micros;
    // `None` stays `None`; a value that does not read back fails the whole copy.
    let optional_time = |micros: Option<i64>| match micros {
        None => Some(None),
        Some(micros) => time(micros).map(Some),
    };
    let conversation = match copy.conversation {
        None => None,
        Some(id) => Some(ConversationId::new(id).ok()?),
    };
    let end_reason = match copy.end_reason {
        None => None,
        Some(reason) => Some(reason.parse().ok()?),
    };
    let call = Call::restore(CallParts {
        id,
        conversation,
        caller: UserId::parse(copy.caller.as_ref()).ok()?,
        receiver: UserId::parse(copy.receiver.as_ref()).ok()?,
        call_type: copy.call_type.parse().ok()?,
        status: copy.status.parse().ok()?,
        started_at: time(copy.started_at)?,
        answered_at: optional_time(copy.answered_at)?,
        ended_at: optional_time(copy.ended_at)?,
        duration_seconds: copy.duration_seconds,
        end_reason,
        created_at: time(copy.created_at)?,
        updated_at: time(copy.updated_at)?,
        callee_device: copy.callee_device.map(|(instance, serial)| DeviceId::new(instance, serial)),
        quality: None,
        silenced: copy.silenced,
        rang_at: optional_time(copy.rang_at)?,
        video_at: optional_time(copy.video_at)?,
        waiting: copy.waiting,
    })
    .ok()?;
    let mut parties = Vec::with_capacity(copy.parties.len());
    for party in copy.parties {
        parties.push(UserProfile {
            id: UserId::parse(party.id.as_ref()).ok()?,
            username: party.username.into_owned(),
            first_name: party.first_name.into_owned(),
            last_name: party.last_name.into_owned(),
            profile_image_url: party.profile_image_url.map(Cow::into_owned),
        });
    }
    let parties = (!parties.is_empty()).then(|| Arc::from(parties));
    Some((call, parties))
}

#[cfg(test)]
mod tests {
    use ringline_domain::{CallType, EndReason, NewCall, Outcome};

    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("an id")
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000 + seconds * 1_000_000).expect("a time")
    }

    fn changed(outcome: Outcome) -> Call {
        match outcome {
            Outcome::Changed(transition) => transition.call,
            Outcome::AlreadyDone(call) => call,
        }
    }

    #[test]
    fn a_call_reads_back_as_sent_at_every_stage() {
        let conversation = ConversationId::new(9).ok();
        let new = NewCall::ring(user("ada"), user("grace"), CallType::Video, conversation, at(0)).expect("a call");
        let ringing = new.into_call(CallId::new(42).expect("an id"));
        let active = changed(ringing.accept_on(&user("grace"), at(2), Some(DeviceId::new(0xabc, 3))).expect("accept"));
        let ended = changed(active.end(&user("ada"), at(9)).expect("end"));
        assert_eq!(ended.end_reason(), Some(EndReason::UserHangup));
        let parties: Vec<UserProfile> = ["ada", "grace"]
            .into_iter()
            .map(|name| UserProfile {
                id: user(name),
                username: format!("{name} \"quoted\""),
                first_name: name.into(),
                last_name: String::new(),
                profile_image_url: Some(format!("https://img.example/{name}.png")),
            })
            .collect();
        for call in [ringing, active, ended] {
            let news = decode(&encode(&call, Some(&parties)), |_, _| true);
            assert_eq!(
                news,
                Some(CallNews::Copied { call: Box::new(call.clone()), parties: Some(Arc::from(parties.clone())) })
            );
            let without = decode(&encode(&call, None), |_, _| true);
            assert_eq!(without, Some(CallNews::Copied { call: Box::new(call.clone()), parties: None }));
            // An instance with no session of either party reads only the stage.
            let elsewhere = decode(&encode(&call, Some(&parties)), |caller, receiver| {
                assert_eq!((caller, receiver), (call.caller(), call.receiver()));
                false
            });
            let stage = call.status().stage();
            assert_eq!(elsewhere, Some(CallNews::Reached { id: call.id(), stage }));
        }
    }

    #[test]
    fn what_is_not_a_valid_copy_still_says_the_stage() {
        let id = CallId::new(42).expect("an id");
        let decode = |message: &str| decode(message, |_, _| true);
        assert_eq!(decode("42 3"), Some(CallNews::Reached { id, stage: 3 }));
        assert_eq!(decode("42 3 ada grace {\"not\":\"a call\"}"), Some(CallNews::Reached { id, stage: 3 }));
        assert_eq!(decode("nonsense"), None);
        assert_eq!(decode("x 3"), None);
    }
}
