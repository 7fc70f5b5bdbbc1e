//! State that every request touches, kept per thread: each thread works on a stripe of its own,
//! on cache lines of its own, so that worker threads on different cores neither take turns on one
//! lock nor pass one cache line back and forth (`bench/contention` measures what it saves).

use std::sync::atomic::{AtomicUsize, Ordering};

/// This thread's number: threads take them in turn as they first ask. Striped state takes it
/// modulo its stripe count, so that threads share a stripe only when there are more of them.
pub fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

/// A `T` per stripe.
#[derive(Debug)]
pub struct Striped<T> {
    stripes: Box<[Padded<T>]>,
}

/// Aligned so that no two stripes share a cache line (or the adjacent line the prefetcher pulls
/// along).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Striped<T> {
    /// `count` stripes (at least one).
    pub fn new(count: usize) -> Striped<T> {
        Striped {
            stripes: (0..count.max(1)).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// This thread's stripe.
    pub fn mine(&self) -> &T {
        let index = thread_index() % self.stripes.len();
        // In range: the index is taken modulo the length, which is at least one.
        &self.stripes[index].0
    }

    /// Stripe `index` (modulo their number).
    pub fn get(&self, index: usize) -> &T {
        // In range: the index is taken modulo the length, which is at least one.
        &self.stripes[index % self.stripes.len()].0
    }

    /// Every stripe.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|padded| &padded.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_thread_keeps_its_stripe() {
        let striped: Striped<AtomicU64> = Striped::new(4);
        striped.mine().fetch_add(1, Ordering::Relaxed);
        striped.mine().fetch_add(1, Ordering::Relaxed);
        assert_eq!(striped.mine().load(Ordering::Relaxed), 2);
        assert_eq!(striped.get(thread_index()).load(Ordering::Relaxed), 2);
        assert_eq!(striped.iter().count(), 4);
        let mine = thread_index();
        let (theirs, added_to) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    striped.mine().fetch_add(10, Ordering::Relaxed);
                    let index = striped.iter().position(|s| std::ptr::eq(s, striped.mine()));
                    (thread_index(), index)
                })
                .join()
                .unwrap()
        });
        assert_ne!(mine, theirs, "every thread has a number of its own");
        assert_eq!(added_to, Some(theirs % 4));
        let sum: u64 = striped.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        assert_eq!(sum, 12);
    }

    #[test]
    fn zero_stripes_means_one() {
        let striped: Striped<AtomicU64> = Striped::new(0);
        assert_eq!(striped.iter().count(), 1);
        striped.mine().fetch_add(1, Ordering::Relaxed);
    }
}
