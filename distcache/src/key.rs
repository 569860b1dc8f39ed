//! Caller keys to memcached keys.
//!
//! memcached keys are at most 250 bytes of printable ASCII with no whitespace. A caller's key
//! that fits is sent as it is (behind the namespace), so operators can read it in `mg`, `lru_crawler
//! metadump` or a packet capture, and a PHP or Python client given the same key finds the same
//! item. Any other key is sent as a readable prefix, the marker `#`, and the SHA-256 of the whole
//! key in 64 lowercase hex digits. A hashed key therefore always ends in `#` and 64 lowercase hex
//! digits, so a key that fits but ends that way is hashed too: then no plain key can equal
//! another key's hashed form, and two hashed forms are equal only if their digests are. No
//! caller input can put a space, CR or LF on the wire. SHA-256, not MD5 or Rust's
//! `DefaultHasher`: collision-resistant, and identical in every release and every language.

use sha2::{Digest, Sha256};

use crate::BuildError;

/// The longest key memcached accepts.
pub(crate) const MAX_KEY_LEN: usize = 250;
/// The longest namespace: it leaves at least 120 readable bytes in a hashed key.
pub(crate) const MAX_NAMESPACE_LEN: usize = 64;
const HASH_MARKER: u8 = b'#';
const HASH_HEX_LEN: usize = 64;

/// A key as sent to the store: at most 250 bytes of printable ASCII, on the stack.
#[derive(Clone)]
pub(crate) struct WireKey {
    len: u8,
    buf: [u8; MAX_KEY_LEN],
}

impl WireKey {
    pub(crate) fn as_str(&self) -> &str {
        // Only printable ASCII is ever written into `buf`.
        std::str::from_utf8(self.as_bytes()).expect("wire keys are ASCII")
    }

    /// A key as memcached echoes it back: one of ours, so at most 250 printable bytes.
    pub(crate) fn from_wire(bytes: &[u8]) -> Option<WireKey> {
        if bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !bytes.iter().all(u8::is_ascii_graphic)
        {
            return None;
        }
        let mut wire = WireKey {
            len: 0,
            buf: [0; MAX_KEY_LEN],
        };
        wire.push(bytes);
        Some(wire)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    fn push(&mut self, bytes: &[u8]) {
        let start = usize::from(self.len);
        self.buf[start..start + bytes.len()].copy_from_slice(bytes);
        self.len = u8::try_from(start + bytes.len()).expect("wire keys fit in 250 bytes");
    }
}

impl PartialEq for WireKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for WireKey {}

impl std::fmt::Debug for WireKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// A byte memcached accepts in a key: printable ASCII, no space.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_graphic()
}

