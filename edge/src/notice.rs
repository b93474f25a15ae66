//! Win, billing and loss notices.
//!
//! When we bid, each notice URL names everything needed to settle the impression without any
//! state at the edge that receives it: the region, the lease and our bid's number under it
//! (the charge's identity), the `exp` class it is held in, campaign, exchange, auction and imp
//! ids, the bid price, whether the auction was first-price, and an HMAC-SHA256 over all of it. Lease ids are numbered per region, so an edge refuses a notice of another region before
//! anything else (the exchange retries elsewhere): settled here, it would land on a lease of
//! ours that happens to share the number. The
//! exchange appends nothing we trust except the clearing price (`${AUCTION_PRICE}`) and the loss
//! reason (`${AUCTION_LOSS}`), which it substitutes.
//!
//! A notice whose signature does not verify (unsigned, altered, or signed with a key we do not
//! hold) is refused; so is a clearing price above the bid price. A price the exchange left
//! unreplaced, URL-encoded or encrypted cannot be read: the bid price is spent (never less) and
//! the case is counted.

use hmac::{KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use shared::{EventKey, LeaseId, Money};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Which notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `nurl`: the bid won.
    Win,
    /// `burl`: the impression is billable.
    Bill,
    /// `lurl`: the bid lost.
    Loss,
}

impl Kind {
    /// Its name in the URL path and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Win => "win",
            Kind::Bill => "bill",
            Kind::Loss => "loss",
        }
    }

    /// From the URL path.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "win" => Some(Kind::Win),
            "bill" => Some(Kind::Bill),
            "loss" => Some(Kind::Loss),
            _ => None,
        }
    }
}

/// Keys that sign notices: the current one signs; it and the previous one (during a rotation)
/// verify. Each key is held as an HMAC already keyed (its inner and outer pads hashed once), so
/// signing a notice costs only the compressions of its own bytes.
#[derive(Clone)]
pub struct Signer {
    region: String,
    current: HmacSha256,
    previous: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

/// Bytes of the truncated HMAC carried in a URL (128 bits).
const SIG_BYTES: usize = 16;

impl Signer {
    /// A signer of `region`'s notices with `current` and, during a rotation, the `previous` key
    /// still accepted.
    pub fn new(region: &str, current: Vec<u8>, previous: Option<Vec<u8>>) -> Signer {
        // HMAC takes a key of any length.
        let keyed = |k: &[u8]| {
            <HmacSha256 as KeyInit>::new_from_slice(k).expect("HMAC takes any key length")
        };
        Signer {
            region: region.to_string(),
            current: keyed(&current),
            previous: previous.as_deref().map(keyed),
        }
    }

    /// The MAC of a bid's `fields`: one for its three notices. `kind` is `Some` only to verify
    /// a notice signed before the MAC left the kind out (an edge of the version before, during
    /// an upgrade).
    fn mac(&self, key: &HmacSha256, fields: &Fields<'_>, kind: Option<Kind>) -> [u8; SIG_BYTES] {
        let mut m = key.clone();
        let (mut lease, mut bid) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (mut number, mut class) = (itoa::Buffer::new(), itoa::Buffer::new());
        let mut part = |p: &str| {
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p.as_bytes());
        };
        // Length-prefixed fields: no two different bids share the signed bytes.
        part(self.region.as_str());
        if let Some(kind) = kind {
            part(kind.as_str());
        }
        for p in [
            lease.format(fields.lease.0),
            number.format(fields.bid),
            class.format(fields.hold_s),
            fields.campaign,
            fields.exchange,
            fields.auction,
            fields.imp,
            bid.format(fields.bid_micros),
            if fields.first_price { "1" } else { "2" },
        ] {
            part(p);
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; SIG_BYTES];
        out.copy_from_slice(&full[..SIG_BYTES]);
        out
    }

