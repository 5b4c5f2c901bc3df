//! [`LocalRouter`]: delivers signals to the sessions connected to this process.
//!
//! Sessions register a [`SessionSlot`] under their user and, for chat sockets, their
//! conversation. Routing takes a read lock on the registry, never awaits, and hands each
//! recipient the same `Arc<str>` through its bounded queue.
//!
//! **When a queue is full** the recipient is not keeping up (a stalled phone, a frozen tab):
//! the event is dropped for that recipient *and* the session is kicked — closed with code 4409
//! `slow_consumer` — so its client reconnects and resynchronises (the REST API has the call's
//! state). Nobody else waits, and memory stays bounded at [`QUEUE_CAPACITY`] events per session.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use ringline_domain::{Audience, ConversationId, DeviceId, Signal, SignalRouter, UserId};
use tokio::sync::{Notify, mpsc};

/// Events queued per session before it counts as a slow consumer. A call produces a few dozen
/// events, but several peers may burst at one user at once (each socket may send a burst of
/// 200 frames) and a busy client may pause reading for tens of milliseconds: with 256, a
/// relay at 25,000 frames a second per socket closed sockets whose client was merely briefly
/// behind. tokio's queue allocates as it fills, so the bound costs an idle socket nothing; it
/// only caps what a stalled client can hold (about 1,024 small events).
pub const QUEUE_CAPACITY: usize = 1024;

/// Which socket a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// `ws/notifications/`: gets every event for its user.
    Notifications,
    /// `ws/chat/<id>/`: gets the conversation's typing indicators, and its user's events only
    /// while that user has no notification socket open.
    Chat(ConversationId),
}

/// The router's handle on one session.
#[derive(Debug)]
pub struct SessionSlot {
    pub device: DeviceId,
    pub user: UserId,
    pub kind: SessionKind,
    queue: mpsc::Sender<Arc<str>>,
    kicked: Notify,
    /// Set when the session is closed for a reason other than a full queue (the close code).
    dismissed: std::sync::atomic::AtomicU16,
    /// Set when its queue first overflowed (the warning is logged once).
    overflowed: std::sync::atomic::AtomicBool,
}

impl SessionSlot {
    /// Delivers `payload`, or kicks the session if its queue is full.
    fn deliver(&self, payload: &Arc<str>) {
        match self.queue.try_send(Arc::clone(payload)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Once per session: until it is closed every further event is dropped too, and a
                // line for each (hundreds a second under a burst) would flood the log.
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(device = %self.device, user = %self.user, "session is not reading its events: closing it");
                }
                self.kicked.notify_one();
            }
            // The session is ending; it unregisters itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes the session with `code` (it is no longer allowed where it is).
    pub fn dismiss(&self, code: u16) {
        self.dismissed.store(code, std::sync::atomic::Ordering::Relaxed);
        self.kicked.notify_one();
    }

    /// The close code the session was dismissed with, if it was (else a kick means its queue
    /// filled up).
    pub fn dismissed_with(&self) -> Option<u16> {
        Some(self.dismissed.load(std::sync::atomic::Ordering::Relaxed)).filter(|code| *code != 0)
    }

    /// Resolves when the router gave up on this session.
    pub async fn kicked(&self) {
        self.kicked.notified().await;
    }

    /// Re-arms the kick after a waiter consumed it without acting on it fully, so the next
    /// [`SessionSlot::kicked`] resolves at once.
    pub fn kick_again(&self) {
        self.kicked.notify_one();
    }

