//! ACME challenges on their way to the data planes. They are not config: they have no version,
//! and a data plane answers them whichever snapshot it serves, even while it refuses the latest
//! one. One set, replaced whole: each change is a new generation, which every subscribed data
//! plane gets on its stream and answers with the generation it applied.

use std::sync::Arc;

use proto::v1 as pb;
use tokio::sync::watch;

/// The challenges being completed, and the generation that names this set.
#[derive(Debug, Default)]
pub struct ChallengeSet {
    pub generation: u64,
    pub challenges: Vec<Challenge>,
}

impl ChallengeSet {
    /// The message that delivers this set.
    pub fn message(&self) -> pb::ControlMessage {
        pb::ControlMessage {
            msg: Some(pb::control_message::Msg::AcmeChallenges(
                pb::AcmeChallenges {
                    generation: self.generation,
                    challenges: self.challenges.iter().map(Challenge::to_proto).collect(),
                },
            )),
        }
    }
}

/// The one set of challenges being completed; every Subscribe stream follows it.
#[derive(Debug)]
pub struct Challenges {
    set: watch::Sender<Arc<ChallengeSet>>,
}

impl Default for Challenges {
    fn default() -> Self {
        Challenges {
            set: watch::channel(Arc::default()).0,
        }
    }
}

impl Challenges {
    pub fn current(&self) -> Arc<ChallengeSet> {
        self.set.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ChallengeSet>> {
        self.set.subscribe()
    }

    /// Applies `change` to the set; when that changes it, the result is a new generation, sent
    /// to every data plane. Returns the generation that holds the change.
    pub fn change(&self, change: impl FnOnce(&mut Vec<Challenge>)) -> u64 {
        let mut generation = 0;
        self.set.send_if_modified(|set| {
            let mut challenges = set.challenges.clone();
            change(&mut challenges);
            generation = set.generation;
            if challenges == set.challenges {
                return false;
            }
            generation += 1;
            *set = Arc::new(ChallengeSet {
                generation,
                challenges,
            });
            true
        });
        generation
    }
}

/// A pending ACME challenge, as a data plane answers it. Its `Debug` leaves keys out.
#[derive(Clone, PartialEq, Eq)]
pub enum Challenge {
    Http01 {
        name: String,
        token: String,
        key_authorization: String,
    },
    TlsAlpn01 {
        name: String,
        certificate_pem: String,
        key_pem: String,
    },
}

impl Challenge {
    /// The DNS name being validated.
    pub fn name(&self) -> &str {
        match self {
            Challenge::Http01 { name, .. } | Challenge::TlsAlpn01 { name, .. } => name,
        }
    }

    pub fn to_proto(&self) -> pb::AcmeChallenge {
        match self {
            Challenge::Http01 {
                name,
                token,
                key_authorization,
            } => pb::AcmeChallenge {
                r#type: pb::AcmeChallengeType::Http01.into(),
                name: name.clone(),
                token: token.clone(),
                key_authorization: key_authorization.clone(),
                ..Default::default()
            },
            Challenge::TlsAlpn01 {
                name,
                certificate_pem,
                key_pem,
            } => pb::AcmeChallenge {
                r#type: pb::AcmeChallengeType::TlsAlpn01.into(),
                name: name.clone(),
                certificate_pem: certificate_pem.clone(),
                key_pem: key_pem.clone(),
                ..Default::default()
            },
        }
    }
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Challenge::Http01 { name, token, .. } => f
                .debug_struct("Http01")
                .field("name", name)
                .field("token", token)
                .finish_non_exhaustive(),
            Challenge::TlsAlpn01 { name, .. } => f
                .debug_struct("TlsAlpn01")
                .field("name", name)
                .finish_non_exhaustive(),
        }
    }
}