    /// Whether `sig` is a MAC of `fields` by our current or previous key: the MAC of the bid
    /// (this version's), or of the bid and `kind` (the version before, whose URLs are still
    /// being called after an upgrade).
    fn verify(&self, fields: &Fields<'_>, kind: Kind, sig: &[u8]) -> bool {
        let ok = |key: &HmacSha256| {
            [None, Some(kind)].into_iter().any(|k| {
                let want = self.mac(key, fields, k);
                // Constant time: compare every byte.
                sig.len() == SIG_BYTES
                    && want.iter().zip(sig).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            })
        };
        ok(&self.current) || self.previous.as_ref().is_some_and(ok)
    }
}

/// A bid's signature as its notice URLs carry it (hex): one HMAC for its win, billing and loss
/// notices alike. The kind is the URL's path, outside the MAC: all three go to the exchange in
/// one answer, so the only party that could call one kind's URL as another's holds all three
/// anyway; what a notice settles (lease, bid number, prices, ids, region) is signed.
pub struct Signature([u8; SIG_BYTES * 2]);

/// The signed fields of a bid's notices.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    /// The lease the bid was reserved under.
    pub lease: LeaseId,
    /// Our bid's number under the lease: with the lease, the charge's identity.
    pub bid: u64,
    /// The `exp` class (seconds, one of [`crate::lease::EXP_CLASSES_S`]) its reservation is
    /// held in.
    pub hold_s: u32,
    /// The campaign.
    pub campaign: &'a str,
    /// The exchange.
    pub exchange: &'a str,
    /// The auction (the request's id).
    pub auction: &'a str,
    /// The impression.
    pub imp: &'a str,
    /// The bid price, micros per impression.
    pub bid_micros: i64,
    /// The auction was first-price: a win clears at the bid.
    pub first_price: bool,
}

const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Fields<'_> {
    /// The bid's signature, for all three of its notice URLs.
    pub fn sign(&self, signer: &Signer) -> Signature {
        let sig = signer.mac(&signer.current, self, None);
        let mut hex = [0u8; SIG_BYTES * 2];
        hex::encode_to_slice(sig, &mut hex).expect("twice the bytes");
        Signature(hex)
    }

    /// Appends the `kind` notice URL under `base` (e.g. `http://edge-1:8080`; the settings
    /// refuse a base that would need escaping in JSON) to `out`, with the exchange's price
    /// (and, for a loss, reason) macros. Every value is percent-encoded: the URL is printable
    /// ASCII with no quote or backslash, so it goes into a JSON string as it is.
    pub fn write_url(
        &self,
        out: &mut Vec<u8>,
        kind: Kind,
        base: &str,
        signer: &Signer,
        sig: &Signature,
    ) {
        let mut num = itoa::Buffer::new();
        let mut put = |s: &str| out.extend_from_slice(s.as_bytes());
        put(base);
        put("/notice/");
        put(kind.as_str());
        put("?g=");
        utf8_percent_encode(&signer.region, QUERY).for_each(&mut put);
        put("&l=");
        put(num.format(self.lease.0));
        put("&n=");
        put(num.format(self.bid));
        put("&h=");
        put(num.format(self.hold_s));
        for (name, value) in [
            ("&c=", self.campaign),
            ("&x=", self.exchange),
            ("&a=", self.auction),
            ("&i=", self.imp),
        ] {
            put(name);
            utf8_percent_encode(value, QUERY).for_each(&mut put);
        }
        put("&b=");
        put(num.format(self.bid_micros));
        put(if self.first_price { "&f=1" } else { "&f=2" });
        put("&s=");
        put(std::str::from_utf8(&sig.0).expect("hex is ASCII"));
        match kind {
            Kind::Win | Kind::Bill => put("&p=${AUCTION_PRICE}"),
            Kind::Loss => put("&p=${AUCTION_PRICE}&r=${AUCTION_LOSS}"),
        }
    }

    /// The `kind` notice URL under `base`, signed (tests, the fuzz target).
    pub fn url(&self, kind: Kind, base: &str, signer: &Signer) -> String {
        let mut out = Vec::with_capacity(base.len() + 200);
        self.write_url(&mut out, kind, base, signer, &self.sign(signer));
        String::from_utf8(out).expect("a URL of ASCII and a UTF-8 base")
    }
}

