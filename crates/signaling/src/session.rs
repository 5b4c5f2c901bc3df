//! One WebSocket connection, from `connection.ack` to close.
//!
//! A single task selects over everything that can happen to the connection — a frame from the
//! peer, an event from its queue, a kick from the router, the keepalive tick, server shutdown —
//! so no lock is held across an await and the connection's state lives in one place. The
//! transport is abstracted as a stream of [`Inbound`] and a sink of [`Outbound`], which the api
//! crate adapts from poem's WebSocket.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use ringline_domain::{Call, ErrorCode, UserId};
use serde_json::value::RawValue;
use tokio::time::Instant as TimerInstant;

use ringline_metrics::sockets::{ResumeResult, SocketEndpoint};

use crate::events;
use crate::hub::Signaling;
use crate::limits::TokenBucket;
use crate::protocol::{FrameError, MAX_FRAME_BYTES, close, error_event};
use crate::relay::SessionContext;
use crate::replay::Replay;
use crate::router::{SessionKind, SessionSlot};
use crate::settings::{FrameRate, Keepalive};
use crate::throttle::OncePerSecond;

/// A write that takes longer than this means the peer stopped reading; the session ends.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the peer sent.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary,
    Ping,
    Pong,
    /// The peer's Close frame, with its code if it gave one.
    Close(Option<u16>),
    /// The peer sent what the connection cannot read on from, to be closed with this code and
    /// reason: a frame over [`crate::protocol::MAX_CONNECTION_FRAME_BYTES`] (1009), a text frame
    /// that is not UTF-8 (1007), a protocol violation (1002).
    Unreadable(u16, &'static str),
}

/// What to send to the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    Text(String),
    Ping,
    /// Our Close frame. The answer to the peer's Close (RFC 6455 §5.5.1) is the transport's to
    /// queue; flushing the sink sends it.
    Close(u16, &'static str),
}

/// How long a closing side waits for the peer to answer its Close frame before dropping the
/// connection. A browser answers at once; this bounds a peer that never does.
pub const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Who the connection belongs to, established before the upgrade.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    pub user: UserId,
    pub kind: SessionKind,
    /// The last `event_id` the client saw (`?resume=`): it gets what it missed since.
    pub resume: Option<String>,
}

/// Renders calls exactly as the REST API shows them, for `connection.ack`'s `open_calls`. The
/// api crate implements it with its call JSON, so the two shapes can never drift apart.
#[async_trait::async_trait]
pub trait CallPresenter: Send + Sync + std::fmt::Debug {
    async fn present(&self, calls: &[Call]) -> Vec<Box<RawValue>>;
}

/// The ids of events replayed from the shared window, which may also arrive live (published
/// while the window was read): each is skipped once, for a few seconds after the replay.
#[derive(Debug, Default)]
struct Replayed {
    ids: std::collections::HashSet<String>,
    until: Option<Instant>,
}

impl Replayed {
    fn new(ids: impl Iterator<Item = String>) -> Self {
        Self { ids: ids.collect(), until: Some(Instant::now() + Duration::from_secs(5)) }
    }

    /// Whether `event` is a live copy of a replayed event (checked only while some may come).
    fn is_copy(&mut self, event: &str) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        if self.until.is_some_and(|until| Instant::now() > until) {
            self.ids.clear();
            return false;
        }
        events::stream_id(event).is_some_and(|id| self.ids.remove(&id))
    }
}

/// A socket's own frame limit: a token bucket over a [`FrameRate`].
#[derive(Debug)]
struct RateLimit {
    rate: FrameRate,
    bucket: TokenBucket,
    /// One `rate_limited` error a second is enough: answering every dropped frame would turn a
    /// flood from the peer into a flood to the peer.
    warnings: OncePerSecond,
}

impl RateLimit {
    fn new(rate: FrameRate) -> Self {
        Self { rate, bucket: TokenBucket::full(rate), warnings: OncePerSecond::new() }
    }

    fn allow(&mut self) -> bool {
        self.bucket.take(self.rate, Instant::now())
    }

    fn should_warn(&self) -> bool {
        self.warnings.due()
    }
}

