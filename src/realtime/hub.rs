//! The in-process event hub: the registry of this process's realtime subscribers (WebSocket
//! connections) and the fan-out that routes each event to the ones whose
//! [`Subscription`] matches its routing keys.
//!
//! Two producers feed it: the gateway's Redis subscriber (one per `serve` instance) and, when
//! no Redis is configured (`itsur all` on one machine), the relay's in-process sink. Both
//! roles reach it through `app::Ctx`, so `http` and `outbox` never import each other; it
//! lives in `realtime` (not `kv`: there is no Redis in it) below both.
//!
//! Memory is bounded per subscriber: each has a queue of `queue` events; a subscriber whose
//! queue is full is dropped from the registry at once and its `overflowed` token fires, so
//! one slow client never grows the process (DESIGN.md, WebSocket protocol). The hub also
//! admits subscribers: at most `per_ip` per client address and `per_user` per user.
//!
//! L1: depends on `domain` (routing, subscriptions) and tokio; no Redis, no actix.

use bytestring::ByteString;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::event::{EventEnvelope, EventRouting, Subscription, Tenant};
use crate::domain::{CampusId, UserId, VendorId};

/// Gauge: open realtime connections of this process.
pub const ACTIVE_SOCKET_CONNECTIONS: &str = "active_socket_connections";

/// An event as the hub delivers it: the envelope and its WebSocket text frame, encoded
/// once by the first socket that sends it and shared by every other (the realtime bench had
/// JSON encoding per socket as the top user-space cost). Derefs to the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// The event.
    pub envelope: EventEnvelope,
    /// Its text frame, encoded lazily (not part of the event: derived from it).
    pub text_frame: FrameCache,
}

impl From<EventEnvelope> for LiveEvent {
    fn from(envelope: EventEnvelope) -> Self {
        Self {
            envelope,
            text_frame: FrameCache::default(),
        }
    }
}

impl std::ops::Deref for LiveEvent {
    type Target = EventEnvelope;

    fn deref(&self) -> &EventEnvelope {
        &self.envelope
    }
}

/// A lazily encoded frame, cheap to clone ([`ByteString`] is reference counted). Equality and
/// `Debug` ignore it: it only caches what the other fields determine.
#[derive(Clone, Default)]
pub struct FrameCache(std::sync::OnceLock<ByteString>);

impl FrameCache {
    /// The cached frame, encoding it with `encode` the first time.
    pub fn get_or_init(&self, encode: impl FnOnce() -> String) -> ByteString {
        self.0.get_or_init(|| ByteString::from(encode())).clone()
    }
}

impl PartialEq for FrameCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for FrameCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameCache")
    }
}

/// Admission and queue limits of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// Open subscribers per client address.
    pub per_ip: usize,
    /// Open subscribers per user.
    pub per_user: usize,
    /// Events queued per subscriber before it counts as too slow.
    pub queue: usize,
}

/// Who wants to subscribe.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// The events they receive; its user also counts against the per-user cap.
    pub subscription: Subscription,
    /// The client address (per-IP cap).
    pub ip: IpAddr,
}

/// Why a subscriber was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// `per_ip` subscribers are already open from this address.
    #[error("too many realtime connections from this address")]
    TooManyForIp,
    /// `per_user` subscribers are already open for this user.
    #[error("too many realtime connections for this user")]
    TooManyForUser,
    /// The process is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

struct Entry {
    subscription: Subscription,
    ip: IpAddr,
    tx: mpsc::Sender<Arc<LiveEvent>>,
    overflowed: CancellationToken,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    by_user: HashMap<UserId, Vec<u64>>,
    by_vendor: HashMap<VendorId, Vec<u64>>,
    by_campus: HashMap<CampusId, Vec<u64>>,
    everything: Vec<u64>,
    per_ip: HashMap<IpAddr, usize>,
    per_user: HashMap<UserId, usize>,
}

