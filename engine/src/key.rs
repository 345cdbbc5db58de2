//! Object keys.
//!
//! A key is an opaque, non-empty byte string of at most [`MAX_KEY_LEN`] bytes. Keys are
//! usually a hash of a token prefix; Larder never interprets them, and in particular
//! never uses one as (part of) a file name.

use alloc::boxed::Box;
use core::borrow::Borrow;
use core::fmt;

/// The longest key accepted anywhere in Larder, in bytes.
///
/// Inference engines use keys of a few dozen to a few hundred bytes (a model name and a
/// prefix hash); 4 KiB leaves room for any such scheme while keeping a key's length in
/// two bytes on the wire and on disk.
pub const MAX_KEY_LEN: usize = 4096;

/// Why bytes are not a valid key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key has no bytes.
    #[error("key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// The offending length.
        len: usize,
        /// [`MAX_KEY_LEN`].
        max: usize,
    },
}

fn validate(bytes: &[u8]) -> Result<(), KeyError> {
    if bytes.is_empty() {
        Err(KeyError::Empty)
    } else if bytes.len() > MAX_KEY_LEN {
        Err(KeyError::TooLong { len: bytes.len(), max: MAX_KEY_LEN })
    } else {
        Ok(())
    }
}

/// A borrowed, validated key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyRef<'a>(&'a [u8]);

impl<'a> KeyRef<'a> {
    /// Validates `bytes` as a key.
    pub fn new(bytes: &'a [u8]) -> Result<Self, KeyError> {
        validate(bytes)?;
        Ok(Self(bytes))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// An owned copy.
    pub fn to_key(&self) -> Key {
        Key(Box::from(self.0))
    }

    /// The key's length in bytes (never zero).
    #[allow(clippy::len_without_is_empty)] // a key is never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// An owned, validated key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Box<[u8]>);

impl Key {
    /// Validates and copies `bytes` into a key.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        Ok(KeyRef::new(bytes)?.to_key())
    }

    /// Borrows the key.
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.0)
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key's length in bytes (never zero).
    #[allow(clippy::len_without_is_empty)] // a key is never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Wraps bytes already known to be a valid key (they came from one).
    pub(crate) fn from_boxed_unchecked(bytes: Box<[u8]>) -> Self {
        debug_assert!(validate(&bytes).is_ok());
        Self(bytes)
    }

    /// The owned bytes.
    pub fn into_boxed_bytes(self) -> Box<[u8]> {
        self.0
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl<'a> From<&'a Key> for KeyRef<'a> {
    fn from(k: &'a Key) -> Self {
        k.as_ref()
    }
}

fn debug_bytes(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    // Keys are usually printable names or hex digests; show printable ones as text and
    // anything else as hex, truncated so that a log line stays a line.
    const SHOWN: usize = 64;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        f.write_str("\"")?;
        for b in shown {
            write!(f, "{}", *b as char)?;
        }
        f.write_str("\"")?;
    } else {
        f.write_str("0x")?;
        for b in shown {
            write!(f, "{b:02x}")?;
        }
    }
    if bytes.len() > SHOWN {
        write!(f, "…({} bytes)", bytes.len())?;
    }
    Ok(())
}

impl fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_bytes(self.0, f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_bytes(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    #[test]
    fn empty_key_is_rejected() {
        assert_eq!(KeyRef::new(b""), Err(KeyError::Empty));
        assert_eq!(Key::new(b""), Err(KeyError::Empty));
    }

    #[test]
    fn length_bound_is_inclusive() {
        let max = vec![7u8; MAX_KEY_LEN];
        assert_eq!(KeyRef::new(&max).map(|k| k.len()), Ok(MAX_KEY_LEN));
        let over = vec![7u8; MAX_KEY_LEN + 1];
        assert_eq!(KeyRef::new(&over), Err(KeyError::TooLong { len: MAX_KEY_LEN + 1, max: MAX_KEY_LEN }));
    }

    #[test]
    fn keys_are_opaque_bytes() {
        // Path-like bytes are just bytes: nothing is interpreted or normalised.
        let k = Key::new(b"../../etc/passwd\0").unwrap();
        assert_eq!(k.as_bytes(), b"../../etc/passwd\0");
        assert_eq!(k.as_ref().to_key(), k);
    }

    #[test]
    fn debug_shows_text_or_hex() {
        assert_eq!(format!("{:?}", Key::new(b"abc").unwrap()), "\"abc\"");
        assert_eq!(format!("{:?}", Key::new(&[0, 255]).unwrap()), "0x00ff");
        let long = Key::new(&[b'a'; 100]).unwrap();
        assert!(format!("{long:?}").ends_with("…(100 bytes)"));
    }
}