/// Runs a session until the peer leaves, the server shuts down, or the session is dropped
/// for idleness or slowness. Never panics on anything the peer sends.
pub async fn run<S, K>(
    signaling: Arc<Signaling>,
    identity: SessionIdentity,
    presenter: &dyn CallPresenter,
    mut inbound: S,
    mut outbound: K,
) where
    S: Stream<Item = Inbound> + Unpin + Send,
    K: Sink<Outbound> + Unpin + Send,
{
    let endpoint = endpoint_of(identity.kind);
    let sockets = &signaling.metrics.sockets;
    let Some(_tracked) = (!signaling.sessions.tasks.is_closed()).then(|| signaling.sessions.tasks.token()) else {
        close_and_wait(&mut inbound, &mut outbound, close::GOING_AWAY, "server shutting down").await;
        sockets.closed(endpoint, close::GOING_AWAY);
        return;
    };
    if signaling.sessions.local.sessions_of(&identity.user) >= signaling.sessions.max_per_user {
        tracing::info!(user = %identity.user, "a socket refused: the user has too many open");
        close_and_wait(&mut inbound, &mut outbound, close::TOO_MANY_SOCKETS, "too many sockets for this user").await;
        sockets.closed(endpoint, close::TOO_MANY_SOCKETS);
        return;
    }
    let (slot, mut events, attached) = signaling.attach(&identity.user, identity.kind, identity.resume.as_deref());
    sockets.opened(endpoint);
    let context = SessionContext::new(slot.device, identity.user.clone(), identity.kind);
    tracing::info!(user = %context.user, device = %slot.device, kind = ?context.kind, "session opened");

    let conversation = match context.kind {
        SessionKind::Chat(conversation) => Some(conversation.to_string()),
        SessionKind::Notifications => None,
    };
    // Read after attaching (and, with several instances, after the user's subscription is
    // made), so no change falls between this snapshot and the live events.
    let mut attached = attached;
    let mut replayed = Replayed::default();
    if let Some(gate) = &signaling.sessions.gate {
        gate.subscribed(&context.user).await;
        // A resume this instance cannot serve (the session left another instance) is served
        // from the window every instance shares, if it still holds the position.
        if let (Some(resume), Replay::Gap) = (identity.resume.as_deref(), &attached.replay)
            && let Some(missed) = gate.missed(&context.user, resume).await
        {
            replayed = Replayed::new(missed.iter().map(|(id, _)| id.clone()));
            attached.replay = if missed.is_empty() {
                Replay::Nothing
            } else {
                Replay::Events(missed.into_iter().map(|(_, event)| event).collect())
            };
        }
    }
    let on_connect = match signaling.calls_on_connect(&context.user).await {
        Ok(found) => Some(found),
        Err(error) => {
            tracing::warn!(%error, "cannot read a connecting user's calls for connection.ack");
            None
        }
    };
    let open_calls = match &on_connect {
        Some(found) => Some(presenter.present(found.open.as_slice()).await),
        None => None,
    };
    let ack = events::connection_ack(
        &signaling.next_event_id(),
        &context.user,
        conversation.as_deref(),
        &attached.resume_from,
        open_calls.as_deref(),
    );
    let mut open = write(&mut outbound, &slot, Outbound::Text(ack)).await;
    if identity.resume.is_some() {
        sockets.resumed(match &attached.replay {
            Replay::Nothing => ResumeResult::UpToDate,
            Replay::Events(_) => ResumeResult::Replayed,
            Replay::Gap => ResumeResult::Resync,
        });
    }
    let catch_up: Vec<String> = match attached.replay {
        Replay::Nothing => Vec::new(),
        Replay::Events(missed) => missed.iter().map(|event| event.to_string()).collect(),
        Replay::Gap => vec![events::resync(&signaling.next_event_id(), &attached.resume_from)],
    };
    for event in catch_up {
        open = open && write(&mut outbound, &slot, Outbound::Text(event)).await;
    }
    // A client that resumes has the `call.end` in its replay, or a `resync`. Only finished
    // calls are told: a `call.end` for an open call would hang up the device in it. One copy
    // per tab, as for routed events: a chat socket tells only while no notification socket
    // stands for its user (the original web client feeds both into one handler, and a late
    // `call.end` from the chat socket would silence a call that has just begun to ring).
    let tells_this_tab =
        identity.kind == SessionKind::Notifications || !signaling.sessions().has_notification_socket(&context.user);
    let finished = on_connect.as_ref().and_then(|found| found.recently_finished.as_ref());
    if let (Some(finished), None, true) = (finished, &identity.resume, tells_this_tab) {
        let told = events::end(&signaling.next_event_id(), finished, None);
        open = open && write(&mut outbound, &slot, Outbound::Text(told)).await;
    }

    let Keepalive { ping_interval, idle_timeout } = signaling.keepalive();
    let mut keepalive = tokio::time::interval(ping_interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await; // the first tick is immediate
    // tokio's clock, so tests can drive the timers with paused time.
    let mut last_heard = TimerInstant::now();
    let mut rate = RateLimit::new(signaling.frame_rate());
    let shutdown = signaling.sessions.shutdown.clone();
    let mut kicked = false;
    // The close code the session ends with, if not a kick (1006: the connection dropped).
    let mut close_code = close::ABNORMAL;
    // When the unanswered ping went out: its pong gives the round trip.
    let mut ping_sent: Option<TimerInstant> = None;

    while open {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                close_and_wait(&mut inbound, &mut outbound, close::GOING_AWAY, "server shutting down").await;
                close_code = close::GOING_AWAY;
                break;
            }
            () = slot.kicked() => {
                kicked = true;
                break;
            }
            event = events.recv() => match event {
                Some(event) => open = write_events(&mut outbound, &slot, &event, &mut events, &mut replayed).await,
                None => break,
            },
            frame = inbound.next() => {
                last_heard = TimerInstant::now();
                match frame {
                    None => break,
                    Some(Inbound::Close(code)) => {
                        // Answer it, so the peer sees a clean close with its own code: the
                        // original clients reconnect on any code but 1000, and a connection
                        // dropped without an answer reads as 1006. The WebSocket layer queued
                        // the answer, echoing the code, when it read the peer's Close (writing
                        // a Close of our own now would be refused); a flush sends it.
                        tracing::debug!(user = %context.user, device = %slot.device, code, "peer closed");
                        let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, outbound.flush()).await;
                        // 1005: a Close frame without a code (RFC 6455 §7.1.5).
                        close_code = code.unwrap_or(1005);
                        break;
                    }
                    Some(Inbound::Unreadable(code, reason)) => {
                        close_and_wait(&mut inbound, &mut outbound, code, reason).await;
                        close_code = code;
                        break;
                    }
                    Some(Inbound::Pong) => {
                        if let Some(sent) = ping_sent.take() {
                            sockets.ping_answered(sent.elapsed());
                        }
                    }
                    Some(Inbound::Ping) => {}
                    Some(Inbound::Binary) => {
                        sockets.refused_frame(ErrorCode::UnsupportedFrame);
                        let error = FrameError::new(ErrorCode::UnsupportedFrame);
                        open = write(&mut outbound, &slot, Outbound::Text(error_event(&signaling.next_event_id(), &error, None))).await;
                    }
                    Some(Inbound::Text(text)) => {
                        if let Some(reply) = receive(&signaling, &context, &mut rate, &text).await {
                            open = write(&mut outbound, &slot, Outbound::Text(reply)).await;
                        }
                    }
                }
            }
            _ = keepalive.tick() => {
                if last_heard.elapsed() >= idle_timeout {
                    close_and_wait(&mut inbound, &mut outbound, close::IDLE_TIMEOUT, "idle timeout").await;
                    close_code = close::IDLE_TIMEOUT;
                    break;
                }
                open = write(&mut outbound, &slot, Outbound::Ping).await;
                // A ping still unanswered keeps its moment: the round trip is to the first.
                ping_sent.get_or_insert_with(TimerInstant::now);
            }
        }
    }

    // Kicked, or kicked while a write was pending (the write gave up and left the kick armed).
    // Most often this is a slow consumer: its queue filled because it stopped reading, so its
    // socket is full too, and the Close frame goes out after what the connection still holds.
    // So the session waits as long as for any write, out of the router (it gets no more
    // events), for the peer to read on: a client that only paused learns 4409, not a bare drop.
    let kicked = kicked || slot.kicked().now_or_never().is_some();
    signaling.detach(&slot, &context).await;
    sockets.left(endpoint);
    if kicked {
        let (code, reason) = why_kicked(&slot);
        close_code = code;
        if code == close::SLOW_CONSUMER {
            sockets.slow_consumer();
        }
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = close_within(&mut inbound, &mut outbound, code, reason, WRITE_TIMEOUT) => {}
        }
    }
    sockets.closed(endpoint, close_code);
    tracing::info!(user = %context.user, device = %slot.device, "session closed");
}