impl Registry {
    /// The index of the tenant part of a subscription (None for `Own`: the user index
    /// covers it).
    fn tenant_index(&mut self, tenant: Tenant) -> Option<&mut Vec<u64>> {
        match tenant {
            Tenant::Own => None,
            Tenant::Vendor(v) => Some(self.by_vendor.entry(v).or_default()),
            Tenant::Campus(c) => Some(self.by_campus.entry(c).or_default()),
            Tenant::All => Some(&mut self.everything),
        }
    }

    fn insert(&mut self, id: u64, entry: Entry) {
        let Subscription { user, tenant } = entry.subscription;
        self.by_user.entry(user).or_default().push(id);
        if let Some(index) = self.tenant_index(tenant) {
            index.push(id);
        }
        *self.per_ip.entry(entry.ip).or_default() += 1;
        *self.per_user.entry(user).or_default() += 1;
        self.entries.insert(id, entry);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        let Subscription { user, tenant } = entry.subscription;
        unindex(&mut self.by_user, user, id);
        match tenant {
            Tenant::Own => {}
            Tenant::Vendor(v) => unindex(&mut self.by_vendor, v, id),
            Tenant::Campus(c) => unindex(&mut self.by_campus, c, id),
            Tenant::All => self.everything.retain(|x| *x != id),
        }
        decrement(&mut self.per_ip, entry.ip);
        decrement(&mut self.per_user, user);
        true
    }

    /// Subscribers an event with `routing` reaches, each once (a subscriber can match both
    /// through its user and through its tenant).
    fn audience(&self, routing: &EventRouting) -> Vec<u64> {
        let mut out = self.everything.clone();
        if let Some(ids) = routing.user_id.and_then(|u| self.by_user.get(&u)) {
            out.extend_from_slice(ids);
        }
        if let Some(ids) = routing.vendor_id.and_then(|v| self.by_vendor.get(&v)) {
            out.extend_from_slice(ids);
        }
        if let Some(ids) = routing.campus_id.and_then(|c| self.by_campus.get(&c)) {
            out.extend_from_slice(ids);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn unindex<K: std::hash::Hash + Eq>(index: &mut HashMap<K, Vec<u64>>, key: K, id: u64) {
    if let Some(ids) = index.get_mut(&key) {
        ids.retain(|x| *x != id);
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

struct Shared {
    registry: Mutex<Registry>,
    limits: HubLimits,
    closing: CancellationToken,
    // Bumped when the feed may have lost events (Redis subscription re-established).
    gaps: watch::Sender<u64>,
}

impl Shared {
    // A panic while holding the lock leaves the maps consistent (every mutation is a few
    // infallible steps), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The process's event hub; cheap to clone (shared state).
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: HubLimits) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                limits,
                closing: CancellationToken::new(),
                gaps: watch::channel(0).0,
            }),
        }
    }

    /// The limits this hub enforces.
    pub fn limits(&self) -> HubLimits {
        self.shared.limits
    }

    /// Registers a subscriber, or refuses it when a cap is reached or the hub is closing.
    /// Events dispatched from now on are queued for it until it is dropped.
    pub fn subscribe(&self, who: Admission) -> Result<Subscriber, Rejected> {
        if self.shared.closing.is_cancelled() {
            return Err(Rejected::ShuttingDown);
        }
        let limits = self.shared.limits;
        let (tx, rx) = mpsc::channel(limits.queue.max(1));
        let overflowed = CancellationToken::new();
        let id = {
            let mut reg = self.shared.lock();
            if reg.per_ip.get(&who.ip).copied().unwrap_or(0) >= limits.per_ip {
                return Err(Rejected::TooManyForIp);
            }
            if reg
                .per_user
                .get(&who.subscription.user)
                .copied()
                .unwrap_or(0)
                >= limits.per_user
            {
                return Err(Rejected::TooManyForUser);
            }
            reg.next_id = reg.next_id.wrapping_add(1);
            let id = reg.next_id;
            reg.insert(
                id,
                Entry {
                    subscription: who.subscription,
                    ip: who.ip,
                    tx,
                    overflowed: overflowed.clone(),
                },
            );
            gauge(reg.entries.len());
            id
        };
        Ok(Subscriber {
            id,
            hub: self.shared.clone(),
            rx,
            overflowed,
            gaps: self.shared.gaps.subscribe(),
        })
    }