/// How the clearing price arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Price {
    /// A readable decimal CPM, converted to micros per impression.
    Cleared(Money),
    /// First-price auction: the bid price, by rule.
    FirstPrice,
    /// No `p` parameter, or empty.
    Missing,
    /// The macro came back unreplaced (possibly URL-encoded).
    Unreplaced,
    /// Something that is not a price: encrypted, or garbage.
    Unreadable,
}

impl Price {
    /// The metric label of the case.
    pub fn as_str(self) -> &'static str {
        match self {
            Price::Cleared(_) => "cleared",
            Price::FirstPrice => "first_price",
            Price::Missing => "missing",
            Price::Unreplaced => "unreplaced",
            Price::Unreadable => "unreadable",
        }
    }
}

/// A notice that verified.
#[derive(Clone, Debug)]
pub struct Notice {
    /// Which one.
    pub kind: Kind,
    /// Its lease.
    pub lease: LeaseId,
    /// Our bid's number under the lease.
    pub bid_no: u64,
    /// The index of its `exp` class in [`crate::lease::EXP_CLASSES_S`].
    pub class: usize,
    /// Its campaign.
    pub campaign: String,
    /// The impression's key: exchange, auction, imp.
    pub key: EventKey,
    /// The bid price, micros per impression.
    pub bid: Money,
    /// The clearing price as read.
    pub price: Price,
}

impl Notice {
    /// What a win or billing notice spends: the clearing price, or the bid price when the
    /// auction was first-price or the price cannot be read. A loss spends nothing.
    pub fn spend(&self) -> Option<Money> {
        match (self.kind, self.price) {
            (Kind::Loss, _) => None,
            (_, Price::Cleared(p)) => Some(p),
            _ => Some(self.bid),
        }
    }
}

/// Why a notice was refused. Nothing is settled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A required parameter is absent.
    #[error("notice lacks parameter {0:?}")]
    Missing(&'static str),
    /// A parameter does not hold what it should.
    #[error("notice parameter {0:?} is malformed")]
    Malformed(&'static str),
    /// The signature does not match: unsigned, altered, or an unknown key.
    #[error("notice signature does not verify")]
    BadSignature,
    /// A notice of another region's lease: send it to an edge of that region.
    #[error("notice belongs to region {theirs}; this edge serves region {ours}")]
    OtherRegion {
        /// The notice's region.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// The exchange reports a clearing price above our bid.
    #[error("clearing price {price} is above the bid price {bid}")]
    PriceAboveBid {
        /// The clearing price.
        price: Money,
        /// Our bid.
        bid: Money,
    },
}

impl Refused {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Missing(_) | Refused::Malformed(_) => "malformed",
            Refused::BadSignature => "bad_signature",
            Refused::OtherRegion { .. } => "other_region",
            Refused::PriceAboveBid { .. } => "price_above_bid",
        }
    }
}

/// Longest query string read.
pub const QUERY_MAX: usize = 4096;

