//! Bytes in device states (disk blocks, queued frames) as hex strings: compact
//! enough for JSON, and readable in a snapshot dump.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Decodes what [`encode`] wrote.
pub fn decode(s: &str) -> Result<Vec<u8>, String> {
    fn nibble(c: u8) -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("'{}' is not a hex digit", c as char)),
        }
    }
    if s.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| Ok(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Serde helpers for `Vec<u8>` fields stored as hex.
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::encode(v))
    }

    /// Deserializes from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde helpers for lists of byte strings (queued frames) stored as hex.
pub mod byte_list {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::VecDeque;

    /// Serializes as a list of hex strings.
    pub fn serialize<S: Serializer>(v: &VecDeque<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| super::encode(b)))
    }

    /// Deserializes from a list of hex strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| super::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let b = vec![0, 1, 0x7f, 0x80, 0xff];
        assert_eq!(encode(&b), "00017f80ff");
        assert_eq!(decode(&encode(&b)).unwrap(), b);
        assert!(decode("abc").is_err());
        assert!(decode("zz").is_err());
    }
}