    /// Queues `event` for every subscriber it reaches; returns how many took it. A
    /// subscriber whose queue is full is removed and its `overflowed` token cancelled.
    pub fn dispatch(&self, event: Arc<LiveEvent>) -> usize {
        let mut reg = self.shared.lock();
        let mut delivered = 0;
        let mut slow = Vec::new();
        for id in reg.audience(&event.routing) {
            let Some(entry) = reg.entries.get(&id) else {
                continue;
            };
            match entry.tx.try_send(event.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(id),
                // The subscriber is being dropped; its Drop removes the entry.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        for id in slow {
            if let Some(entry) = reg.entries.get(&id) {
                entry.overflowed.cancel();
            }
            reg.remove(id);
        }
        gauge(reg.entries.len());
        delivered
    }

    /// Tells every subscriber that the feed may have lost events (the Redis subscription
    /// was down): each catches up from its own cursor.
    pub fn signal_gap(&self) {
        self.shared.gaps.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Open subscribers.
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// True when no subscriber is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts closing: new subscribers are refused and open ones see [`Self::closing`].
    pub fn close(&self) {
        self.shared.closing.cancel();
    }

    /// Fires when the process starts shutting down its realtime connections.
    pub fn closing(&self) -> CancellationToken {
        self.shared.closing.clone()
    }
}

fn gauge(open: usize) {
    // Precision loss above 2^53 connections is not a concern.
    #[expect(
        clippy::as_conversions,
        clippy::cast_precision_loss,
        reason = "a gauge of connections"
    )]
    metrics::gauge!(ACTIVE_SOCKET_CONNECTIONS).set(open as f64);
}

/// One registered subscriber: its event queue and the signals about it. Dropping it
/// unregisters it.
pub struct Subscriber {
    id: u64,
    hub: Arc<Shared>,
    rx: mpsc::Receiver<Arc<LiveEvent>>,
    overflowed: CancellationToken,
    gaps: watch::Receiver<u64>,
}

impl Subscriber {
    /// The next queued event; None once the subscriber was dropped from the hub.
    pub async fn recv(&mut self) -> Option<Arc<LiveEvent>> {
        self.rx.recv().await
    }

    /// A queued event, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Arc<LiveEvent>> {
        self.rx.try_recv().ok()
    }

    /// Fires when the queue overflowed and the hub dropped this subscriber.
    pub fn overflowed(&self) -> CancellationToken {
        self.overflowed.clone()
    }

    /// The hub's gap signal, as seen from now on.
    pub fn gap_signal(&self) -> GapSignal {
        GapSignal(self.gaps.clone())
    }
}

/// Resolves [`GapSignal::changed`] when the hub's feed may have lost events.
pub struct GapSignal(watch::Receiver<u64>);

