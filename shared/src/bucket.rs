//! Buckets: the bounded budgets of a campaign, one for its lifetime and one per local day.
//!
//! Days are calendar days in the campaign's IANA time zone, so a day lasts 23 or 25 hours when
//! daylight saving time begins or ends (and 23.5 or 24.5 on Lord Howe Island). The time zone
//! database is compiled into the binary (`jiff`'s bundled tzdb), so every replica of a region
//! maps an instant to the same day whatever its host has installed.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::CampaignId;

/// Why a bucket, date, zone or instant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// The name is not in the bundled IANA time zone database.
    #[error("unknown IANA time zone {0:?}")]
    UnknownZone(String),
    /// The text is neither `lifetime` nor `day:YYYY-MM-DD`.
    #[error("bucket {0:?} is neither \"lifetime\" nor \"day:YYYY-MM-DD\"")]
    BadBucket(String),
    /// The date or instant is outside the supported range (years -9999 to 9999).
    #[error("date or time out of range: {0}")]
    OutOfRange(String),
}

/// One bounded budget of a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// The whole life of the campaign.
    Lifetime,
    /// One calendar day in the campaign's time zone.
    Day(Date),
}

impl Bucket {
    /// The buckets a spend at `at` debits: the lifetime bucket and the bucket of that day in
    /// `zone`.
    pub fn for_spend(zone: &CampaignZone, at: Timestamp) -> [Bucket; 2] {
        [Bucket::Lifetime, Bucket::Day(zone.day_of(at))]
    }
}

/// `lifetime` or `day:2026-03-08`.
impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bucket::Lifetime => f.write_str("lifetime"),
            Bucket::Day(d) => write!(f, "day:{d}"),
        }
    }
}

impl FromStr for Bucket {
    type Err = BucketError;
    fn from_str(s: &str) -> Result<Bucket, BucketError> {
        if s == "lifetime" {
            return Ok(Bucket::Lifetime);
        }
        let bad = || BucketError::BadBucket(s.to_string());
        let day = s.strip_prefix("day:").ok_or_else(bad)?;
        // jiff accepts more forms than YYYY-MM-DD; insist on the canonical one.
        if day.len() != 10 {
            return Err(bad());
        }
        let date: Date = day.parse().map_err(|_| bad())?;
        // Years 1 to 9999, as the log's encoding allows (year 0 parses, and means nothing).
        if date.year() < 1 {
            return Err(bad());
        }
        Ok(Bucket::Day(date))
    }
}

impl Serialize for Bucket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bucket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A bucket of one campaign: the unit that has a budget.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketKey {
    /// The campaign.
    pub campaign: CampaignId,
    /// Which of its buckets.
    pub bucket: Bucket,
}

impl fmt::Display for BucketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.campaign, self.bucket)
    }
}

/// A campaign's IANA time zone, which decides where its days begin and end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CampaignZone {
    name: String,
    tz: TimeZone,
}

