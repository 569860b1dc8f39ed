//! Signed values (`CacheBuilder::signing_keys`): anyone who can reach a memcached server can
//! write to it, so a value a process reads may have been planted. With signing keys, every item
//! distcache writes carries an HMAC-SHA256 tag, and an item without a valid one is never
//! returned: the flight counts it (`Stats::forged_values`), logs it, recomputes the value and
//! replaces it.
//!
//! A signed item's client flags are its unsigned flags with the first byte `S` instead of `D`
//! (`DCJ1` becomes `SCJ1`); its bytes are the 32-byte tag, then the bytes as they would be
//! unsigned. The tag covers the wire key (its length, then its bytes), the signed flags and
//! those bytes, so that a tag cannot be moved to another key or another kind of item. The first
//! key signs; every key verifies, so that keys rotate without a flag day.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The shortest key: HMAC-SHA256's own block of security.
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// The tag's length.
pub(crate) const TAG_BYTES: usize = 32;

/// The flags an item is given in place of a stored one whose tag is missing or wrong: the codec
/// turns it into a forged-value miss. Never written.
pub(crate) const FORGED_FLAGS: u32 = u32::from_be_bytes(*b"DCX\0");

type HmacSha256 = Hmac<Sha256>;

/// The keys, each already keyed (a clone per tag, not a new key schedule). `Debug` shows how
/// many, never the keys.
#[derive(Clone)]
pub(crate) struct Signer {
    macs: Arc<[HmacSha256]>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} keys)", self.macs.len())
    }
}

impl Signer {
    /// A signer whose first key signs; an error (that never shows a key) for none, or one
    /// shorter than [`MIN_KEY_BYTES`].
    pub(crate) fn new(keys: &[Vec<u8>]) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("give at least one key".into());
        }
        let macs = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                if key.len() < MIN_KEY_BYTES {
                    return Err(format!(
                        "key {} is {} bytes: at least {MIN_KEY_BYTES}",
                        i + 1,
                        key.len()
                    ));
                }
                HmacSha256::new_from_slice(key).map_err(|err| err.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { macs: macs.into() })
    }

    fn tag(mac: &HmacSha256, key: &[u8], flags: u32, payload: &[u8]) -> HmacSha256 {
        let mut mac = mac.clone();
        mac.update(&(key.len() as u32).to_be_bytes());
        mac.update(key);
        mac.update(&flags.to_be_bytes());
        mac.update(payload);
        mac
    }

    /// The item to store for `payload` under `flags`: the signed flags, and the tag before the
    /// bytes.
    pub(crate) fn sign(&self, key: &[u8], flags: u32, payload: &[u8]) -> (u32, Bytes) {
        let flags = signed_flags(flags);
        let tag = Self::tag(&self.macs[0], key, flags, payload)
            .finalize()
            .into_bytes();
        let mut data = Vec::with_capacity(TAG_BYTES + payload.len());
        data.extend_from_slice(&tag);
        data.extend_from_slice(payload);
        (flags, Bytes::from(data))
    }

    /// The unsigned flags and bytes of a stored item, if one of the keys signed it; otherwise
    /// [`FORGED_FLAGS`] and no bytes. Compared in constant time.
    pub(crate) fn verify(&self, key: &[u8], flags: u32, data: Bytes) -> (u32, Bytes) {
        let forged = (FORGED_FLAGS, Bytes::new());
        if flags.to_be_bytes()[0] != b'S' || data.len() < TAG_BYTES {
            return forged;
        }
        let (tag, payload) = data.split_at(TAG_BYTES);
        let genuine = self.macs.iter().any(|mac| {
            Self::tag(mac, key, flags, payload)
                .verify_slice(tag)
                .is_ok()
        });
        if !genuine {
            return forged;
        }
        let unsigned = (flags & 0x00FF_FFFF) | u32::from(b'D') << 24;
        (unsigned, data.slice(TAG_BYTES..))
    }
}

/// `D…` flags as signed: `S…`.
fn signed_flags(flags: u32) -> u32 {
    (flags & 0x00FF_FFFF) | u32::from(b'S') << 24
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: u32 = u32::from_be_bytes(*b"DCJ1");

    fn signer(keys: &[&[u8]]) -> Signer {
        Signer::new(&keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_signed_item_verifies_under_any_key_and_nothing_else_does() {
        let (old, new) = (&[1u8; 32][..], &[2u8; 40][..]);
        let before = signer(&[old]);
        let (flags, data) = before.sign(b"k", JSON, b"[1]");
        assert_eq!(flags.to_be_bytes(), *b"SCJ1");
        assert_eq!(data.len(), TAG_BYTES + 3);
        // Rotated: the new key signs, the old one still verifies.
        let rotated = signer(&[new, old]);
        assert_eq!(
            rotated.verify(b"k", flags, data.clone()),
            (JSON, Bytes::from_static(b"[1]"))
        );
        let (new_flags, new_data) = rotated.sign(b"k", JSON, b"[2]");
        assert_eq!(
            before.verify(b"k", new_flags, new_data).0,
            FORGED_FLAGS,
            "an unknown key"
        );
        // Another key, other flags, other bytes, no tag: forged.
        assert_eq!(before.verify(b"other", flags, data.clone()).0, FORGED_FLAGS);
        let other_flags = u32::from_be_bytes(*b"SCU1");
        assert_eq!(
            before.verify(b"k", other_flags, data.clone()).0,
            FORGED_FLAGS
        );
        let mut tampered = data.to_vec();
        *tampered.last_mut().unwrap() = b'9';
        assert_eq!(before.verify(b"k", flags, tampered.into()).0, FORGED_FLAGS);
        assert_eq!(
            before.verify(b"k", JSON, Bytes::from_static(b"[1]")).0,
            FORGED_FLAGS
        );
        assert_eq!(
            before.verify(b"k", flags, Bytes::from_static(b"short")).0,
            FORGED_FLAGS
        );
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        assert!(Signer::new(&[]).is_err());
        let err = Signer::new(&[b"short-but-secret".to_vec()]).unwrap_err();
        assert!(
            err.contains("at least 32") && !err.contains("secret"),
            "{err}"
        );
        let debug = format!("{:?}", signer(&[&[7u8; 32]]));
        assert_eq!(debug, "Signer(1 keys)");
    }
}
