//! The admin server's open connections and which of them are idle (no request in
//! progress: not yet sent, or between two on a kept-alive connection). At the
//! connection limit the one idle the longest is closed to make room for a new one, so
//! idle clients cannot lock every other client out until their header timeout.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use tokio::sync::oneshot;

#[derive(Default)]
pub(super) struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    open: BTreeMap<u64, Conn>,
}

struct Conn {
    /// Requests in progress on it.
    requests: usize,
    idle_since: Instant,
    /// Fired to close it; taken once fired.
    close: Option<oneshot::Sender<()>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("admin connections lock poisoned")
    }

    /// Registers a new connection: its entry (removed when dropped) and what fires
    /// when it is to be closed.
    pub(super) fn open(self: &Arc<Self>) -> (Tracked, oneshot::Receiver<()>) {
        let (close, closed) = oneshot::channel();
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(
            id,
            Conn {
                requests: 0,
                idle_since: Instant::now(),
                close: Some(close),
            },
        );
        let tracked = Tracked {
            connections: self.clone(),
            id,
        };
        (tracked, closed)
    }

    /// Closes the connection idle the longest; false when every open one has a
    /// request in progress (or is closing already).
    pub(super) fn close_idlest(&self) -> bool {
        let mut inner = self.lock();
        let idlest = inner
            .open
            .values_mut()
            .filter(|c| c.requests == 0 && c.close.is_some())
            .min_by_key(|c| c.idle_since);
        match idlest.and_then(|c| c.close.take()) {
            Some(close) => close.send(()).is_ok(),
            None => false,
        }
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut Conn)) {
        if let Some(conn) = self.lock().open.get_mut(&id) {
            change(conn);
        }
    }
}

/// One open connection's entry; removed when dropped.
pub(super) struct Tracked {
    connections: Arc<Connections>,
    id: u64,
}

impl Tracked {
    /// Marks a request in progress until the guard is dropped.
    pub(super) fn request(&self) -> Request {
        self.connections.update(self.id, |c| c.requests += 1);
        Request {
            connections: self.connections.clone(),
            id: self.id,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.connections.lock().open.remove(&self.id);
    }
}

/// A request in progress on a connection (see [`Tracked::request`]).
pub(super) struct Request {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Request {
    fn drop(&mut self) {
        self.connections.update(self.id, |c| {
            c.requests -= 1;
            c.idle_since = Instant::now();
        });
    }
}
