//! Sizes and durations as people write them: `128M`, `4K`, `500us`, `2s`.

/// Errors of parsing a size or duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a number with a known unit.
    #[error("'{0}' is not a {1} (examples: {2})")]
    Malformed(String, &'static str, &'static str),
    /// Overflows 64 bits.
    #[error("'{0}' is too large")]
    TooLarge(String),
}

/// Parses a byte size: a number with an optional K, M or G suffix (binary units).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let bad = || UnitError::Malformed(s.to_string(), "size", "4096, 64K, 128M, 1G");
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult: u64 = match t[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::TooLarge(s.to_string()))
}

/// Parses a duration into nanoseconds: a number with ns, us, ms or s (default s).
pub fn parse_duration(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let bad = || UnitError::Malformed(s.to_string(), "duration", "500ns, 20us, 3ms, 2s");
    let i = t
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .unwrap_or(t.len());
    let n: u64 = t[..i].trim().parse().map_err(|_| bad())?;
    let mult: u64 = match &t[i..] {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| UnitError::TooLarge(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms").unwrap(), 20_000_000);
        assert_eq!(parse_duration("5us").unwrap(), 5_000);
        assert_eq!(parse_duration("2").unwrap(), 2_000_000_000);
        assert!(parse_duration("5 weeks").is_err());
    }
}