impl GapSignal {
    /// Resolves at the next gap signal.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            // The hub is gone: never resolve again.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut reg = self.hub.lock();
        if reg.remove(self.id) {
            gauge(reg.entries.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use uuid::Uuid;

    fn sub(user: UserId, tenant: Tenant) -> Subscription {
        Subscription { user, tenant }
    }

    fn hub(queue: usize) -> Hub {
        Hub::new(HubLimits {
            per_ip: 2,
            per_user: 2,
            queue,
        })
    }

    fn event(id: i64, routing: EventRouting) -> Arc<LiveEvent> {
        Arc::new(LiveEvent::from(EventEnvelope {
            id,
            event: "order.created".to_owned(),
            aggregate_type: "order".to_owned(),
            aggregate_id: Uuid::now_v7(),
            version: 1,
            created_at: Utc::now(),
            data: serde_json::json!({}),
            routing,
        }))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn routes_by_subscription_and_caps_admission() {
        let hub = hub(8);
        let (student, vendor, campus) = (UserId::new(), VendorId::new(), CampusId::new());
        let mut s = hub
            .subscribe(Admission {
                subscription: sub(student, Tenant::Own),
                ip: ip(1),
            })
            .unwrap();
        let staff = UserId::new();
        let mut v = hub
            .subscribe(Admission {
                subscription: sub(staff, Tenant::Vendor(vendor)),
                ip: ip(1),
            })
            .unwrap();
        assert_eq!(
            hub.subscribe(Admission {
                subscription: sub(UserId::new(), Tenant::All),
                ip: ip(1),
            })
            .err(),
            Some(Rejected::TooManyForIp)
        );
        let _v2 = hub
            .subscribe(Admission {
                subscription: sub(staff, Tenant::Vendor(vendor)),
                ip: ip(2),
            })
            .unwrap();
        assert_eq!(
            hub.subscribe(Admission {
                subscription: sub(staff, Tenant::Vendor(vendor)),
                ip: ip(3),
            })
            .err(),
            Some(Rejected::TooManyForUser)
        );
        let mine = EventRouting {
            campus_id: Some(campus),
            vendor_id: Some(vendor),
            user_id: Some(student),
        };
        assert_eq!(hub.dispatch(event(1, mine)), 3);
        let other = EventRouting {
            campus_id: Some(campus),
            vendor_id: Some(VendorId::new()),
            user_id: Some(UserId::new()),
        };
        assert_eq!(hub.dispatch(event(2, other)), 0);
        assert_eq!(s.try_recv().map(|e| e.id), Some(1));
        assert_eq!(v.try_recv().map(|e| e.id), Some(1));
        assert!(s.try_recv().is_none());
        drop(s);
        assert_eq!(hub.len(), 2);
        // The freed slot of address 1 can be taken again.
        let _again = hub
            .subscribe(Admission {
                subscription: sub(UserId::new(), Tenant::Campus(campus)),
                ip: ip(1),
            })
            .unwrap();
    }

    #[tokio::test]
    async fn a_subscriber_matching_twice_gets_the_event_once() {
        let hub = hub(8);
        let (admin, campus) = (UserId::new(), CampusId::new());
        let mut s = hub
            .subscribe(Admission {
                subscription: sub(admin, Tenant::Campus(campus)),
                ip: ip(1),
            })
            .unwrap();
        // The admin's own report job on their own campus: matches by user and by campus.
        let routing = EventRouting {
            campus_id: Some(campus),
            vendor_id: None,
            user_id: Some(admin),
        };
        assert_eq!(hub.dispatch(event(1, routing)), 1);
        assert_eq!(s.try_recv().map(|e| e.id), Some(1));
        assert!(s.try_recv().is_none());
        // Addressed to the admin alone (no campus): still theirs.
        let own = EventRouting {
            user_id: Some(admin),
            ..EventRouting::default()
        };
        assert_eq!(hub.dispatch(event(2, own)), 1);
        drop(s);
        assert!(hub.is_empty());
        assert_eq!(hub.dispatch(event(3, own)), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_subscriber() {
        let hub = hub(2);
        let user = UserId::new();
        let sub = hub
            .subscribe(Admission {
                subscription: sub(user, Tenant::Own),
                ip: ip(1),
            })
            .unwrap();
        let routing = EventRouting {
            user_id: Some(user),
            ..EventRouting::default()
        };
        assert_eq!(hub.dispatch(event(1, routing)), 1);
        assert_eq!(hub.dispatch(event(2, routing)), 1);
        assert!(!sub.overflowed().is_cancelled());
        assert_eq!(hub.dispatch(event(3, routing)), 0);
        assert!(sub.overflowed().is_cancelled());
        assert_eq!(hub.len(), 0);
        assert_eq!(hub.dispatch(event(4, routing)), 0);
    }
}
