//! One listener's connections spread over the serving threads ([`crate::Shards`]). Every thread
//! accepts from the same socket, and whichever wakes first would take a whole burst of new
//! connections (measured: all 32 of a burst on one thread in two runs of three): so each
//! connection goes to the accept loop that was given the fewest, the accepting one on a tie,
//! and an accept loop hands a connection it should not keep to another one's inbox, socket and
//! all. The other loop registers the socket with its own runtime and serves it as its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{Permit, Settings};

/// A connection accepted by one loop for another: the socket (taken out of the accepting
/// runtime's epoll), its peer, and its place under the connection caps.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub permit: Permit,
}

/// How many connections each of a listener's accept loops was given, and their inboxes.
pub struct Spread {
    given: Box<[Counter]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
}

/// On a cache line of its own: each loop counts on its own line mostly.
#[derive(Default)]
#[repr(align(128))]
struct Counter(AtomicUsize);

/// One accept loop's place among a listener's loops.
pub struct Place {
    pub spread: Arc<Spread>,
    pub me: usize,
    pub inbox: mpsc::UnboundedReceiver<Handoff>,
}

impl Spread {
    /// The places of `loops` accept loops of one listener (at least one).
    pub fn places(loops: usize) -> Vec<Place> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..loops.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Arc::new(Spread {
            given: (0..senders.len()).map(|_| Counter::default()).collect(),
            inboxes: senders.into(),
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| Place {
                spread: spread.clone(),
                me,
                inbox,
            })
            .collect()
    }

    /// The loop that takes the next connection accepted by `me`, counted as given to it: the
    /// one given the fewest, `me` on a tie.
    pub fn pick(&self, me: usize) -> usize {
        let count = |i: usize| {
            self.given
                .get(i)
                .map_or(usize::MAX, |c| c.0.load(Ordering::Relaxed))
        };
        let mut best = me;
        for i in 0..self.given.len() {
            if count(i) < count(best) {
                best = i;
            }
        }
        self.take(best);
        best
    }

    /// Hands `handoff` to loop `to`; back when that loop has stopped.
    pub fn send(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        match self.inboxes.get(to) {
            Some(inbox) => inbox.send(handoff).map_err(|e| e.0),
            None => Err(handoff),
        }
    }

    /// Counts a connection as given to loop `at`.
    pub fn take(&self, at: usize) {
        if let Some(c) = self.given.get(at) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection given to loop `at` ended (or went elsewhere).
    pub fn done(&self, at: usize) {
        if let Some(c) = self.given.get(at) {
            c.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Serves a connection another accept loop handed to this one (already counted on it), once
/// its socket is registered with this runtime.
pub fn adopt(
    handoff: Handoff,
    name: &str,
    spread: &Spread,
    me: usize,
    settings: &ArcSwap<Settings>,
    serve: &impl Fn(TcpStream, SocketAddr, Permit, Arc<Settings>),
) {
    let Handoff {
        stream,
        peer,
        permit,
    } = handoff;
    match TcpStream::from_std(stream) {
        Ok(stream) => serve(stream, peer, permit, settings.load_full()),
        Err(e) => {
            spread.done(me);
            tracing::warn!(listener = %name, client = %peer, error = %e, "cannot take a connection from another serving thread; closed");
        }
    }
}

/// Keeps a connection counted on the loop serving it.
pub struct Given {
    spread: Arc<Spread>,
    at: usize,
}

impl Given {
    /// For a connection already counted on `at` ([`Spread::pick`]).
    pub fn new(spread: Arc<Spread>, at: usize) -> Given {
        Given { spread, at }
    }
}

impl Drop for Given {
    fn drop(&mut self) {
        self.spread.done(self.at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_alternates_between_two_loops_and_ended_connections_count_no_more() {
        let places = Spread::places(2);
        let spread = &places[0].spread;
        // Loop 0 accepts every connection of a burst: they go to 0, 1, 0, 1...
        let picks: Vec<usize> = (0..6).map(|_| spread.pick(0)).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
        // Two of loop 1's end: the next two go there.
        drop(Given::new(spread.clone(), 1));
        drop(Given::new(spread.clone(), 1));
        assert_eq!([spread.pick(0), spread.pick(0)], [1, 1]);
        // Loop 1 accepts on a tie and keeps it.
        assert_eq!(spread.pick(1), 1);
    }

    #[test]
    fn one_loop_keeps_everything() {
        let places = Spread::places(1);
        assert_eq!(places.len(), 1);
        assert_eq!(
            (0..3).map(|_| places[0].spread.pick(0)).collect::<Vec<_>>(),
            [0, 0, 0]
        );
    }
}
