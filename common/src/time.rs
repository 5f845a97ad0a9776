//! Timestamps as Kubernetes writes them: RFC 3339 in UTC, to the second (`Time`) or the
//! microsecond (`MicroTime`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `2006-01-02T15:04:05Z`.
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `2006-01-02T15:04:05.000000Z`.
pub fn format_micro(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The current time, to the second.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// The current time, to the microsecond.
pub fn now_micro() -> String {
    format_micro(OffsetDateTime::now_utc())
}

/// Parses any RFC 3339 timestamp.
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_back() {
        let t = parse("2026-12-02T09:44:42.123456+01:00").unwrap();
        assert_eq!(format(t), "2026-12-02T08:44:42Z");
        assert_eq!(format_micro(t), "2026-12-02T08:44:42.123456Z");
        assert_eq!(parse(&format(t)).unwrap().unix_timestamp(), t.unix_timestamp());
        assert!(parse("yesterday").is_none());
    }
}
