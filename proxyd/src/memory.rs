//! Memory a burst freed, given back to the system once the threads go quiet.
//!
//! mimalloc returns the pages a thread freed to the system after a delay (1 s), but the delay
//! is an age checked when the allocator next frees a page, not a timer: a thread that goes
//! quiet after a burst (10,000 clients that connected, asked once and now wait, their buffers
//! freed when they parked) keeps every page those buffers used until it next frees one.
//! Once a second, each serving thread allocates and frees one block larger than any size
//! class, which is a page of its own: freeing it is where mimalloc purges the pages that have
//! aged. Under the system allocator (tests) it costs an allocation a second.

use std::time::Duration;

/// Larger than mimalloc's largest size class (512 KiB): a page of its own. Never written, so
/// never resident.
const PROBE_BYTES: usize = 1 << 20;

const EVERY: Duration = Duration::from_secs(1);

/// Runs on a serving thread's runtime until the runtime ends.
pub async fn give_back_freed_pages() {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        drop(std::hint::black_box(Vec::<u8>::with_capacity(PROBE_BYTES)));
    }
}