impl CampaignZone {
    /// Looks `name` (for example `America/New_York`) up in the bundled time zone database.
    pub fn new(name: &str) -> Result<CampaignZone, BucketError> {
        let tz = TimeZone::get(name).map_err(|_| BucketError::UnknownZone(name.to_string()))?;
        Ok(CampaignZone {
            name: name.to_string(),
            tz,
        })
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local date at instant `at`.
    pub fn day_of(&self, at: Timestamp) -> Date {
        at.to_zoned(self.tz.clone()).date()
    }

    /// The local date at `unix_micros` microseconds since the Unix epoch.
    pub fn day_of_unix_micros(&self, unix_micros: i64) -> Result<Date, BucketError> {
        let at = Timestamp::from_microsecond(unix_micros)
            .map_err(|e| BucketError::OutOfRange(e.to_string()))?;
        Ok(self.day_of(at))
    }

    /// The first instant of `day` and the first instant of the next day.
    pub fn day_span(&self, day: Date) -> Result<(Timestamp, Timestamp), BucketError> {
        let range = |e: jiff::Error| BucketError::OutOfRange(e.to_string());
        let start = day.to_zoned(self.tz.clone()).map_err(range)?;
        let end = day
            .tomorrow()
            .map_err(range)?
            .to_zoned(self.tz.clone())
            .map_err(range)?;
        Ok((start.timestamp(), end.timestamp()))
    }

    /// How long `day` lasts in this zone, in seconds.
    pub fn day_length_secs(&self, day: Date) -> Result<i64, BucketError> {
        let (start, end) = self.day_span(day)?;
        Ok(end.as_second() - start.as_second())
    }
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    #[track_caller]
    fn check_day_length(zone: &str, day: Date, hours_x2: i64) {
        let zone = CampaignZone::new(zone).unwrap();
        assert_eq!(
            zone.day_length_secs(day).unwrap(),
            hours_x2 * 1800,
            "{} {day}",
            zone.name()
        );
    }

    #[test]
    fn dst_days_last_23_or_25_hours() {
        check_day_length("America/New_York", date(2026, 3, 8), 46);
        check_day_length("America/New_York", date(2026, 3, 9), 48);
        check_day_length("America/New_York", date(2026, 11, 1), 50);
        check_day_length("Europe/Berlin", date(2026, 3, 29), 46);
        check_day_length("Europe/Berlin", date(2026, 10, 25), 50);
        check_day_length("Australia/Sydney", date(2026, 4, 5), 50);
        check_day_length("Australia/Sydney", date(2026, 10, 4), 46);
        check_day_length("Australia/Lord_Howe", date(2026, 4, 5), 49); // half-hour shift
        check_day_length("UTC", date(2026, 3, 8), 48);
        check_day_length("Asia/Kolkata", date(2026, 3, 8), 48);
    }

    #[test]
    fn instants_map_to_the_local_day_across_a_dst_change() {
        let ny = CampaignZone::new("America/New_York").unwrap();
        let day = date(2026, 11, 1);
        let (start, end) = ny.day_span(day).unwrap();
        assert_eq!(start.to_string(), "2026-11-01T04:00:00Z"); // EDT midnight
        assert_eq!(end.to_string(), "2026-11-02T05:00:00Z"); // EST midnight
        let last_micro = Timestamp::from_microsecond(end.as_microsecond() - 1).unwrap();
        assert_eq!(ny.day_of(start), day);
        assert_eq!(ny.day_of(last_micro), day);
        assert_eq!(ny.day_of(end), date(2026, 11, 2));
        // 03:30 UTC on 1 Nov is still 31 Oct in New York.
        let before: Timestamp = "2026-11-01T03:30:00Z".parse().unwrap();
        assert_eq!(ny.day_of(before), date(2026, 10, 31));
        assert_eq!(
            Bucket::for_spend(&ny, before),
            [Bucket::Lifetime, Bucket::Day(date(2026, 10, 31))]
        );
        assert_eq!(ny.day_of_unix_micros(start.as_microsecond()).unwrap(), day);
        assert!(ny.day_of_unix_micros(i64::MAX).is_err());
    }

    #[test]
    fn buckets_parse_and_print() {
        for (text, bucket) in [
            ("lifetime", Bucket::Lifetime),
            ("day:2026-03-08", Bucket::Day(date(2026, 3, 8))),
        ] {
            assert_eq!(text.parse::<Bucket>(), Ok(bucket));
            assert_eq!(bucket.to_string(), text);
        }
        for bad in [
            "",
            "day:",
            "day:2026-3-8",
            "day:2026-02-30",
            "Lifetime",
            "day:20260308",
        ] {
            assert!(bad.parse::<Bucket>().is_err(), "{bad:?}");
        }
        assert_eq!(
            CampaignZone::new("Mars/Olympus"),
            Err(BucketError::UnknownZone("Mars/Olympus".into()))
        );
    }
}
