//! The connections peers opened to this node, for `status` and `/metrics` (the pool holds
//! the ones this node dialled).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quinn::Connection;

/// The open incoming connections, by quinn's stable id.
#[derive(Debug, Clone, Default)]
pub struct HeldConnections(Arc<Mutex<HashMap<usize, Connection>>>);

/// One listed connection; dropping it takes it off the list.
#[derive(Debug)]
pub struct Held {
    list: HeldConnections,
    id: usize,
}

impl HeldConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Connection>> {
        // A poisoned lock means a panic elsewhere; the map itself is always consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists `conn` until the guard drops.
    pub fn hold(&self, conn: &Connection) -> Held {
        let id = conn.stable_id();
        self.lock().insert(id, conn.clone());
        Held {
            list: self.clone(),
            id,
        }
    }

    /// The listed connections now.
    pub fn list(&self) -> Vec<Connection> {
        self.lock().values().cloned().collect()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.list.lock().remove(&self.id);
    }
}