    /// Whether this session gets `signal`. `chat_fallback`: the signal's user has no
    /// notification socket open, so their chat sockets stand in (see [`Audience::User`]).
    fn wants(&self, signal: &Signal, chat_fallback: bool) -> bool {
        if signal.except_device == Some(self.device) {
            return false;
        }
        match (&signal.audience, self.kind) {
            (Audience::User(_), SessionKind::Notifications) => true,
            (Audience::User(_), SessionKind::Chat(_)) => chat_fallback,
            (Audience::Conversation(_), SessionKind::Chat(_)) => signal.except_user.as_ref() != Some(&self.user),
            (Audience::Conversation(_), SessionKind::Notifications) => false,
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_user: HashMap<UserId, Vec<Arc<SessionSlot>>>,
    by_conversation: HashMap<ConversationId, Vec<Arc<SessionSlot>>>,
}

/// A change in which users and conversations have sessions here, told to a
/// [`RegistryListener`] (a bus subscribes to what this process's sessions need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// The user's first session here opened.
    UserArrived(UserId),
    /// The user's last session here closed.
    UserLeft(UserId),
    /// The first chat socket on the conversation opened here.
    ConversationArrived(ConversationId),
    /// The last chat socket on the conversation closed here.
    ConversationLeft(ConversationId),
    /// The user now has (`true`) or no longer has (`false`) a notification socket here.
    NotificationSockets { user: UserId, present: bool },
    /// The user now has `count` sessions here (after every session opened or closed).
    Devices { user: UserId, count: usize },
}

/// Told of every [`RegistryChange`], in order, while the registry is locked: it must not
/// block (queue the work).
pub trait RegistryListener: Send + Sync + std::fmt::Debug {
    fn changed(&self, change: RegistryChange);
}

/// How many sessions (devices: tabs, phones) a user has open on every instance together, and
/// which instances are alive.
pub trait Presence: Send + Sync + std::fmt::Debug {
    fn devices<'a>(&'a self, user: &'a UserId) -> futures_util::future::BoxFuture<'a, usize>;

    /// Whether the instance with this id is running; `None` when it cannot be told.
    fn instance_alive(&self, instance: u64) -> futures_util::future::BoxFuture<'_, Option<bool>>;
}

/// An event of a user's stream with its `event_id`.
pub type IdentifiedEvent = (String, Arc<str>);

/// How the link to the other instances is doing, for readiness probes (a bus implements it).
pub trait BusStatus: Send + Sync + std::fmt::Debug {
    /// Whether the last operation on the link succeeded.
    fn connected(&self) -> bool;
}

/// Lets a new session wait until events for its user from every instance reach it (a bus
/// subscribes when the user's first session arrives), so that nothing falls between the
/// snapshot its `connection.ack` reads and the live events. The in-process router needs no
/// wait.
pub trait SubscriptionGate: Send + Sync + std::fmt::Debug {
    /// Whether every event of `user` has been reaching this instance since before the session
    /// that just registered: if not, the session's resume cannot be trusted (a `resync`).
    fn following(&self, user: &UserId) -> bool;

    /// The events of `user`'s stream after `resume` that a window shared by every instance
    /// holds, with their ids, oldest first; `None` when it cannot tell (a `resync`).
    fn missed<'a>(
        &'a self,
        user: &'a UserId,
        resume: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Option<Vec<IdentifiedEvent>>>;

    /// Resolves once events of `user` from every instance reach this one.
    fn subscribed<'a>(&'a self, user: &'a UserId) -> futures_util::future::BoxFuture<'a, ()>;
}

/// The in-process router.
#[derive(Debug)]
pub struct LocalRouter {
    registry: RwLock<Registry>,
    /// Picked at random when the router is made: the instance part of its sessions' device ids.
    instance: u64,
    next_device: AtomicU64,
    listener: OnceLock<Arc<dyn RegistryListener>>,
    /// The other instances that hold a notification socket of each user who has a session
    /// here (kept by a bus): while one does, this instance's chat sockets of that user do not
    /// stand in for it (see [`Audience::User`]).
    elsewhere: RwLock<HashMap<UserId, HashSet<u64>>>,
}

impl Default for LocalRouter {
    fn default() -> Self {
        Self {
            registry: RwLock::default(),
            instance: uuid::Uuid::new_v4().as_u64_pair().0,
            next_device: AtomicU64::new(0),
            listener: OnceLock::new(),
            elsewhere: RwLock::default(),
        }
    }
}

impl LocalRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The random id of this router's instance: every device id it hands out carries it.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Tells `listener` of every later change in which users and conversations have sessions
    /// here. One listener per router; a second is ignored (returns `false`).
    pub fn listen(&self, listener: Arc<dyn RegistryListener>) -> bool {
        self.listener.set(listener).is_ok()
    }