/// Whether `key` ends as every hashed key does: the marker, then 64 lowercase hex digits.
fn looks_hashed(key: &[u8]) -> bool {
    let Some(split) = key.len().checked_sub(HASH_HEX_LEN + 1) else {
        return false;
    };
    let (marker, hex) = (key[split], &key[split + 1..]);
    marker == HASH_MARKER && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Builds wire keys under one namespace.
#[derive(Debug, Clone)]
pub(crate) struct KeyEncoder {
    /// `"<namespace>:"`, or empty without a namespace.
    prefix: Box<str>,
}

impl KeyEncoder {
    /// Checks the namespace: letters, digits, `_`, `-` and `.`, so that `ns:key` can never read
    /// as another namespace's key.
    pub(crate) fn new(namespace: &str) -> Result<Self, BuildError> {
        let invalid = |reason| BuildError::InvalidNamespace {
            namespace: namespace.to_owned(),
            reason,
        };
        if namespace.len() > MAX_NAMESPACE_LEN {
            return Err(invalid("longer than 64 bytes"));
        }
        if !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ));
        }
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}:")
        };
        Ok(KeyEncoder {
            prefix: prefix.into_boxed_str(),
        })
    }

    /// The wire key for a caller's key. Never fails, never allocates.
    pub(crate) fn encode(&self, key: &str) -> WireKey {
        let mut wire = WireKey {
            len: 0,
            buf: [0; MAX_KEY_LEN],
        };
        wire.push(self.prefix.as_bytes());
        let bytes = key.as_bytes();
        if !bytes.is_empty()
            && self.prefix.len() + bytes.len() <= MAX_KEY_LEN
            && bytes.iter().copied().all(is_plain)
            && !looks_hashed(bytes)
        {
            wire.push(bytes);
            return wire;
        }
        // The readable prefix keeps `#` as it is: only the last 65 bytes (marker and digest) tell
        // hashed keys apart, and they are always there, so what precedes them cannot make two
        // keys equal. Replacing `#` would only make `order#42...` harder to recognise.
        let readable = MAX_KEY_LEN - self.prefix.len() - 1 - HASH_HEX_LEN;
        let mut shown = [0u8; MAX_KEY_LEN];
        let shown_len = readable.min(bytes.len());
        for (out, &b) in shown.iter_mut().zip(&bytes[..shown_len]) {
            *out = if is_plain(b) { b } else { b'_' };
        }
        wire.push(&shown[..shown_len]);
        wire.push(&[HASH_MARKER]);
        let digest = Sha256::digest(bytes);
        let mut hex = [0u8; HASH_HEX_LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(digest.iter()) {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0x0f)];
        }
        wire.push(&hex);
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(ns: &str, key: &str) -> String {
        KeyEncoder::new(ns).unwrap().encode(key).as_str().to_owned()
    }

    #[test]
    fn plain_keys_pass_through_behind_the_namespace() {
        assert_eq!(enc("", "user:42"), "user:42");
        assert_eq!(enc("app", "user:42"), "app:user:42");
        assert_eq!(
            enc("app", "factorial::factorial[100000]"),
            "app:factorial::factorial[100000]"
        );
    }

    #[test]
    fn unsafe_keys_are_a_readable_prefix_and_sha256() {
        let wire = enc("app", "get_user(\"bob smith\")");
        assert_eq!(
            wire,
            "app:get_user(\"bob_smith\")\
             #e81e89aa00aa73cf54d2cb45d3811e435364ef89e6f3c676399d9edea257fac3",
            "the digest is SHA-256 of the key's bytes, in lowercase hex"
        );
        assert!(enc("", "a\r\nmg x v\r\n").starts_with("a__mg_x_v__#"));
        assert!(
            enc("", "").starts_with('#'),
            "an empty key is hashed, never sent empty"
        );
    }

    #[test]
    fn keys_with_a_hash_sign_pass_through() {
        // A PHP or Python client given the same key must find the value.
        for key in ["order#42", "page#section", "#", "a##b", "tag#"] {
            assert_eq!(enc("", key), key);
            assert_eq!(enc("app", key), format!("app:{key}"));
        }
    }

    #[test]
    fn a_key_that_looks_hashed_is_hashed() {
        let hashed = enc("app", "get_user(\"bob smith\")");
        let looks_hashed = hashed.strip_prefix("app:").unwrap();
        let wire = enc("app", looks_hashed);
        assert_ne!(wire, hashed, "a caller key cannot take another key's place");
        assert_eq!(wire.len(), MAX_KEY_LEN.min(4 + looks_hashed.len() + 65));
        assert!(wire.starts_with(&format!("app:{}", &looks_hashed[..20])));
        // Exactly `#` and 64 lowercase hex digits at the end: anything else is plain.
        let digits = "0123456789abcdef".repeat(4);
        assert_ne!(enc("", &format!("x#{digits}")), format!("x#{digits}"));
        assert_ne!(enc("", &format!("#{digits}")), format!("#{digits}"));
        for plain in [
            format!("x#{}", &digits[1..]),
            format!("x#{digits}0"),
            format!("x#{}", digits.to_uppercase()),
            format!("x{digits}"),
            format!("x#{}g", &digits[1..]),
        ] {
            assert_eq!(enc("", &plain), plain);
        }
    }

    #[test]
    fn the_readable_prefix_of_a_hashed_key_keeps_hash_signs() {
        let wire = enc("ns", "order#42 with space");
        assert!(wire.starts_with("ns:order#42_with_space#"), "{wire}");
        assert_eq!(wire.len(), 3 + 19 + 65);
    }

    #[test]
    fn the_250_byte_limit_counts_the_namespace() {
        let fits = format!("{}#1", "k".repeat(250 - 3 - 2));
        assert_eq!(enc("ns", &fits), format!("ns:{fits}"), "250 bytes with ns:");
        let over = format!("{}#12", "k".repeat(250 - 3 - 2));
        let wire = enc("ns", &over);
        assert_eq!(wire.len(), MAX_KEY_LEN, "251 bytes with ns: is hashed");
        assert_eq!(
            &wire[..3 + 182],
            format!("ns:{}", &over[..182]),
            "the readable part"
        );
        assert_eq!(wire.as_bytes()[250 - 65], b'#');
        assert_eq!(
            enc("", &over),
            over,
            "the same key fits without the namespace"
        );
    }

    #[test]
    fn long_keys_are_cut_to_250_bytes() {
        let long = "x".repeat(251);
        let wire = enc("ns", &long);
        assert_eq!(wire.len(), MAX_KEY_LEN);
        assert!(wire.starts_with("ns:xxx"));
        assert_eq!(
            enc("", &"y".repeat(250)),
            "y".repeat(250),
            "250 bytes still fit"
        );
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(KeyEncoder::new("my-app.v2_x").is_ok());
        for bad in ["with space", "a:b", "é", "a#b", &"n".repeat(65)] {
            assert!(
                matches!(
                    KeyEncoder::new(bad),
                    Err(BuildError::InvalidNamespace { .. })
                ),
                "{bad:?} must be refused"
            );
        }
    }

    /// Caller keys that are often plain, contain `#`, or look hashed.
    fn tricky_key() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[!-~]{0,260}",
            "[a#]{0,6}",
            "[!-~]{0,190}#[0-9a-f]{64}",
            "[!-~]{0,190}#[0-9a-fA-F]{63,65}",
        ]
    }

    /// The new rule, stated independently of `encode`.
    fn is_plain_rule(ns: &str, key: &str) -> bool {
        let prefix = if ns.is_empty() { 0 } else { ns.len() + 1 };
        let b = key.as_bytes();
        let looks_hashed = b.len() >= 65
            && b[b.len() - 65] == b'#'
            && b[b.len() - 64..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        !b.is_empty()
            && prefix + b.len() <= MAX_KEY_LEN
            && b.iter().all(u8::is_ascii_graphic)
            && !looks_hashed
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn tricky_keys_are_valid_distinct_and_plain_by_the_rule(
            ns in "[a-z0-9_.-]{0,64}",
            a in tricky_key(),
            b in tricky_key(),
        ) {
            let (wa, wb) = (enc(&ns, &a), enc(&ns, &b));
            for (key, wire) in [(&a, &wa), (&b, &wb)] {
                prop_assert!(!wire.is_empty() && wire.len() <= MAX_KEY_LEN);
                prop_assert!(wire.bytes().all(|c| c.is_ascii_graphic()));
                let sent_as_is = if ns.is_empty() { key.clone() } else { format!("{ns}:{key}") };
                prop_assert_eq!(*wire == sent_as_is, is_plain_rule(&ns, key), "{:?} -> {:?}", key, wire);
            }
            prop_assert_eq!(a == b, wa == wb);
        }
    }

    proptest! {
        #[test]
        fn every_key_encodes_to_a_valid_memcached_key(ns in "[a-z0-9_.-]{0,64}", key in any::<String>()) {
            let wire = enc(&ns, &key);
            prop_assert!(!wire.is_empty() && wire.len() <= MAX_KEY_LEN);
            prop_assert!(wire.bytes().all(|b| b.is_ascii_graphic()));
        }

        #[test]
        fn distinct_keys_get_distinct_wire_keys(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(enc("ns", &a), enc("ns", &b));
        }

        #[test]
        fn plain_keys_and_hashed_keys_never_collide(plain in "[!-~]{1,200}", other in any::<String>()) {
            prop_assume!(plain != other);
            prop_assert_ne!(enc("", &plain), enc("", &other));
        }
    }
}
