//! Something done at a steady interval for as long as a value lives: the heartbeat that keeps a remote holder
//! shell waiting, the pings that keep idle agents waiting (see `proc::heartbeat`, `transport::native`).

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};

/// Runs `tick` every `every` on a thread of its own, until `tick` returns false or this value drops (which
/// stops the thread at once and waits for it, so whatever `tick` owns is gone by then).
pub struct Periodic {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    pub fn start(every: Duration, mut tick: impl FnMut() -> bool + Send + 'static) -> Periodic {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if !tick() {
                    return;
                }
            }
        });
        Periodic { stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn ticks_until_dropped_or_told_to_stop() {
        let n = Arc::new(AtomicU32::new(0));
        let counted = n.clone();
        let p = Periodic::start(Duration::from_millis(5), move || counted.fetch_add(1, Ordering::Relaxed) < 2);
        std::thread::sleep(Duration::from_millis(100));
        drop(p);
        assert_eq!(n.load(Ordering::Relaxed), 3, "stops after the tick that returns false");
    }
}