    /// Tells the listener, if there is one, of the change `change` builds (built only then:
    /// a single process pays nothing per connect).
    fn tell(&self, change: impl FnOnce() -> RegistryChange) {
        if let Some(listener) = self.listener.get() {
            listener.changed(change());
        }
    }

    /// Registers a new session and returns its slot and the receiving end of its queue.
    pub fn register(&self, user: UserId, kind: SessionKind) -> (Arc<SessionSlot>, mpsc::Receiver<Arc<str>>) {
        let (queue, events) = mpsc::channel(QUEUE_CAPACITY);
        let device = DeviceId::new(self.instance, self.next_device.fetch_add(1, Ordering::Relaxed) + 1);
        let slot = Arc::new(SessionSlot {
            device,
            user: user.clone(),
            kind,
            queue,
            kicked: Notify::new(),
            dismissed: std::sync::atomic::AtomicU16::new(0),
            overflowed: std::sync::atomic::AtomicBool::new(false),
        });
        let mut registry = self.write();
        let slots = registry.by_user.entry(user.clone()).or_default();
        let first = slots.is_empty();
        let first_notification =
            kind == SessionKind::Notifications && !slots.iter().any(|slot| slot.kind == SessionKind::Notifications);
        slots.push(Arc::clone(&slot));
        let count = slots.len();
        if first {
            self.tell(|| RegistryChange::UserArrived(user.clone()));
        }
        self.tell(|| RegistryChange::Devices { user: user.clone(), count });
        if first_notification {
            self.tell(|| RegistryChange::NotificationSockets { user, present: true });
        }
        if let SessionKind::Chat(conversation) = kind {
            let slots = registry.by_conversation.entry(conversation).or_default();
            slots.push(Arc::clone(&slot));
            if slots.len() == 1 {
                self.tell(|| RegistryChange::ConversationArrived(conversation));
            }
        }
        (slot, events)
    }