/// Reads and verifies a notice from its path kind and query string.
pub fn parse(kind: Kind, query: &str, signer: &Signer) -> Result<Notice, Refused> {
    if query.len() > QUERY_MAX {
        return Err(Refused::Malformed("query"));
    }
    let mut p: [Option<&str>; 12] = [None; 12];
    const NAMES: [&str; 12] = ["l", "c", "x", "a", "i", "b", "f", "s", "p", "g", "n", "h"];
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if let Some(n) = NAMES.iter().position(|name| *name == k) {
            if p[n].is_some() {
                // A repeated parameter could mean two things; refuse rather than choose.
                return Err(Refused::Malformed(NAMES[n]));
            }
            p[n] = Some(v);
        }
    }
    let need = |n: usize| p[n].ok_or(Refused::Missing(NAMES[n]));
    let decode = |n: usize| -> Result<String, Refused> {
        percent_decode_str(need(n)?)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Refused::Malformed(NAMES[n]))
    };
    let region = decode(9)?;
    if region != signer.region {
        return Err(Refused::OtherRegion {
            theirs: region,
            ours: signer.region.clone(),
        });
    }
    let lease: u64 = need(0)?.parse().map_err(|_| Refused::Malformed("l"))?;
    let bid_no: u64 = need(10)?
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(Refused::Malformed("n"))?;
    let hold_s: u32 = need(11)?.parse().map_err(|_| Refused::Malformed("h"))?;
    let campaign = decode(1)?;
    let exchange = decode(2)?;
    let auction = decode(3)?;
    let imp = decode(4)?;
    let bid_micros: i64 = need(5)?.parse().map_err(|_| Refused::Malformed("b"))?;
    let first_price = match need(6)? {
        "1" => true,
        "2" => false,
        _ => return Err(Refused::Malformed("f")),
    };
    let sig = hex::decode(need(7)?).map_err(|_| Refused::BadSignature)?;
    let fields = Fields {
        lease: LeaseId(lease),
        bid: bid_no,
        hold_s,
        campaign: &campaign,
        exchange: &exchange,
        auction: &auction,
        imp: &imp,
        bid_micros,
        first_price,
    };
    if !signer.verify(&fields, kind, &sig) {
        return Err(Refused::BadSignature);
    }
    // Signed by us: a class we use.
    let class = crate::lease::EXP_CLASSES_S
        .iter()
        .position(|c| *c == hold_s)
        .ok_or(Refused::Malformed("h"))?;
    // Signed by us: these were valid when we bid.
    let key =
        EventKey::from_parts(&exchange, &auction, &imp).map_err(|_| Refused::Malformed("a"))?;
    let bid = Money::from_micros(bid_micros);
    let price = if first_price {
        Price::FirstPrice
    } else {
        read_price(p[8])
    };
    // A loss notice's price is the winner's, above ours by nature; it spends nothing.
    if let Price::Cleared(c) = price
        && c > bid
        && kind != Kind::Loss
    {
        return Err(Refused::PriceAboveBid { price: c, bid });
    }
    Ok(Notice {
        kind,
        lease: LeaseId(lease),
        bid_no,
        class,
        campaign,
        key,
        bid,
        price,
    })
}

