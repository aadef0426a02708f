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

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a date for the RTC: Unix seconds, `YYYY-MM-DD` or
/// `YYYY-MM-DDTHH:MM:SS` (UTC).
pub fn parse_date(s: &str) -> Result<i64, UnitError> {
    let t = s.trim();
    let bad = || {
        UnitError::Malformed(
            s.to_string(),
            "date",
            "1735689600, 2025-01-01, 2025-01-01T12:00:00",
        )
    };
    if let Ok(secs) = t.parse::<i64>() {
        return Ok(secs);
    }
    let (date, time) = t.split_once('T').unwrap_or((t, "00:00:00"));
    let num = |v: &str| v.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let h: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [hh, mi, se]) = (d.as_slice(), h.as_slice()) else {
        return Err(bad());
    };
    let (y, mo, da, hh, mi, se) = (num(y)?, num(mo)?, num(da)?, num(hh)?, num(mi)?, num(se)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || hh > 23 || mi > 59 || se > 59 {
        return Err(bad());
    }
    Ok(days_from_civil(y, mo, da) * 86_400 + hh * 3600 + mi * 60 + se)
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
    fn dates() {
        assert_eq!(parse_date("2025-01-01").unwrap(), 1_735_689_600);
        assert_eq!(parse_date("1970-01-01T00:00:01").unwrap(), 1);
        assert_eq!(parse_date("2024-02-29T12:00:00").unwrap(), 1_709_208_000);
        assert_eq!(parse_date("42").unwrap(), 42);
        assert!(parse_date("2025-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms").unwrap(), 20_000_000);
        assert_eq!(parse_duration("5us").unwrap(), 5_000);
        assert_eq!(parse_duration("2").unwrap(), 2_000_000_000);
        assert!(parse_duration("5 weeks").is_err());
    }
}