    /// Removes a session; its user's and conversation's lists shrink, and empty ones go.
    pub fn unregister(&self, slot: &SessionSlot) {
        let mut registry = self.write();
        if remove(&mut registry.by_user, &slot.user, slot.device) {
            let left = registry.by_user.get(&slot.user);
            self.tell(|| RegistryChange::Devices { user: slot.user.clone(), count: left.map_or(0, Vec::len) });
            if slot.kind == SessionKind::Notifications
                && !left.is_some_and(|slots| slots.iter().any(|other| other.kind == SessionKind::Notifications))
            {
                self.tell(|| RegistryChange::NotificationSockets { user: slot.user.clone(), present: false });
            }
            if left.is_none() {
                self.elsewhere.write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&slot.user);
                self.tell(|| RegistryChange::UserLeft(slot.user.clone()));
            }
        }
        if let SessionKind::Chat(conversation) = slot.kind
            && remove(&mut registry.by_conversation, &conversation, slot.device)
            && !registry.by_conversation.contains_key(&conversation)
        {
            self.tell(|| RegistryChange::ConversationLeft(conversation));
        }
    }

    /// Records whether `instance` (another one) holds a notification socket of `user`. Kept
    /// only while `user` has a session here; others are nobody's concern here.
    pub fn set_elsewhere(&self, user: &UserId, instance: u64, present: bool) {
        if instance == self.instance || (present && self.sessions_of(user) == 0) {
            return;
        }
        let mut elsewhere = self.elsewhere.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if present {
            elsewhere.entry(user.clone()).or_default().insert(instance);
        } else if let Some(instances) = elsewhere.get_mut(user) {
            instances.remove(&instance);
            if instances.is_empty() {
                elsewhere.remove(user);
            }
        }
    }

    /// Forgets every notification socket `instances` were said to hold (they stopped).
    pub fn forget_instances(&self, instances: &HashSet<u64>) {
        let mut elsewhere = self.elsewhere.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        elsewhere.retain(|_, held| {
            held.retain(|instance| !instances.contains(instance));
            !held.is_empty()
        });
    }

    /// The other instances this one believes hold notification sockets of its users.
    pub fn instances_elsewhere(&self) -> HashSet<u64> {
        let elsewhere = self.elsewhere.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        elsewhere.values().flatten().copied().collect()
    }

    fn has_notification_socket_elsewhere(&self, user: &UserId) -> bool {
        self.elsewhere.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(user)
    }

    /// The users with a session here, and whether each has a notification socket here.
    pub fn users(&self) -> Vec<(UserId, bool)> {
        self.read()
            .by_user
            .iter()
            .map(|(user, slots)| (user.clone(), slots.iter().any(|slot| slot.kind == SessionKind::Notifications)))
            .collect()
    }

    /// The conversations with a chat socket here.
    pub fn conversations(&self) -> Vec<ConversationId> {
        self.read().by_conversation.keys().copied().collect()
    }

    /// How many sessions `user` has open (all kinds).
    pub fn sessions_of(&self, user: &UserId) -> usize {
        self.read().by_user.get(user).map_or(0, Vec::len)
    }

    /// Closes `user`'s chat sockets on `conversation` here with `code`; returns how many.
    pub fn dismiss_chat_sockets(&self, user: &UserId, conversation: ConversationId, code: u16) -> usize {
        let registry = self.read();
        let slots = registry.by_user.get(user).map(Vec::as_slice).unwrap_or_default();
        let mut dismissed = 0;
        for slot in slots.iter().filter(|slot| slot.kind == SessionKind::Chat(conversation)) {
            slot.dismiss(code);
            dismissed += 1;
        }
        dismissed
    }

    /// Dismisses every session of `user` here with `code`. Returns how many.
    pub fn dismiss_sessions_of(&self, user: &UserId, code: u16) -> usize {
        let registry = self.read();
        let slots = registry.by_user.get(user).map(Vec::as_slice).unwrap_or_default();
        for slot in slots {
            slot.dismiss(code);
        }
        slots.len()
    }

    /// Whether `user`'s session `device` is still open here.
    pub fn is_connected(&self, user: &UserId, device: DeviceId) -> bool {
        self.read().by_user.get(user).is_some_and(|slots| slots.iter().any(|slot| slot.device == device))
    }

    /// Whether `user` has a notification socket open here (else their chat sockets stand in).
    pub fn has_notification_socket(&self, user: &UserId) -> bool {
        self.read()
            .by_user
            .get(user)
            .is_some_and(|slots| slots.iter().any(|slot| slot.kind == SessionKind::Notifications))
    }

    /// How many sessions are open in all.
    pub fn session_count(&self) -> usize {
        self.read().by_user.values().map(Vec::len).sum()
    }

    // A poisoned lock means a panic while holding it; the registry is still a valid map (every
    // mutation is a single push or retain), so keep serving rather than fail every call.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes `device` from `key`'s list (and an emptied list); returns whether it was there.
fn remove<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<Arc<SessionSlot>>>, key: &K, device: DeviceId) -> bool {
    let Some(slots) = map.get_mut(key) else { return false };
    let before = slots.len();
    slots.retain(|slot| slot.device != device);
    let removed = slots.len() < before;
    if slots.is_empty() {
        map.remove(key);
    }
    removed
}

impl SignalRouter for LocalRouter {
    fn participant_removed(&self, conversation: ConversationId, user: &UserId) {
        let closed = self.dismiss_chat_sockets(user, conversation, crate::protocol::close::NOT_A_PARTICIPANT);
        if closed > 0 {
            tracing::info!(%user, %conversation, closed, "closed the chat sockets of a removed participant");
        }
    }