/// The exchange's `${AUCTION_PRICE}`, in whatever state it arrived.
fn read_price(raw: Option<&str>) -> Price {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Price::Missing;
    };
    // Decode up to twice: some exchanges encode the substituted URL once more.
    let mut text = raw.to_owned();
    for _ in 0..3 {
        if text.to_ascii_uppercase().contains("AUCTION_PRICE") {
            return Price::Unreplaced;
        }
        if let Ok(m) = Money::from_cpm_str(&text) {
            return Price::Cleared(m);
        }
        match percent_decode_str(&text).decode_utf8() {
            Ok(d) if d != text => text = d.into_owned(),
            _ => break,
        }
    }
    Price::Unreadable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new("eu-1", b"region-key-1".to_vec(), None)
    }

    fn fields() -> Fields<'static> {
        Fields {
            lease: LeaseId(42),
            bid: 7,
            hold_s: 300,
            campaign: "shoes",
            exchange: "sim",
            auction: "auc/1 &x=2",
            imp: "1",
            bid_micros: 2500,
            first_price: false,
        }
    }

    /// The query the exchange calls, with its price macro substituted by `price`.
    fn called(kind: Kind, price: &str) -> String {
        let url = fields().url(kind, "http://e:1", &signer());
        let q = url.split_once('?').unwrap().1;
        q.replace("${AUCTION_PRICE}", price)
            .replace("${AUCTION_LOSS}", "102")
    }

    #[test]
    fn a_signed_notice_round_trips_with_awkward_ids() {
        let n = parse(Kind::Win, &called(Kind::Win, "1.75"), &signer()).unwrap();
        assert_eq!(n.key.auction_id(), "auc/1 &x=2");
        assert_eq!((n.bid_no, crate::lease::EXP_CLASSES_S[n.class]), (7, 300));
        assert_eq!(n.price, Price::Cleared(Money::from_micros(1750)));
        assert_eq!(n.spend(), Some(Money::from_micros(1750)));
        let loss = parse(Kind::Loss, &called(Kind::Loss, ""), &signer()).unwrap();
        assert_eq!(loss.spend(), None);
        // A loss carries the winner's price, above ours: still a valid loss.
        let loss = parse(Kind::Loss, &called(Kind::Loss, "9.99"), &signer()).unwrap();
        assert_eq!(loss.spend(), None);
    }

    #[test]
    fn altered_unsigned_or_foreign_key_is_refused() {
        let q = called(Kind::Win, "1.75");
        assert_eq!(
            parse(Kind::Win, &q.replace("b=2500", "b=9500"), &signer()).unwrap_err(),
            Refused::BadSignature
        );
        let unsigned: String = q
            .split('&')
            .filter(|p| !p.starts_with("s="))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            parse(Kind::Win, &unsigned, &signer()).unwrap_err(),
            Refused::Missing("s")
        );
        let other = Signer::new("eu-1", b"someone-else".to_vec(), None);
        assert_eq!(
            parse(Kind::Win, &q, &other).unwrap_err(),
            Refused::BadSignature
        );
        // During a rotation the previous key still verifies.
        let rotated = Signer::new(
            "eu-1",
            b"region-key-2".to_vec(),
            Some(b"region-key-1".to_vec()),
        );
        assert!(parse(Kind::Win, &q, &rotated).is_ok());
        // Another region's edge refuses it by name, even with the same key: its lease numbers
        // are not ours.
        let elsewhere = Signer::new("us-1", b"region-key-1".to_vec(), None);
        assert_eq!(
            parse(Kind::Win, &q, &elsewhere).unwrap_err(),
            Refused::OtherRegion {
                theirs: "eu-1".into(),
                ours: "us-1".into()
            }
        );
        // A notice that claims another region is no longer ours: the region is signed.
        assert_eq!(
            parse(Kind::Win, &q.replace("g=eu-1", "g=us-1"), &elsewhere).unwrap_err(),
            Refused::BadSignature
        );
        let no_region: String = q
            .split('&')
            .filter(|p| !p.starts_with("g="))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            parse(Kind::Win, &no_region, &signer()).unwrap_err(),
            Refused::Missing("g")
        );
        let twice = format!("{q}&l=43");
        assert_eq!(
            parse(Kind::Win, &twice, &signer()).unwrap_err(),
            Refused::Malformed("l")
        );
        // Our bid's number and its class are signed like the rest.
        assert_eq!(
            parse(Kind::Win, &q.replace("n=7", "n=8"), &signer()).unwrap_err(),
            Refused::BadSignature
        );
        assert_eq!(
            parse(Kind::Win, &q.replace("h=300", "h=3600"), &signer()).unwrap_err(),
            Refused::BadSignature
        );
        assert_eq!(
            parse(Kind::Win, &q.replace("n=7", "n=0"), &signer()).unwrap_err(),
            Refused::Malformed("n")
        );
    }

    #[test]
    fn one_signature_serves_the_bids_three_notices() {
        let s = signer();
        let sig = fields().sign(&s);
        for kind in [Kind::Win, Kind::Bill, Kind::Loss] {
            let mut url = Vec::new();
            fields().write_url(&mut url, kind, "http://e:1", &s, &sig);
            let url = String::from_utf8(url).unwrap();
            assert_eq!(url, fields().url(kind, "http://e:1", &s));
            let q = url
                .split_once('?')
                .unwrap()
                .1
                .replace("${AUCTION_PRICE}", "1.0");
            let n = parse(kind, &q, &s).unwrap();
            assert_eq!((n.kind, n.lease, n.bid_no), (kind, LeaseId(42), 7));
        }
    }

    /// A URL of the version before, whose MAC covered the kind too (still called after an
    /// upgrade), verifies as that kind, and as no other.
    #[test]
    fn a_notice_signed_with_its_kind_still_verifies() {
        let s = signer();
        let old = s.mac(&s.current, &fields(), Some(Kind::Bill));
        let url = fields().url(Kind::Bill, "http://e:1", &s);
        let q = url
            .split_once('?')
            .unwrap()
            .1
            .replace("${AUCTION_PRICE}", "1.0");
        let mut hex_old = [0u8; SIG_BYTES * 2];
        hex::encode_to_slice(old, &mut hex_old).unwrap();
        let sig_new = std::str::from_utf8(&fields().sign(&s).0)
            .unwrap()
            .to_owned();
        let q = q.replace(&sig_new, std::str::from_utf8(&hex_old).unwrap());
        assert!(parse(Kind::Bill, &q, &s).is_ok());
        assert_eq!(parse(Kind::Win, &q, &s).unwrap_err(), Refused::BadSignature);
    }

    #[test]
    fn a_price_above_the_bid_is_refused() {
        let e = parse(Kind::Bill, &called(Kind::Bill, "2.501"), &signer()).unwrap_err();
        assert!(matches!(e, Refused::PriceAboveBid { .. }), "{e}");
        assert!(parse(Kind::Bill, &called(Kind::Bill, "2.5"), &signer()).is_ok());
    }

    #[test]
    fn unreadable_prices_spend_the_bid_and_say_why() {
        for (p, want) in [
            ("${AUCTION_PRICE}", Price::Unreplaced),
            ("%24%7BAUCTION_PRICE%7D", Price::Unreplaced),
            ("%2524%257BAUCTION_PRICE%257D", Price::Unreplaced),
            ("", Price::Missing),
            ("WEp8wQAAAABnFd5EkB2k1wJeFcAj-2Eg", Price::Unreadable),
            ("-1", Price::Unreadable),
            ("%31.5", Price::Cleared(Money::from_micros(1500))),
        ] {
            let n = parse(Kind::Bill, &called(Kind::Bill, p), &signer()).unwrap();
            assert_eq!(n.price, want, "{p}");
            let spent = n.spend().unwrap();
            assert!(spent <= n.bid);
            if !matches!(want, Price::Cleared(_)) {
                assert_eq!(spent, n.bid, "{p}: the bid is spent, never less");
            }
        }
    }

    #[test]
    fn first_price_clears_at_the_bid() {
        let mut f = fields();
        f.first_price = true;
        let url = f.url(Kind::Win, "http://e:1", &signer());
        let q = url
            .split_once('?')
            .unwrap()
            .1
            .replace("${AUCTION_PRICE}", "1.0");
        let n = parse(Kind::Win, &q, &signer()).unwrap();
        assert_eq!(n.price, Price::FirstPrice);
        assert_eq!(n.spend(), Some(Money::from_micros(2500)));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any query string: an answer, never a panic.
        #[test]
        fn any_query_is_answered(q in ".{0,300}") {
            let _ = parse(Kind::Win, &q, &Signer::new("r", b"k".to_vec(), None));
        }

        /// Changing any one byte of a signed notice's signed part makes it fail to verify (or
        /// leaves it meaning the same thing, e.g. a hex digit's case).
        #[test]
        fn a_flipped_byte_never_verifies_as_something_else(at in 0usize..200, to in 0u8..128) {
            let signer = Signer::new("eu-1", b"region-key".to_vec(), None);
            let f = Fields {
                lease: LeaseId(9), bid: 3, hold_s: 60, campaign: "c1", exchange: "sim",
                auction: "a-1", imp: "1", bid_micros: 2500, first_price: false,
            };
            let url = f.url(Kind::Bill, "http://e", &signer);
            let q = url.split_once('?').unwrap().1.replace("${AUCTION_PRICE}", "1.0");
            let signed_len = q.find("&p=").unwrap();
            let at = at % signed_len;
            let mut bytes = q.clone().into_bytes();
            bytes[at] = to;
            let Ok(changed) = String::from_utf8(bytes) else { return Ok(()) };
            if let Ok(n) = parse(Kind::Bill, &changed, &signer) {
                prop_assert_eq!(n.lease, LeaseId(9));
                prop_assert_eq!((n.bid_no, n.class), (3, 9));
                prop_assert_eq!(n.bid.micros(), 2500);
                prop_assert_eq!(n.key.to_string(), EventKey::from_parts("sim", "a-1", "1").unwrap().to_string());
            }
        }
    }
}
