//! The campaigns an edge bids for, indexed so that a request looks at the few that can match,
//! not at every campaign; matching, pricing (floors, currencies, deals) and the choice of bid.
//!
//! The index key is (format, size or any, country or any). A campaign is filed under every key
//! its targeting allows (an empty list files it under "any"), so an impression looks up at most
//! `formats × (sizes + 1) × 2` keys. Everything else in the targeting is checked on the few
//! campaigns found.

use std::collections::HashMap;
use std::sync::Arc;

use shared::proto::v1 as pb;
use shared::targeting::{Format, Inventory, Targeting, parse_size};
use shared::{CampaignId, Money};
use smallvec::SmallVec;

use crate::lease::Slot;
use crate::openrtb::{BidRequest, Imp};

/// A currency table: the value of one unit of each currency in ours, in parts per million.
#[derive(Clone, Debug)]
pub struct Currencies {
    /// Ours: the campaigns' currency, the one we bid in.
    pub ours: String,
    /// Other currencies floors may come in: code → micros of ours per unit.
    pub rates_ppm: HashMap<String, u64>,
}

impl Currencies {
    /// Only our own currency.
    pub fn only(ours: &str) -> Currencies {
        Currencies {
            ours: ours.to_owned(),
            rates_ppm: HashMap::new(),
        }
    }

    /// A floor of `cpm` in `cur` (default ours) as micros per impression in ours, rounded up
    /// (a floor must not be undercut by rounding). `None`: unknown currency or a bad number.
    pub fn floor_micros(&self, cpm: f64, cur: Option<&str>) -> Option<i64> {
        let theirs = Money::from_cpm(cpm).ok()?.micros();
        let cur = cur.unwrap_or(&self.ours);
        if cur.eq_ignore_ascii_case(&self.ours) {
            return Some(theirs);
        }
        let rate = *self.rates_ppm.get(&cur.to_ascii_uppercase())?;
        let n = i128::from(theirs) * i128::from(rate);
        i64::try_from((n + 999_999) / 1_000_000).ok()
    }
}

/// One campaign as the edge bids for it.
#[derive(Debug)]
pub struct Campaign {
    /// Its name.
    pub id: CampaignId,
    /// Bid price, micros per impression.
    pub bid_micros: i64,
    /// The most it bids, micros per impression.
    pub max_micros: i64,
    /// What it bids on.
    pub targeting: Targeting,
    /// Its daily budget, for pacing.
    pub daily_budget: Option<Money>,
    /// Its IANA zone (days, for pacing).
    pub zone: String,
    /// Its lease and throttle (kept across catalog versions).
    pub slot: Arc<Slot>,
    /// The slot's number in the slot table.
    pub slot_index: u32,
}

/// Every slot this edge ever made, by campaign; slots outlive catalog versions so that a
/// configuration change does not drop a lease.
#[derive(Debug, Default)]
pub struct Slots {
    by_name: HashMap<CampaignId, u32>,
    names: Vec<CampaignId>,
    /// Slot `i`.
    pub all: Vec<Arc<Slot>>,
}

impl Slots {
    /// The slot of `id`, made on first use.
    pub fn of(&mut self, id: &CampaignId) -> (u32, Arc<Slot>) {
        if let Some(&i) = self.by_name.get(id) {
            return (i, self.all[i as usize].clone());
        }
        let i = u32::try_from(self.all.len()).expect("fewer than 4 billion campaigns");
        self.all.push(Arc::new(Slot::new()));
        self.names.push(id.clone());
        self.by_name.insert(id.clone(), i);
        (i, self.all[i as usize].clone())
    }

    /// The campaign of slot `i` (made by [`Slots::of`]).
    pub fn name(&self, i: u32) -> &CampaignId {
        &self.names[i as usize]
    }
}

/// Index key: format, size (`w << 32 | h`, 0 = any), country (ASCII, zeros = any).
type Key = (u8, u64, [u8; 3]);

const ANY_SIZE: u64 = 0;
const ANY_COUNTRY: [u8; 3] = [0; 3];
const FORMATS: [Format; 4] = [Format::Banner, Format::Video, Format::Native, Format::Audio];

fn size_key(w: i64, h: i64) -> Option<u64> {
    let w = u32::try_from(w).ok().filter(|w| *w > 0)?;
    let h = u32::try_from(h).ok().filter(|h| *h > 0)?;
    Some(u64::from(w) << 32 | u64::from(h))
}

fn country_key(c: &str) -> Option<[u8; 3]> {
    let b = c.as_bytes();
    (b.len() == 3).then(|| {
        [
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ]
    })
}

