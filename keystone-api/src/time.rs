//! The agent's timestamps.

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what the agent writes) as Unix seconds.
pub fn rfc3339_unix(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    Some((days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        assert_eq!(rfc3339_unix("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            rfc3339_unix("2026-11-21T21:42:14.250Z"),
            Some(1_795_297_334.25)
        );
        assert_eq!(rfc3339_unix("2000-02-29T12:00:00Z"), Some(951_825_600.0));
        assert_eq!(rfc3339_unix("2026-11-21 21:42:14Z"), None);
        assert_eq!(rfc3339_unix("2026-13-01T00:00:00Z"), None);
    }
}
