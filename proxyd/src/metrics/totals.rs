//! Responses sent since the process started, every site together: what controld reads a
//! canary's 5xx ratio from. Counted on the request path, so striped: each thread adds to a
//! stripe of its own (its own cache line), and a read sums the stripes.

use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;

/// Stripes: more than the threads that usually serve, so that two rarely share one.
const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    responses: AtomicU64,
    responses_5xx: AtomicU64,
}

/// Responses and 5xx responses, summed over every site.
#[derive(Debug, Default)]
pub struct Totals {
    stripes: [Stripe; STRIPES],
}

impl Totals {
    /// Counts one response with `status`.
    pub fn count(&self, status: StatusCode) {
        let index = crate::stripes::thread_index() % STRIPES;
        if let Some(stripe) = self.stripes.get(index) {
            stripe.responses.fetch_add(1, Ordering::Relaxed);
            if status.is_server_error() {
                stripe.responses_5xx.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (responses, of them 5xx) so far.
    pub fn read(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(all, errors), s| {
            (
                all + s.responses.load(Ordering::Relaxed),
                errors + s.responses_5xx.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_s_responses_are_summed() {
        let totals = std::sync::Arc::new(Totals::default());
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let totals = totals.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        totals.count(if i % 4 == 0 {
                            StatusCode::BAD_GATEWAY
                        } else {
                            StatusCode::OK
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(totals.read(), (2000, 500));
    }
}