/// One version of the campaigns, immutable; replaced whole when the coordinators' version moves.
#[derive(Debug, Default)]
pub struct Catalog {
    /// The coordinators' campaigns version this was built from.
    pub version: u64,
    /// Campaigns that may bid (not paused).
    pub campaigns: Vec<Campaign>,
    index: HashMap<Key, Vec<u32>, foldhash::fast::RandomState>,
}

/// Why a campaign from the coordinators was left out (logged, counted).
#[derive(Debug)]
pub struct Skipped {
    /// The campaign.
    pub campaign: String,
    /// Why.
    pub reason: String,
}

impl Catalog {
    /// Builds a catalog from the coordinators' list. Paused campaigns are left out.
    pub fn build(
        version: u64,
        list: &[pb::CampaignConfig],
        slots: &mut Slots,
    ) -> (Catalog, Vec<Skipped>) {
        let mut cat = Catalog {
            version,
            ..Catalog::default()
        };
        let mut skipped = Vec::new();
        for c in list {
            if c.paused {
                continue;
            }
            let id: CampaignId = match c.campaign.parse() {
                Ok(id) => id,
                Err(e) => {
                    skipped.push(Skipped {
                        campaign: c.campaign.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let targeting = match shared::proto::targeting_from_wire(c) {
                Ok(t) => t,
                Err(e) => {
                    skipped.push(Skipped {
                        campaign: c.campaign.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let bid_micros = Money::from_micros(c.bid_cpm_micros)
                .per_impression()
                .micros();
            let max_micros = targeting
                .max_cpm
                .map_or(bid_micros, |m| m.per_impression().micros())
                .max(bid_micros);
            if bid_micros <= 0 {
                skipped.push(Skipped {
                    campaign: c.campaign.clone(),
                    reason: "bid price under one micro per impression".into(),
                });
                continue;
            }
            let (slot_index, slot) = slots.of(&id);
            let n = u32::try_from(cat.campaigns.len()).expect("fewer than 4 billion campaigns");
            let formats: Vec<Format> = if targeting.formats.is_empty() {
                FORMATS.to_vec()
            } else {
                targeting.formats.clone()
            };
            let sizes: Vec<u64> = if targeting.sizes.is_empty() {
                vec![ANY_SIZE]
            } else {
                targeting
                    .sizes
                    .iter()
                    .filter_map(|s| parse_size(s))
                    .filter_map(|(w, h)| size_key(i64::from(w), i64::from(h)))
                    .collect()
            };
            let countries: Vec<[u8; 3]> = if targeting.countries.is_empty() {
                vec![ANY_COUNTRY]
            } else {
                targeting
                    .countries
                    .iter()
                    .filter_map(|c| country_key(c))
                    .collect()
            };
            for f in &formats {
                for s in &sizes {
                    for k in &countries {
                        cat.index.entry((*f as u8, *s, *k)).or_default().push(n);
                    }
                }
            }
            cat.campaigns.push(Campaign {
                id,
                bid_micros,
                max_micros,
                targeting,
                daily_budget: c.daily_budget_micros.map(Money::from_micros),
                zone: c.time_zone.clone(),
                slot,
                slot_index,
            });
        }
        for v in cat.index.values_mut() {
            v.shrink_to_fit();
        }
        cat.index.shrink_to_fit();
        (cat, skipped)
    }

    /// The campaigns that may bid on `imp` of `req`, best price first, each with its price
    /// (micros per impression), the deal it bids through and the size it bids with.
    pub fn candidates(
        &self,
        req: &BidRequest<'_>,
        imp: &Imp<'_>,
        currencies: &Currencies,
        out: &mut Candidates,
    ) {
        out.clear();
        let country = req.country().and_then(country_key);
        let mut found: SmallVec<[(u32, u64); 8]> = SmallVec::new();
        let mut look = |f: Format, sizes: &[u64]| {
            for s in sizes.iter().copied().chain([ANY_SIZE]) {
                for k in [country, Some(ANY_COUNTRY)].into_iter().flatten() {
                    if let Some(list) = self.index.get(&(f as u8, s, k)) {
                        found.extend(list.iter().map(|&c| (c, s)));
                    }
                }
            }
        };
        if let Some(b) = &imp.banner {
            let mut sizes: SmallVec<[u64; 8]> = SmallVec::new();
            if let (Some(w), Some(h)) = (b.w, b.h) {
                sizes.extend(size_key(w, h));
            }
            for f in b.format.iter().flatten() {
                if let (Some(w), Some(h)) = (f.w, f.h) {
                    sizes.extend(size_key(w, h));
                }
            }
            look(Format::Banner, &sizes);
        }
        if let Some(v) = &imp.video {
            let sizes: SmallVec<[u64; 1]> = match (v.w, v.h) {
                (Some(w), Some(h)) => size_key(w, h).into_iter().collect(),
                _ => SmallVec::new(),
            };
            look(Format::Video, &sizes);
        }
        if imp.native.is_some() {
            look(Format::Native, &[]);
        }
        if imp.audio.is_some() {
            look(Format::Audio, &[]);
        }
        found.sort_unstable();
        found.dedup_by_key(|(c, _)| *c);
        for (c, size) in found {
            let campaign = &self.campaigns[c as usize];
            if let Some(cand) = self.price(campaign, c, size, req, imp, currencies) {
                out.push(cand);
            }
        }
        out.sort_unstable_by(|a, b| {
            b.price_micros
                .cmp(&a.price_micros)
                .then(a.campaign.cmp(&b.campaign))
        });
    }

    /// The rest of the targeting, then the price against the floor.
    fn price(
        &self,
        c: &Campaign,
        index: u32,
        size: u64,
        req: &BidRequest<'_>,
        imp: &Imp<'_>,
        currencies: &Currencies,
    ) -> Option<Candidate> {
        let t = &c.targeting;
        let inventory = if req.site.is_some() {
            Some(Inventory::Site)
        } else if req.app.is_some() {
            Some(Inventory::App)
        } else if req.dooh.is_some() {
            Some(Inventory::Dooh)
        } else {
            None
        };
        if !t.inventory.is_empty() && !inventory.is_some_and(|i| t.inventory.contains(&i)) {
            return None;
        }
        let (domain, bundle, lists) = match (&req.site, &req.app) {
            (Some(s), _) => (
                s.domain.as_deref(),
                None,
                [&s.cat[..], &s.sectioncat[..], &s.pagecat[..]],
            ),
            (None, Some(a)) => (
                a.domain.as_deref(),
                a.bundle.as_deref(),
                [&a.cat[..], &a.sectioncat[..], &a.pagecat[..]],
            ),
            (None, None) => (None, None, [&[][..]; 3]),
        };
        if !t.domains.admits(domain) || !t.bundles.admits(bundle) {
            return None;
        }
        let by_category = !t.categories.allow.is_empty() || !t.categories.deny.is_empty();
        let cats = lists.into_iter().flatten().map(|c| c.as_ref());
        if by_category && !t.categories.admits_any(cats) {
            return None;
        }
        if !t.device_types.is_empty() {
            let dt = req.device.as_ref().and_then(|d| d.devicetype);
            if !dt.is_some_and(|d| t.device_types.iter().any(|x| i64::from(*x) == d)) {
                return None;
            }
        }
        // Deals: a private auction admits only its deals; a campaign with deals bids only
        // through them.
        let pmp = imp.pmp.as_ref();
        let private = pmp.is_some_and(|p| p.private_auction == Some(1));
        let deal = pmp.and_then(|p| {
            p.deals.iter().find(|d| {
                d.id.as_deref()
                    .is_some_and(|id| t.deals.iter().any(|x| x == id))
            })
        });
        if (private || !t.deals.is_empty()) && deal.is_none() {
            return None;
        }
        let floor = match deal {
            Some(d) if d.bidfloor.is_some() => {
                currencies.floor_micros(d.bidfloor.unwrap_or(0.0), d.bidfloorcur.as_deref())?
            }
            _ => {
                currencies.floor_micros(imp.bidfloor.unwrap_or(0.0), imp.bidfloorcur.as_deref())?
            }
        };
        let price = if floor > c.bid_micros {
            floor
        } else {
            c.bid_micros
        };
        if price > c.max_micros {
            return None;
        }
        let (w, h) = if size == ANY_SIZE {
            match &imp.banner {
                Some(b) => (b.w, b.h),
                None => imp.video.as_ref().map_or((None, None), |v| (v.w, v.h)),
            }
        } else {
            (Some((size >> 32) as i64), Some((size & 0xffff_ffff) as i64))
        };
        Some(Candidate {
            campaign: index,
            price_micros: price,
            deal: deal.and_then(|d| d.id.as_deref().map(str::to_owned)),
            w,
            h,
        })
    }
}

/// The candidates of one impression: a few in place, more on the heap.
pub type Candidates = SmallVec<[Candidate; 4]>;

/// A campaign that may bid on an impression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index into [`Catalog::campaigns`].
    pub campaign: u32,
    /// The price, micros per impression (≥ the floor, ≤ the campaign's max).
    pub price_micros: i64,
    /// The deal it bids through.
    pub deal: Option<String>,
    /// Creative width.
    pub w: Option<i64>,
    /// Creative height.
    pub h: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openrtb::{Version, parse};

    fn campaign(
        name: &str,
        cpm: i64,
        edit: impl FnOnce(&mut pb::CampaignConfig),
    ) -> pb::CampaignConfig {
        let mut c = pb::CampaignConfig {
            campaign: name.into(),
            time_zone: "UTC".into(),
            bid_cpm_micros: cpm,
            ..Default::default()
        };
        edit(&mut c);
        c
    }

    fn names(cat: &Catalog, body: &str) -> Vec<(String, i64)> {
        let req = parse(body.as_bytes(), Version::V26).unwrap();
        let mut out = Candidates::new();
        let mut cur = Currencies::only("USD");
        cur.rates_ppm.insert("EUR".into(), 1_100_000);
        cat.candidates(&req, &req.imp[0], &cur, &mut out);
        out.iter()
            .map(|c| {
                (
                    cat.campaigns[c.campaign as usize].id.to_string(),
                    c.price_micros,
                )
            })
            .collect()
    }

    #[test]
    fn matching_by_format_size_geo_lists_deals_and_floors() {
        let list = vec![
            campaign("any", 1_000_000, |_| {}),
            campaign("banner300", 2_000_000, |c| {
                c.formats = vec!["banner".into()];
                c.sizes = vec!["300x250".into()];
            }),
            campaign("video", 3_000_000, |c| c.formats = vec!["video".into()]),
            campaign("usa", 1_500_000, |c| c.countries = vec!["USA".into()]),
            campaign("nonews", 1_200_000, |c| {
                c.domains_deny = vec!["news.example".into()]
            }),
            campaign("deal", 4_000_000, |c| c.deals = vec!["D1".into()]),
            campaign("apps", 1_100_000, |c| c.inventory = vec!["app".into()]),
            campaign("capped", 500_000, |c| c.max_cpm_micros = Some(2_600_000)),
            campaign("paused", 9_000_000, |c| c.paused = true),
        ];
        let mut slots = Slots::default();
        let (cat, skipped) = Catalog::build(7, &list, &mut slots);
        assert!(skipped.is_empty());
        assert_eq!(cat.campaigns.len(), 8);

        let banner = r#"{"id":"a","site":{"id":"s","domain":"shop.example"},"device":{"geo":{"country":"USA"}},
            "imp":[{"id":"1","banner":{"w":300,"h":250}}]}"#;
        assert_eq!(
            names(&cat, banner),
            vec![
                ("banner300".into(), 2000),
                ("usa".into(), 1500),
                ("nonews".into(), 1200),
                ("any".into(), 1000),
                ("capped".into(), 500)
            ]
        );
        // Another size, another country, a denied domain.
        let other = r#"{"id":"a","site":{"id":"s","domain":"news.example"},"device":{"geo":{"country":"FRA"}},
            "imp":[{"id":"1","banner":{"w":728,"h":90}}]}"#;
        assert_eq!(
            names(&cat, other),
            vec![("any".into(), 1000), ("capped".into(), 500)]
        );
        // A floor of 2.5 EUR = 2.75 USD: only the campaigns whose max reaches it, at the floor.
        let floored = r#"{"id":"a","app":{"id":"x"},"imp":[{"id":"1","bidfloor":2.5,"bidfloorcur":"EUR","video":{"mimes":["video/mp4"],"w":640,"h":480}}]}"#;
        assert_eq!(names(&cat, floored), vec![("video".into(), 3000)]);
        let unknown_cur = r#"{"id":"a","app":{"id":"x"},"imp":[{"id":"1","bidfloor":0.1,"bidfloorcur":"XXX","video":{"mimes":["video/mp4"]}}]}"#;
        assert!(names(&cat, unknown_cur).is_empty());
        // A private auction admits only the deal's campaign; it echoes the deal.
        let private = r#"{"id":"a","site":{"id":"s"},"imp":[{"id":"1","banner":{"w":1,"h":1},
            "pmp":{"private_auction":1,"deals":[{"id":"D1","bidfloor":3.0}]}}]}"#;
        assert_eq!(names(&cat, private), vec![("deal".into(), 4000)]);
        // Apps only on apps.
        let app = r#"{"id":"a","app":{"id":"x","bundle":"com.x"},"imp":[{"id":"1","native":{"request":"{\"assets\":[{\"id\":1,\"title\":{}}]}"}}]}"#;
        let got: Vec<String> = names(&cat, app).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, vec!["nonews", "apps", "any", "capped"]);
    }

    #[test]
    fn slots_survive_a_new_catalog() {
        let mut slots = Slots::default();
        let (a, _) = Catalog::build(1, &[campaign("c", 1_000_000, |_| {})], &mut slots);
        let (b, _) = Catalog::build(2, &[campaign("c", 2_000_000, |_| {})], &mut slots);
        assert!(Arc::ptr_eq(&a.campaigns[0].slot, &b.campaigns[0].slot));
    }
}