fn endpoint_of(kind: SessionKind) -> SocketEndpoint {
    match kind {
        SessionKind::Notifications => SocketEndpoint::Notifications,
        SessionKind::Chat(_) => SocketEndpoint::Chat,
    }
}

/// The close code and reason for a session the router gave up on.
fn why_kicked(slot: &SessionSlot) -> (u16, &'static str) {
    match slot.dismissed_with() {
        Some(code) => (code, "no longer allowed here"),
        None => (close::SLOW_CONSUMER, "slow consumer: events were not read"),
    }
}

/// Applies the limits to one text frame, then hands it to the hub.
async fn receive(signaling: &Signaling, context: &SessionContext, rate: &mut RateLimit, text: &str) -> Option<String> {
    if !rate.allow() {
        signaling.metrics.sockets.refused_frame(ErrorCode::RateLimited);
        let error = FrameError::new(ErrorCode::RateLimited);
        return rate.should_warn().then(|| error_event(&signaling.next_event_id(), &error, None));
    }
    if text.len() > MAX_FRAME_BYTES {
        signaling.metrics.sockets.refused_frame(ErrorCode::FrameTooLarge);
        let error = FrameError::with_detail(
            ErrorCode::FrameTooLarge,
            format!("Frames are limited to {MAX_FRAME_BYTES} bytes."),
        );
        return Some(error_event(&signaling.next_event_id(), &error, None));
    }
    signaling.handle_text(context, text).await
}

