//! The threads that serve traffic besides the main one: one tokio current-thread runtime each,
//! as nginx runs one single-threaded event loop per worker process. Every runtime accepts from
//! the same listening sockets (each registers a duplicate of the socket with its own epoll), and
//! a connection lives on the runtime that accepted it, with everything it spawns: no task moves
//! between threads, and no thread wakes another to hand it work (tokio's multi-thread scheduler
//! did both, which `docs/benchmarks.md` measures).
//!
//! The main thread's runtime serves too, and runs the control client, the admin listeners and
//! the timers of the whole process. A runtime busy with its connections is slower to come back
//! to `accept`, so new connections go mostly to the idle ones.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// Serving threads in all, the main one included.
static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's place among the serving threads: the main thread (and any thread that is
    /// not a serving one) 0, the others 1, 2...
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// How many threads serve, the main one included: what per-thread state (an upstream's
/// connection pool) has a part for each of.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// This thread's place among the serving threads, below [`count`].
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// Makes this thread serving thread `index`, for tests of per-thread state.
#[cfg(test)]
pub fn enter(index: usize) {
    CURRENT.with(|current| current.set(index));
}

/// The serving threads started besides the main one; stopped (and joined) by [`Shards::stop`].
#[derive(Debug, Default)]
pub struct Shards {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Shards {
    /// Starts `count` threads, each with a current-thread runtime that runs until
    /// [`Shards::stop`].
    pub fn start(count: usize) -> std::io::Result<Shards> {
        let mut shards = Shards::default();
        COUNT.store(count + 1, Ordering::Relaxed);
        for i in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            shards.handles.push(runtime.handle().clone());
            runtime.spawn(crate::memory::give_back_freed_pages());
            let stop = shards.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("proxyd-worker-{i}"))
                .spawn(move || {
                    CURRENT.with(|current| current.set(i));
                    runtime.block_on(stop.cancelled());
                });
            match thread {
                Ok(thread) => shards.threads.push(thread),
                Err(e) => {
                    shards.stop();
                    return Err(e);
                }
            }
        }
        Ok(shards)
    }

    /// The runtimes of the threads, to spawn accept loops on.
    pub fn handles(&self) -> Vec<Handle> {
        self.handles.clone()
    }

    /// Stops the threads: whatever still runs on them is dropped (the data plane has drained by
    /// then).
    pub fn stop(mut self) {
        self.stop.cancel();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Shards {
    /// Stopped without waiting for the threads.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_runs_tasks_on_a_thread_of_its_own_until_stopped() {
        let shards = Shards::start(2).unwrap();
        let names: Vec<String> = shards
            .handles()
            .iter()
            .map(|handle| {
                let (tx, rx) = std::sync::mpsc::channel();
                handle.spawn(async move {
                    let name = std::thread::current().name().map(str::to_owned);
                    tx.send(name.unwrap_or_default()).unwrap();
                });
                rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()
            })
            .collect();
        assert_eq!(names, ["proxyd-worker-1", "proxyd-worker-2"]);
        shards.stop();
    }
}
