//! Pseudonymization of participants (DESIGN §6): external addresses are stored only as keyed hashes
//! (HMAC-SHA256 with the enrichment's pseudonymization key, truncated to 16 bytes); internal people by
//! their Entra object id (16 GUID bytes). Contacts are hashed the same way at scoring time, so matching
//! never needs a clear-text address.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// A fixed 16-byte identifier: a truncated keyed hash, or the bytes of a GUID.
pub type Id16 = [u8; 16];

/// HMAC-SHA256 block size: keys are normalised to one block as RFC 2104 prescribes.
const BLOCK: usize = 64;

/// Keyed hashing of addresses and Graph identifiers. Cheap to clone; `Debug` never prints the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl Pseudonymizer {
    /// Builds the hasher from the raw key bytes (any length, as HMAC allows).
    pub fn new(key: &[u8]) -> Self {
        // RFC 2104: a key longer than the block is first hashed; the key is then zero-padded to the block.
        // Doing that here makes construction infallible and yields exactly standard HMAC-SHA256.
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            let digest = Sha256::digest(key);
            block[..digest.len()].copy_from_slice(&digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        Self { mac }
    }

    /// First 16 bytes of HMAC-SHA256(key, trimmed lower-cased address).
    pub fn hash_address(&self, address: &str) -> Id16 {
        let normalised = address.trim().to_lowercase();
        self.hash_bytes(normalised.as_bytes())
    }

    /// First 16 bytes of HMAC-SHA256(key, value), without normalisation (internetMessageId, iCalUId,
    /// conversationId, event ids are case-sensitive opaque strings).
    pub fn hash_value(&self, value: &str) -> Id16 {
        self.hash_bytes(value.as_bytes())
    }

    fn hash_bytes(&self, bytes: &[u8]) -> Id16 {
        let mut mac = self.mac.clone();
        mac.update(bytes);
        let out = mac.finalize().into_bytes();
        let mut id = [0u8; 16];
        id.copy_from_slice(&out[..16]);
        id
    }
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Parses an Entra object id (a GUID, any of the usual textual forms) into its 16 bytes
/// (RFC 4122 byte order, as `uuid` prints it). `None` when it is not a GUID.
pub fn guid_bytes(object_id: &str) -> Option<Id16> {
    uuid::Uuid::parse_str(object_id.trim())
        .ok()
        .map(|u| *u.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonymizer::new(b"Jefe");
        let full = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(
            hex::encode(p.hash_value("what do ya want for nothing?")),
            &full[..32]
        );
    }

    #[test]
    fn long_keys_are_hashed_first_like_hmac() {
        // RFC 4231 test case 6: 131-byte key of 0xaa.
        let key = [0xaau8; 131];
        let p = Pseudonymizer::new(&key);
        let full = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
        assert_eq!(
            hex::encode(p.hash_value("Test Using Larger Than Block-Size Key - Hash Key First")),
            &full[..32]
        );
    }

    #[test]
    fn addresses_are_normalised_values_are_not() {
        let p = Pseudonymizer::new(b"k");
        assert_eq!(
            p.hash_address("  Bob@Fabrikam.COM "),
            p.hash_address("bob@fabrikam.com")
        );
        assert_eq!(
            p.hash_address("bob@fabrikam.com"),
            p.hash_value("bob@fabrikam.com")
        );
        assert_ne!(p.hash_value("AbC"), p.hash_value("abc"));
        assert_ne!(
            Pseudonymizer::new(b"k1").hash_value("x"),
            Pseudonymizer::new(b"k2").hash_value("x")
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let p = Pseudonymizer::new(b"super-secret-key");
        let s = format!("{p:?}");
        assert!(!s.contains("super-secret"));
        assert!(s.contains("redacted"));
    }

    #[test]
    fn guids_parse() {
        let id = guid_bytes("6e7b768e-07e2-4810-8459-485f84f8f204").unwrap();
        assert_eq!(hex::encode(id), "6e7b768e07e248108459485f84f8f204");
        assert_eq!(
            guid_bytes(" 6E7B768E-07E2-4810-8459-485F84F8F204 "),
            Some(id)
        );
        assert_eq!(guid_bytes("not-a-guid"), None);
        assert_eq!(guid_bytes(""), None);
    }
}
