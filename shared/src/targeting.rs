//! What a campaign bids on, and how it paces: the settings the coordinators store and every
//! edge matches requests against.
//!
//! Every list is "empty = any". Values are checked once, when a campaign is saved
//! ([`Targeting::validate`]), so an edge can trust what it receives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::Money;

/// The media type of an impression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `imp.banner`.
    Banner,
    /// `imp.video`.
    Video,
    /// `imp.native`.
    Native,
    /// `imp.audio`.
    Audio,
}

/// Where the impression is shown: the request's `site`, `app` or `dooh` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inventory {
    /// A web site.
    Site,
    /// A mobile or CTV app.
    App,
    /// Digital out-of-home screens.
    Dooh,
}

/// How a campaign spreads its daily budget. Soft: the hard caps are the leases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// Bid on everything that matches until the budget is gone.
    #[default]
    Asap,
    /// Keep the day's spend near the elapsed share of the day (needs a daily budget).
    Even,
}

macro_rules! names {
    ($ty:ty, $what:literal, $($variant:ident = $name:literal),+) => {
        impl $ty {
            /// The name used in configuration and on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!(
                        concat!("{:?} is not a ", $what, " (one of: {})"),
                        s,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    Format,
    "format",
    Banner = "banner",
    Video = "video",
    Native = "native",
    Audio = "audio"
);
names!(
    Inventory,
    "inventory type",
    Site = "site",
    App = "app",
    Dooh = "dooh"
);
names!(Pacing, "pacing mode", Asap = "asap", Even = "even");

/// An allow list and a deny list of names (domains, bundles, categories).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lists {
    /// When not empty, only these.
    pub allow: Vec<String>,
    /// Never these.
    pub deny: Vec<String>,
}

impl Lists {
    /// Whether a request naming `value` (or nothing) passes. A request that names nothing does
    /// not pass a non-empty allow list.
    pub fn admits(&self, value: Option<&str>) -> bool {
        match value {
            Some(v) => {
                !self.deny.iter().any(|d| d.eq_ignore_ascii_case(v))
                    && (self.allow.is_empty()
                        || self.allow.iter().any(|a| a.eq_ignore_ascii_case(v)))
            }
            None => self.allow.is_empty(),
        }
    }

    /// Whether a request naming all of `values` passes: none denied, and (with an allow list)
    /// at least one allowed.
    pub fn admits_any<'a>(&self, values: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        let denied = values
            .clone()
            .into_iter()
            .any(|v| self.deny.iter().any(|d| d.eq_ignore_ascii_case(v)));
        !denied
            && (self.allow.is_empty()
                || values
                    .into_iter()
                    .any(|v| self.allow.iter().any(|a| a.eq_ignore_ascii_case(v))))
    }
}

/// What a campaign bids on, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targeting {
    /// The most it ever bids, micros per thousand impressions; `None`: its bid price.
    pub max_cpm: Option<Money>,
    /// Media types.
    pub formats: Vec<Format>,
    /// Site, app, DOOH.
    pub inventory: Vec<Inventory>,
    /// ISO 3166-1 alpha-3 countries of `device.geo.country`.
    pub countries: Vec<String>,
    /// Creative sizes `"WxH"` (banner and video).
    pub sizes: Vec<String>,
    /// `site.domain` (or `app.domain`).
    pub domains: Lists,
    /// `app.bundle`.
    pub bundles: Lists,
    /// IAB content categories of the site or app (`cat`, `sectioncat`, `pagecat`).
    pub categories: Lists,
    /// OpenRTB `device.devicetype` values.
    pub device_types: Vec<u8>,
    /// PMP deal ids. When not empty, the campaign bids only through these deals.
    pub deals: Vec<String>,
    /// How it spreads a daily budget.
    pub pacing: Pacing,
}

/// Longest list a campaign may hold, per field.
pub const LIST_MAX: usize = 10_000;

impl Targeting {
    /// Checks every value; the error names the field.
    pub fn validate(&self, bid_cpm: Money) -> Result<(), (&'static str, String)> {
        if let Some(max) = self.max_cpm
            && max < bid_cpm
        {
            return Err(("max_cpm", format!("{max} is below the bid price {bid_cpm}")));
        }
        if let Some(c) = self
            .countries
            .iter()
            .find(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err((
                "countries",
                format!("{c:?} is not an ISO 3166-1 alpha-3 code"),
            ));
        }
        if let Some(s) = self.sizes.iter().find(|s| parse_size(s).is_none()) {
            return Err(("sizes", format!("{s:?} is not WxH")));
        }
        let names: [(&'static str, &Vec<String>); 7] = [
            ("domains_allow", &self.domains.allow),
            ("domains_deny", &self.domains.deny),
            ("bundles_allow", &self.bundles.allow),
            ("bundles_deny", &self.bundles.deny),
            ("categories_allow", &self.categories.allow),
            ("categories_deny", &self.categories.deny),
            ("deals", &self.deals),
        ];
        for (field, list) in names {
            if list.len() > LIST_MAX {
                return Err((field, format!("{} entries, at most {LIST_MAX}", list.len())));
            }
            if let Some(v) = list
                .iter()
                .find(|v| v.is_empty() || v.len() > 256 || v.chars().any(char::is_control))
            {
                return Err((
                    field,
                    format!("{v:?}: empty, too long or has control characters"),
                ));
            }
        }
        Ok(())
    }
}

/// `"300x250"` → `(300, 250)`.
pub fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_named() {
        for f in [Format::Banner, Format::Video, Format::Native, Format::Audio] {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
        }
        let e = "popup".parse::<Format>().unwrap_err();
        assert!(e.contains("\"popup\"") && e.contains("banner"), "{e}");
        assert_eq!("even".parse::<Pacing>(), Ok(Pacing::Even));
        assert!("ctv".parse::<Inventory>().is_err());
    }

    #[test]
    fn lists_allow_and_deny() {
        let l = Lists {
            allow: vec!["news.example".into()],
            deny: vec!["bad.example".into()],
        };
        assert!(l.admits(Some("NEWS.example")));
        assert!(!l.admits(Some("other.example")));
        assert!(!l.admits(None));
        let deny_only = Lists {
            allow: vec![],
            deny: vec!["IAB25".into()],
        };
        assert!(deny_only.admits(None));
        assert!(deny_only.admits_any(["IAB1", "IAB2"]));
        assert!(!deny_only.admits_any(["IAB1", "IAB25"]));
        let allow = Lists {
            allow: vec!["IAB3".into()],
            deny: vec![],
        };
        assert!(allow.admits_any(["IAB1", "IAB3"]));
        assert!(!allow.admits_any(["IAB1"]));
        assert!(!allow.admits_any(std::iter::empty::<&str>()));
    }

    #[test]
    fn validation_names_the_field() {
        let bid = Money::from_micros(2_000_000);
        let mut t = Targeting {
            max_cpm: Some(Money::from_micros(1_000_000)),
            ..Targeting::default()
        };
        assert_eq!(t.validate(bid).unwrap_err().0, "max_cpm");
        t.max_cpm = None;
        t.countries = vec!["US".into()];
        assert_eq!(t.validate(bid).unwrap_err().0, "countries");
        t.countries = vec!["USA".into()];
        t.sizes = vec!["300-250".into()];
        assert_eq!(t.validate(bid).unwrap_err().0, "sizes");
        t.sizes = vec!["300x250".into()];
        t.deals = vec![String::new()];
        assert_eq!(t.validate(bid).unwrap_err().0, "deals");
        t.deals = vec!["deal-1".into()];
        assert_eq!(t.validate(bid), Ok(()));
    }
}
