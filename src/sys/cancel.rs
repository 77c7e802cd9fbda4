//! One shared "stop now, and here is why" for every thread of a clone.
//!
//! Any thread may cancel: the signal handler, the WAL stream when the primary drops it, a copy worker.
//! Every wait in the clone selects on `Cancel::receiver`, so a failure anywhere ends the run at once
//! instead of at the next phase boundary.

use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Cancelled;

#[derive(Clone)]
pub struct Cancel {
    inner: Arc<Inner>,
}

struct Inner {
    /// First reason wins: later ones are consequences of it.
    reason: Mutex<Option<String>>,
    /// Dropped on cancel: a disconnected channel wakes every receiver, now and later.
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

impl Default for Cancel {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(0);
        Cancel { inner: Arc::new(Inner { reason: Mutex::new(None), sender: Mutex::new(Some(tx)), receiver: rx }) }
    }
}

impl Cancel {
    pub fn cancel(&self, reason: impl Into<String>) {
        let mut r = self.inner.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason.into());
        }
        drop(r);
        self.inner.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn reason(&self) -> Option<String> {
        self.inner.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `Err` with the first reason once cancelled: the check between steps of a phase.
    pub fn check(&self) -> Result<(), Cancelled> {
        self.reason().map_or(Ok(()), |r| Err(Cancelled(r)))
    }

    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Becomes ready (disconnected) once cancelled; use in `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.inner.receiver
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_reason_wins_and_every_waiter_wakes() {
        let c = Cancel::default();
        assert!(c.receiver().recv_timeout(Duration::from_millis(10)).is_err());
        assert!(!c.is_cancelled());
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || c2.receiver().recv().is_err());
        c.cancel("WAL stream failed");
        c.cancel("later");
        assert!(waiter.join().unwrap());
        assert_eq!(c.reason().as_deref(), Some("WAL stream failed"));
        assert!(c.receiver().recv().is_err(), "stays ready after the first wake");
    }
}