/// Closes from our side (RFC 6455 §7.1.2): sends a Close frame, then reads until the peer's
/// answering Close or the end of the stream, so the peer learns `code` and the connection ends
/// cleanly. Both steps are bounded by [`CLOSE_REPLY_TIMEOUT`]: a peer that stopped reading or
/// never answers costs that long at most, not [`WRITE_TIMEOUT`].
pub async fn close_and_wait<S, K>(inbound: &mut S, outbound: &mut K, code: u16, reason: &'static str)
where
    S: Stream<Item = Inbound> + Unpin,
    K: Sink<Outbound> + Unpin,
{
    close_within(inbound, outbound, code, reason, CLOSE_REPLY_TIMEOUT).await;
}

/// [`close_and_wait`], giving the Close frame (and whatever is still buffered before it)
/// `send_timeout` to go out.
async fn close_within<S, K>(inbound: &mut S, outbound: &mut K, code: u16, reason: &'static str, send_timeout: Duration)
where
    S: Stream<Item = Inbound> + Unpin,
    K: Sink<Outbound> + Unpin,
{
    let sent = tokio::time::timeout(send_timeout, outbound.send(Outbound::Close(code, reason))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let answered = async {
        while let Some(frame) = inbound.next().await {
            if matches!(frame, Inbound::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, answered).await;
}

/// Events written with one flush at most: under load a socket's queue holds several, and one
/// write syscall for all of them costs far less than one each. With 32, relaying 50,000 frames
/// a second cost 6.2 µs of server CPU a frame and p99 latency at 160,000 frames a second was
/// 10.9 ms; with 256, 5.3 µs and 5.8 ms (docs/benchmarks.md).
const MAX_EVENTS_PER_FLUSH: usize = 256;

/// Writes `first` and whatever else is already queued (up to [`MAX_EVENTS_PER_FLUSH`]), then
/// flushes once. `false` as for [`write`].
async fn write_events<K: Sink<Outbound> + Unpin>(
    outbound: &mut K,
    slot: &SessionSlot,
    first: &str,
    events: &mut tokio::sync::mpsc::Receiver<Arc<str>>,
    replayed: &mut Replayed,
) -> bool {
    let batch = async {
        if !replayed.is_copy(first) {
            outbound.feed(Outbound::Text(first.to_owned())).await?;
        }
        for _ in 1..MAX_EVENTS_PER_FLUSH {
            let Ok(event) = events.try_recv() else { break };
            if !replayed.is_copy(&event) {
                outbound.feed(Outbound::Text(event.to_string())).await?;
            }
        }
        outbound.flush().await
    };
    tokio::select! {
        sent = tokio::time::timeout(WRITE_TIMEOUT, batch) => matches!(sent, Ok(Ok(()))),
        () = slot.kicked() => {
            slot.kick_again();
            false
        }
    }
}

/// Sends one message; `false` when the connection is gone, the peer stopped reading (the
/// write stalls past [`WRITE_TIMEOUT`]), or the router kicked the session meanwhile.
async fn write<K: Sink<Outbound> + Unpin>(outbound: &mut K, slot: &SessionSlot, message: Outbound) -> bool {
    tokio::select! {
        sent = tokio::time::timeout(WRITE_TIMEOUT, outbound.send(message)) => matches!(sent, Ok(Ok(()))),
        () = slot.kicked() => {
            slot.kick_again();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_sustained_rate() {
        let mut rate = RateLimit::new(FrameRate::default());
        let allowed = (0..1000).filter(|_| rate.allow()).count();
        // The burst, plus whatever refilled while counting (a few at most).
        assert!((200..210).contains(&allowed), "{allowed}");
        assert!(rate.should_warn());
        assert!(!rate.should_warn(), "one warning a second");
    }
}
