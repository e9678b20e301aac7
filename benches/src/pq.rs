//! A ClientHello of post-quantum size: an `X25519MLKEM768` (0x11ec) key share of 1216 bytes
//! followed by a real X25519 share, as current browsers send it. The hello is then about 1.7 KB,
//! more than one TCP segment's worth on a 1500-byte MTU, which is what a proxy that peeks at the
//! SNI has to cope with.
//!
//! The ML-KEM-768 half of the hybrid share has the right size but is not a real encapsulation
//! key (the one crypto provider here, ring, has no ML-KEM), so the server must choose X25519 —
//! which the OpenSSL 3.0 upstream of the benchmark does, as it offers no ML-KEM either. A server
//! that picked the hybrid group would fail the handshake loudly, never silently.

use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup};

/// Length of an ML-KEM-768 encapsulation key.
const MLKEM768_EK_LEN: usize = 1184;

#[derive(Debug)]
pub struct X25519MlKem768SizedShare;

pub static GROUP: &dyn SupportedKxGroup = &X25519MlKem768SizedShare;

impl SupportedKxGroup for X25519MlKem768SizedShare {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let classical = rustls::crypto::ring::kx_group::X25519.start()?;
        // Filler with the look of key material, derived from the fresh X25519 key.
        let mut state = classical
            .pub_key()
            .iter()
            .fold(0x9e37_79b9_7f4a_7c15u64, |s, b| {
                (s ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            })
            | 1;
        let mut share = Vec::with_capacity(MLKEM768_EK_LEN + 32);
        while share.len() < MLKEM768_EK_LEN {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            share.extend_from_slice(&state.to_le_bytes());
        }
        share.truncate(MLKEM768_EK_LEN);
        share.extend_from_slice(classical.pub_key());
        Ok(Box::new(Active { classical, share }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

struct Active {
    classical: Box<dyn ActiveKeyExchange>,
    share: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, _peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        Err(Error::General(
            "the server chose X25519MLKEM768, whose ML-KEM half is only a size stand-in here"
                .into(),
        ))
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((NamedGroup::X25519, self.classical.pub_key()))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        peer_pub_key: &[u8],
    ) -> Result<SharedSecret, Error> {
        self.classical.complete(peer_pub_key)
    }
}