    fn account_changed(&self, user: &UserId, status: ringline_domain::AccountStatus) {
        if !status.is_refused() {
            return;
        }
        let closed = self.dismiss_sessions_of(user, crate::protocol::close::NOT_AUTHENTICATED);
        if closed > 0 {
            tracing::info!(%user, closed, "closed the sockets of a removed or deactivated user");
        }
    }

    fn route(&self, signal: Signal) {
        let registry = self.read();
        let slots = match &signal.audience {
            Audience::User(user) => registry.by_user.get(user),
            Audience::Conversation(conversation) => registry.by_conversation.get(conversation),
        };
        let slots = slots.map_or(&[][..], Vec::as_slice);
        // Counted before `except_device` applies: a user answering on their notification socket
        // has one, so the chat socket of that same tab must not get the event instead. A
        // notification socket on another instance counts too: it gets the event there.
        let chat_fallback = !slots.iter().any(|slot| slot.kind == SessionKind::Notifications)
            && !matches!(&signal.audience, Audience::User(user) if self.has_notification_socket_elsewhere(user));
        for slot in slots {
            if slot.wants(&signal, chat_fallback) {
                slot.deliver(&signal.payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("valid")
    }

    fn signal(audience: Audience, payload: &str) -> Signal {
        Signal { audience, except_device: None, except_user: None, payload: Arc::from(payload) }
    }

    #[test]
    fn device_ids_are_unique_across_instances() {
        let (first, second) = (LocalRouter::new(), LocalRouter::new());
        assert_ne!(first.instance(), second.instance(), "each instance picks its own id");
        let (a, _a) = first.register(user("bob"), SessionKind::Notifications);
        let (b, _b) = second.register(user("bob"), SessionKind::Notifications);
        let (c, _c) = first.register(user("bob"), SessionKind::Notifications);
        assert_eq!(a.device.serial(), b.device.serial(), "both instances number their devices from 1");
        assert_ne!(a.device, b.device);
        assert_ne!(a.device, c.device);
        assert_eq!((a.device.instance(), c.device.instance()), (first.instance(), first.instance()));
    }

    #[test]
    fn user_events_take_the_notification_sockets_and_never_the_chat_sockets_beside_them() {
        let router = LocalRouter::new();
        let seven = ConversationId::new(7).expect("id");
        let (_n, mut notifications) = router.register(user("bob"), SessionKind::Notifications);
        let (_c7, mut chat_seven) = router.register(user("bob"), SessionKind::Chat(seven));
        let (_a, mut alice) = router.register(user("alice"), SessionKind::Chat(seven));

        router.route(signal(Audience::User(user("bob")), "e1"));
        assert_eq!(notifications.try_recv().as_deref().ok(), Some("e1"));
        assert!(chat_seven.try_recv().is_err(), "one copy per tab: the chat socket beside it gets none");
        assert!(alice.try_recv().is_err(), "other users get nothing");
    }

    #[test]
    fn chat_sockets_stand_in_while_the_user_has_no_notification_socket() {
        let router = LocalRouter::new();
        let seven = ConversationId::new(7).expect("id");
        let eight = ConversationId::new(8).expect("id");
        let (_c7, mut chat_seven) = router.register(user("bob"), SessionKind::Chat(seven));
        let (_c8, mut chat_eight) = router.register(user("bob"), SessionKind::Chat(eight));
        router.route(signal(Audience::User(user("bob")), "e1"));
        assert_eq!(chat_seven.try_recv().as_deref().ok(), Some("e1"));
        assert_eq!(chat_eight.try_recv().as_deref().ok(), Some("e1"));

        let (notification, mut notifications) = router.register(user("bob"), SessionKind::Notifications);
        let mut except_origin = signal(Audience::User(user("bob")), "e2");
        except_origin.except_device = Some(notification.device);
        router.route(except_origin);
        assert!(notifications.try_recv().is_err(), "the origin is skipped");
        assert!(chat_seven.try_recv().is_err(), "an open notification socket, even the origin, ends the fallback");
    }

    #[test]
    fn conversation_events_skip_the_sender_and_notification_sockets() {
        let router = LocalRouter::new();
        let seven = ConversationId::new(7).expect("id");
        let (_a, mut alice) = router.register(user("alice"), SessionKind::Chat(seven));
        let (_b, mut bob) = router.register(user("bob"), SessionKind::Chat(seven));
        let (_n, mut bob_notifications) = router.register(user("bob"), SessionKind::Notifications);
        let mut typing = signal(Audience::Conversation(seven), "typing");
        typing.except_user = Some(user("alice"));
        router.route(typing);
        assert!(alice.try_recv().is_err());
        assert_eq!(bob.try_recv().as_deref().ok(), Some("typing"));
        assert!(bob_notifications.try_recv().is_err());
    }

    #[test]
    fn the_originating_device_is_skipped() {
        let router = LocalRouter::new();
        let (phone, mut phone_events) = router.register(user("bob"), SessionKind::Notifications);
        let (_laptop, mut laptop_events) = router.register(user("bob"), SessionKind::Notifications);
        let mut accepted = signal(Audience::User(user("bob")), "accepted");
        accepted.except_device = Some(phone.device);
        router.route(accepted);
        assert!(phone_events.try_recv().is_err());
        assert_eq!(laptop_events.try_recv().as_deref().ok(), Some("accepted"));
    }

    #[tokio::test]
    async fn a_full_queue_kicks_the_session_and_spares_the_others() {
        let router = LocalRouter::new();
        let (slow, _never_read) = router.register(user("bob"), SessionKind::Notifications);
        let (_fast, mut fast_events) = router.register(user("bob"), SessionKind::Notifications);
        for i in 0..=QUEUE_CAPACITY {
            router.route(signal(Audience::User(user("bob")), &format!("e{i}")));
            assert!(fast_events.try_recv().is_ok(), "the reading session gets event {i}");
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), slow.kicked())
            .await
            .expect("the slow session is kicked");
    }

    /// The log line when a session's queue overflows, in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Hundreds of events dropped for a session that stopped reading make one warning, not one
    /// each (a burst once logged 344).
    #[test]
    fn an_overflowing_session_is_warned_about_once() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || {
            let router = LocalRouter::new();
            let (_slot, _events) = router.register(user("bob"), SessionKind::Notifications);
            for i in 0..QUEUE_CAPACITY + 500 {
                router.route(signal(Audience::User(user("bob")), &format!("e{i}")));
            }
        });
        let log = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("UTF-8");
        assert_eq!(log.matches("session is not reading its events").count(), 1, "{log}");
    }

    #[tokio::test]
    async fn five_peers_bursting_at_one_user_do_not_kick_a_briefly_busy_session() {
        let router = LocalRouter::new();
        let (busy, mut events) = router.register(user("bob"), SessionKind::Notifications);
        // Five sockets each sending a whole default burst before bob's session reads again.
        let burst = crate::settings::FrameRate::default().burst as usize;
        for i in 0..5 * burst {
            router.route(signal(Audience::User(user("bob")), &format!("e{i}")));
        }
        let kicked = tokio::time::timeout(std::time::Duration::from_millis(100), busy.kicked()).await;
        assert!(kicked.is_err(), "a session 1,000 events behind is not a slow consumer yet");
        assert_eq!(events.recv().await.as_deref(), Some("e0"), "and nothing was dropped");
    }

    #[test]
    fn unregistering_forgets_the_session() {
        let router = LocalRouter::new();
        let seven = ConversationId::new(7).expect("id");
        let (slot, _events) = router.register(user("bob"), SessionKind::Chat(seven));
        assert_eq!(router.sessions_of(&user("bob")), 1);
        router.unregister(&slot);
        assert_eq!(router.session_count(), 0);
        assert!(router.read().by_conversation.is_empty());
    }
}
