//! OpenRTB 2.5 / 2.6 bid requests and responses: the fields this bidder reads, parsed once from
//! the wire and checked, and the response it writes.
//!
//! Parsing is strict where a wrong value would make us misread the auction (ids, sizes, media
//! objects, deals, floors, typed `ext` fields) and lenient elsewhere: unknown fields are ignored,
//! as the protocol asks. [`parse`] never panics; every refusal names the field ("imp[0].banner.w
//! must be positive"), which the endpoint returns as a 400.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use smallvec::SmallVec;

/// A string borrowed from the body when its JSON has no escapes, and copied when it has.
/// `#[serde(borrow)]` borrows a bare `Cow<str>` field, but one inside an `Option` or a `Vec`
/// would always be copied: those fields go through [`opt_text`] and [`vec_text`].
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

fn opt_text<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

/// A list of strings: up to `N` held in place, more on the heap.
pub type Texts<'a, const N: usize> = SmallVec<[Cow<'a, str>; N]>;

fn vec_text<'de: 'a, 'a, D: serde::Deserializer<'de>, const N: usize>(
    d: D,
) -> Result<Texts<'a, N>, D::Error> {
    Ok(SmallVec::<[Text<'a>; N]>::deserialize(d)?
        .into_iter()
        .map(|t| t.0)
        .collect())
}

/// A string whose value is not used, only its type checked (MIME types, consent strings): read
/// without copying it.
#[derive(Debug)]
pub struct AnyString;

impl<'de> Deserialize<'de> for AnyString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AnyString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyString, E> {
                Ok(AnyString)
            }
        }
        d.deserialize_str(V)
    }
}

/// The OpenRTB versions understood. Requests say theirs in the `x-openrtb-version` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 2.5: consent lives in `regs.ext` / `user.ext`.
    V25,
    /// 2.6 (also the default when no header is sent): `regs.gdpr`, `user.consent`, `dooh`.
    V26,
}

impl Version {
    /// From the header's value: `2.5`, `2.6`, `2.6.x`, `2.5.0`; any other 2.x is read as 2.6.
    pub fn from_header(v: Option<&str>) -> Result<Version, Invalid> {
        let Some(v) = v.map(str::trim) else {
            return Ok(Version::V26);
        };
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some("2"), Some("5")) => Ok(Version::V25),
            (Some("2"), Some(minor)) if minor.parse::<u32>().is_ok() => Ok(Version::V26),
            _ => Err(Invalid(format!(
                "x-openrtb-version {v:?} is not supported (2.5 and 2.6 are)"
            ))),
        }
    }
}

/// Why a request was refused: a short reason, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(s: impl Into<String>) -> Invalid {
    Invalid(s.into())
}

/// A bid request as read. Borrowed from the body where the JSON has no escapes.
#[derive(Debug, Deserialize)]
pub struct BidRequest<'a> {
    /// Auction id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Impressions offered.
    #[serde(default)]
    pub imp: SmallVec<[Imp<'a>; 1]>,
    /// Web inventory.
    #[serde(default, borrow)]
    pub site: Option<Site<'a>>,
    /// App inventory.
    #[serde(default, borrow)]
    pub app: Option<App<'a>>,
    /// Out-of-home inventory (2.6).
    #[serde(default)]
    pub dooh: Option<&'a RawValue>,
    /// The device.
    #[serde(default, borrow)]
    pub device: Option<Device<'a>>,
    /// The user.
    #[serde(default, borrow)]
    pub user: Option<User<'a>>,
    /// Auction type: 1 first price, 2 second price plus (default).
    #[serde(default)]
    pub at: Option<i64>,
    /// Milliseconds the exchange waits for an answer.
    #[serde(default)]
    pub tmax: Option<i64>,
    /// Currencies a bid may be in; empty: any (the exchange's default, USD).
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub cur: Texts<'a, 2>,
    /// Regulations.
    #[serde(default)]
    pub regs: Option<Regs>,
    /// 1: a test request; bids are not billed.
    #[serde(default)]
    pub test: Option<i64>,
}

/// One impression.
#[derive(Debug, Deserialize)]
pub struct Imp<'a> {
    /// Id, unique within the request.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
    /// Banner slot.
    #[serde(default)]
    pub banner: Option<Banner>,
    /// Video slot.
    #[serde(default)]
    pub video: Option<Video>,
    /// Audio slot.
    #[serde(default)]
    pub audio: Option<Audio>,
    /// Native slot.
    #[serde(default, borrow)]
    pub native: Option<Native<'a>>,
    /// Floor CPM.
    #[serde(default)]
    pub bidfloor: Option<f64>,
    /// Currency of the floor (default USD).
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub bidfloorcur: Option<Cow<'a, str>>,
    /// Private marketplace.
    #[serde(default, borrow)]
    pub pmp: Option<Pmp<'a>>,
    /// Seconds that may pass between the auction and the impression (and so its notice).
    #[serde(default)]
    pub exp: Option<i64>,
}

/// `imp.banner`.
#[derive(Debug, Deserialize)]
pub struct Banner {
    /// Width.
    #[serde(default)]
    pub w: Option<i64>,
    /// Height.
    #[serde(default)]
    pub h: Option<i64>,
    /// Allowed sizes.
    #[serde(default)]
    pub format: Option<SmallVec<[Format; 4]>>,
}

/// `imp.banner.format[]`.
#[derive(Debug, Deserialize)]
pub struct Format {
    /// Width.
    #[serde(default)]
    pub w: Option<i64>,
    /// Height.
    #[serde(default)]
    pub h: Option<i64>,
    /// Flexible: width ratio.
    #[serde(default)]
    pub wratio: Option<i64>,
    /// Flexible: height ratio.
    #[serde(default)]
    pub hratio: Option<i64>,
    /// Flexible: minimum width.
    #[serde(default)]
    pub wmin: Option<i64>,
}

/// `imp.video`.
#[derive(Debug, Deserialize)]
pub struct Video {
    /// Accepted MIME types.
    #[serde(default)]
    pub mimes: Vec<AnyString>,
    /// Width.
    #[serde(default)]
    pub w: Option<i64>,
    /// Height.
    #[serde(default)]
    pub h: Option<i64>,
    /// Kbps.
    #[serde(default)]
    pub minbitrate: Option<i64>,
    /// Kbps.
    #[serde(default)]
    pub maxbitrate: Option<i64>,
}

/// `imp.audio`.
#[derive(Debug, Deserialize)]
pub struct Audio {
    /// Accepted MIME types.
    #[serde(default)]
    pub mimes: Vec<AnyString>,
    /// Kbps.
    #[serde(default)]
    pub minbitrate: Option<i64>,
    /// Kbps.
    #[serde(default)]
    pub maxbitrate: Option<i64>,
}

/// `imp.native`: its `request` is a Native 1.x request, as a JSON string (or, from some
/// exchanges, an object).
#[derive(Debug, Deserialize)]
pub struct Native<'a> {
    /// The native request.
    #[serde(default, borrow)]
    pub request: Option<&'a RawValue>,
}

/// `imp.pmp`.
#[derive(Debug, Deserialize)]
pub struct Pmp<'a> {
    /// 1: only the deals below may bid.
    #[serde(default)]
    pub private_auction: Option<i64>,
    /// Deals.
    #[serde(default, borrow)]
    pub deals: SmallVec<[Deal<'a>; 2]>,
}

/// `imp.pmp.deals[]`.
#[derive(Debug, Deserialize)]
pub struct Deal<'a> {
    /// Deal id.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
    /// Floor of the deal.
    #[serde(default)]
    pub bidfloor: Option<f64>,
    /// Its currency.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub bidfloorcur: Option<Cow<'a, str>>,
}

/// `site`.
#[derive(Debug, Deserialize)]
pub struct Site<'a> {
    /// Site id.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
    /// Page URL.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub page: Option<Cow<'a, str>>,
    /// Domain.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub domain: Option<Cow<'a, str>>,
    /// IAB categories of the site.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub cat: Texts<'a, 4>,
    /// … of the section.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub sectioncat: Texts<'a, 4>,
    /// … of the page.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub pagecat: Texts<'a, 4>,
}

/// `app`.
#[derive(Debug, Deserialize)]
pub struct App<'a> {
    /// App id.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub id: Option<Cow<'a, str>>,
    /// Store bundle or package name.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub bundle: Option<Cow<'a, str>>,
    /// Domain.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub domain: Option<Cow<'a, str>>,
    /// IAB categories of the app.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub cat: Texts<'a, 4>,
    /// … of the section.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub sectioncat: Texts<'a, 4>,
    /// … of the page.
    #[serde(default, borrow, deserialize_with = "vec_text")]
    pub pagecat: Texts<'a, 4>,
}

/// `device`.
#[derive(Debug, Deserialize)]
pub struct Device<'a> {
    /// OpenRTB device type.
    #[serde(default)]
    pub devicetype: Option<i64>,
    /// Screen width.
    #[serde(default)]
    pub w: Option<i64>,
    /// Screen height.
    #[serde(default)]
    pub h: Option<i64>,
    /// Location.
    #[serde(default, borrow)]
    pub geo: Option<Geo<'a>>,
}

/// `device.geo`, `user.geo`.
#[derive(Debug, Deserialize)]
pub struct Geo<'a> {
    /// ISO 3166-1 alpha-3.
    #[serde(default, borrow, deserialize_with = "opt_text")]
    pub country: Option<Cow<'a, str>>,
    /// Metres.
    #[serde(default)]
    pub accuracy: Option<i64>,
}

/// `user`.
#[derive(Debug, Deserialize)]
pub struct User<'a> {
    /// Location.
    #[serde(default, borrow)]
    pub geo: Option<Geo<'a>>,
    /// 2.6 consent string.
    #[serde(default)]
    pub consent: Option<AnyString>,
    /// 2.5 extension: consent string.
    #[serde(default)]
    pub ext: Option<UserExt>,
}

/// `user.ext` as far as read: it must be an object, and `consent` a string.
#[derive(Debug, Deserialize)]
pub struct UserExt {
    /// GDPR consent string (2.5 convention).
    #[serde(default)]
    pub consent: Option<AnyString>,
}

/// `regs`.
#[derive(Debug, Deserialize)]
pub struct Regs {
    /// COPPA.
    #[serde(default)]
    pub coppa: Option<i64>,
    /// GDPR applies (2.6).
    #[serde(default)]
    pub gdpr: Option<i64>,
    /// Extension: must be an object.
    #[serde(default)]
    pub ext: Option<RegsExt>,
}

/// `regs.ext`.
#[derive(Debug, Deserialize)]
pub struct RegsExt {
    /// GDPR applies (2.5 convention).
    #[serde(default)]
    pub gdpr: Option<i64>,
}

/// The most impressions one request may hold.
pub const IMPS_MAX: usize = 64;

/// Parses and checks a request body. `Err` is a 400 with its message.
pub fn parse(body: &[u8], _version: Version) -> Result<BidRequest<'_>, Invalid> {
    let req: BidRequest<'_> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a bid request: {e}")))?;
    validate(&req)?;
    Ok(req)
}

/// `field` names the field for the error; it is only formatted when there is one.
fn positive(v: Option<i64>, field: impl FnOnce() -> String) -> Result<(), Invalid> {
    match v {
        Some(x) if x < 0 => Err(invalid(format!("{} must be a positive number", field()))),
        _ => Ok(()),
    }
}

fn validate(req: &BidRequest<'_>) -> Result<(), Invalid> {
    if req.id.is_empty() {
        return Err(invalid("request.id must not be empty"));
    }
    if req.imp.is_empty() {
        return Err(invalid("request.imp must contain at least one element"));
    }
    if req.imp.len() > IMPS_MAX {
        return Err(invalid(format!(
            "request.imp holds {} impressions, at most {IMPS_MAX}",
            req.imp.len()
        )));
    }
    let inventories = usize::from(req.site.is_some())
        + usize::from(req.app.is_some())
        + usize::from(req.dooh.is_some());
    if inventories > 1 {
        return Err(invalid(
            "no more than one of request.site, request.app or request.dooh may be present",
        ));
    }
    if let Some(i) = req
        .imp
        .iter()
        .position(|imp| imp.exp.is_some_and(|e| e < 0))
    {
        return Err(invalid(format!("imp[{i}].exp must not be negative")));
    }
    if req.tmax.is_some_and(|t| t < 0) {
        return Err(invalid("request.tmax must not be negative"));
    }
    if let Some(regs) = &req.regs {
        for (field, v) in [
            ("regs.gdpr", regs.gdpr),
            ("regs.ext.gdpr", regs.ext.as_ref().and_then(|e| e.gdpr)),
        ] {
            if v.is_some_and(|g| g != 0 && g != 1) {
                return Err(invalid(format!("request.{field} must be 0 or 1")));
            }
        }
    }
    if let Some(d) = &req.device {
        positive(d.w, || "request.device.w".into())?;
        positive(d.h, || "request.device.h".into())?;
        if let Some(g) = &d.geo {
            positive(g.accuracy, || "request.device.geo.accuracy".into())?;
        }
    }
    for (i, imp) in req.imp.iter().enumerate() {
        validate_imp(i, imp)?;
        let id = imp.id.as_deref().unwrap_or_default();
        if let Some(j) = req.imp[..i]
            .iter()
            .position(|o| o.id.as_deref() == Some(id))
        {
            return Err(invalid(format!(
                "request.imp[{j}].id and request.imp[{i}].id are both {id:?}"
            )));
        }
    }
    Ok(())
}

fn validate_imp(i: usize, imp: &Imp<'_>) -> Result<(), Invalid> {
    let at = |f: &str| format!("request.imp[{i}].{f}");
    match imp.id.as_deref() {
        None | Some("") => return Err(invalid(format!("request.imp[{i}] needs an id"))),
        Some(_) => {}
    }
    if imp.banner.is_none() && imp.video.is_none() && imp.audio.is_none() && imp.native.is_none() {
        return Err(invalid(format!(
            "request.imp[{i}] needs one of banner, video, audio or native"
        )));
    }
    if let Some(b) = &imp.banner {
        positive(b.w, || at("banner.w"))?;
        positive(b.h, || at("banner.h"))?;
        // A banner without sizes is valid OpenRTB (the slot takes what it is given, e.g. an
        // interstitial); only campaigns that target no size can match it.
        if let Some(formats) = &b.format {
            {
                for (k, f) in formats.iter().enumerate() {
                    let field = || at(&format!("banner.format[{k}]"));
                    positive(f.w, || format!("{}.w", field()))?;
                    positive(f.h, || format!("{}.h", field()))?;
                    let fixed = f.w.is_some() || f.h.is_some();
                    let flexible = f.wratio.is_some() || f.hratio.is_some() || f.wmin.is_some();
                    if fixed && !(f.w.is_some_and(|w| w > 0) && f.h.is_some_and(|h| h > 0)) {
                        return Err(invalid(format!("{} needs non-zero w and h", field())));
                    }
                    if !fixed && !flexible {
                        return Err(invalid(format!(
                            "{} needs either w and h or wmin, wratio and hratio",
                            field()
                        )));
                    }
                }
            }
        }
    }
    if let Some(v) = &imp.video {
        if v.mimes.is_empty() {
            return Err(invalid(format!(
                "{} must name at least one MIME type",
                at("video.mimes")
            )));
        }
        positive(v.w, || at("video.w"))?;
        positive(v.h, || at("video.h"))?;
        positive(v.minbitrate, || at("video.minbitrate"))?;
        positive(v.maxbitrate, || at("video.maxbitrate"))?;
    }
    if let Some(a) = &imp.audio {
        if a.mimes.is_empty() {
            return Err(invalid(format!(
                "{} must name at least one MIME type",
                at("audio.mimes")
            )));
        }
        positive(a.minbitrate, || at("audio.minbitrate"))?;
        positive(a.maxbitrate, || at("audio.maxbitrate"))?;
    }
    if let Some(n) = &imp.native {
        validate_native(|| at("native.request"), n)?;
    }
    if let Some(pmp) = &imp.pmp {
        for (k, d) in pmp.deals.iter().enumerate() {
            if d.id.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(format!(
                    "{} needs an id",
                    at(&format!("pmp.deals[{k}]"))
                )));
            }
        }
    }
    if imp.bidfloor.is_some_and(|f| !f.is_finite() || f < 0.0) {
        return Err(invalid(format!(
            "{} must be a non-negative number",
            at("bidfloor")
        )));
    }
    Ok(())
}

/// The parts of a Native 1.x request that are checked: at least one asset, asset ids unique.
#[derive(Deserialize)]
struct NativeRequest {
    #[serde(default)]
    assets: SmallVec<[NativeAsset; 8]>,
    /// Some exchanges wrap the request in `{"native": {…}}` (Native 1.0).
    #[serde(default)]
    native: Option<Box<NativeRequest>>,
}

#[derive(Deserialize)]
struct NativeAsset {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    title: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    img: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    video: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    data: Option<serde::de::IgnoredAny>,
}

fn validate_native(field: impl Fn() -> String, n: &Native<'_>) -> Result<(), Invalid> {
    let raw = n
        .request
        .ok_or_else(|| invalid(format!("{} is missing", field())))?;
    // A JSON string holding the request (the standard form), or the object itself.
    let text: Cow<'_, str> = if raw.get().starts_with('"') {
        Cow::Owned(
            serde_json::from_str::<String>(raw.get())
                .map_err(|e| invalid(format!("{}: {e}", field())))?,
        )
    } else {
        Cow::Borrowed(raw.get())
    };
    let mut req: NativeRequest = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("{} is not a native request: {e}", field())))?;
    if let Some(inner) = req.native.take()
        && req.assets.is_empty()
    {
        req = *inner;
    }
    if req.assets.is_empty() {
        return Err(invalid(format!(
            "{}.assets must hold at least one asset",
            field()
        )));
    }
    for (k, a) in req.assets.iter().enumerate() {
        if a.title.is_none() && a.img.is_none() && a.video.is_none() && a.data.is_none() {
            return Err(invalid(format!(
                "{}.assets[{k}] needs one of title, img, video or data",
                field()
            )));
        }
        if let Some(id) = a.id
            && req.assets[..k].iter().any(|o| o.id == Some(id))
        {
            return Err(invalid(format!(
                "{}.assets: id {id} is used twice",
                field()
            )));
        }
    }
    Ok(())
}

impl BidRequest<'_> {
    /// The auction is first-price (`at` = 1): a win clears at the bid price.
    pub fn first_price(&self) -> bool {
        self.at == Some(1)
    }

    /// The country of the device or, failing that, the user.
    pub fn country(&self) -> Option<&str> {
        let device = self
            .device
            .as_ref()
            .and_then(|d| d.geo.as_ref())
            .and_then(|g| g.country.as_deref());
        device.or_else(|| {
            self.user
                .as_ref()
                .and_then(|u| u.geo.as_ref())
                .and_then(|g| g.country.as_deref())
        })
    }
}

/// A bid response (the parts written). Borrowed where it can be when we write one; owned when
/// read back (the simulated exchange and the tests).
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct BidResponse<'a> {
    /// The request's id.
    pub id: Cow<'a, str>,
    /// One seat: ours.
    pub seatbid: Vec<SeatBid<'a>>,
    /// Our currency.
    pub cur: Cow<'a, str>,
}

/// `seatbid[]`.
#[derive(Debug, Serialize, Deserialize, Default)]
pub struct SeatBid<'a> {
    /// Seat id.
    pub seat: Cow<'a, str>,
    /// Bids, one per impression at most.
    pub bid: Vec<Bid<'a>>,
}

/// `seatbid[].bid[]`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Bid<'a> {
    /// Bid id.
    pub id: String,
    /// The impression.
    pub impid: Cow<'a, str>,
    /// CPM, written from integer micros per impression by [`push_cpm`]: exact, no float.
    pub price: Box<RawValue>,
    /// Win notice.
    pub nurl: String,
    /// Billing notice.
    pub burl: String,
    /// Loss notice.
    pub lurl: String,
    /// Campaign id.
    pub cid: Cow<'a, str>,
    /// Creative id.
    pub crid: String,
    /// Deal id, echoed when bidding through a deal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dealid: Option<String>,
    /// Width of the creative.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub w: Option<i64>,
    /// Height of the creative.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub h: Option<i64>,
    /// Advertiser domains.
    pub adomain: Vec<String>,
    /// OpenRTB 2.6: seconds we are willing to wait between the auction and the impression.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<i64>,
}

/// Appends a price of `micros` per impression as an OpenRTB CPM number: micros per impression
/// are currency units per thousand, written in decimal (`2500` → `2.500`), exact, no float.
pub fn push_cpm(out: &mut Vec<u8>, micros: i64) {
    if micros < 0 {
        out.push(b'-');
    }
    let m = micros.unsigned_abs();
    out.extend_from_slice(itoa::Buffer::new().format(m / 1000).as_bytes());
    let frac = m % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// Appends `s` as a JSON string, quotes included, escaped as serde_json escapes (into the
/// buffer, no allocation).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<(), &str>) {
        let got = parse(body.as_bytes(), Version::V26).map(|_| ());
        match (got, expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.0.contains(want), "{body}: {e} does not say {want:?}"),
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let banner = r#""banner":{"w":300,"h":250}"#;
        check(
            &format!(r#"{{"id":"a","imp":[{{"id":"1",{banner}}}]}}"#),
            Ok(()),
        );
        check("null", Err("not a bid request"));
        check("{}", Err("not a bid request"));
        check(r#"{"id":"a","imp":[]}"#, Err("at least one"));
        check(
            r#"{"id":"a","imp":[{"id":"1"}]}"#,
            Err("needs one of banner"),
        );
        check(r#"{"id":"a","imp":[{"id":"1","banner":{}}]}"#, Ok(()));
        check(
            r#"{"id":"a","imp":[{"id":"1","banner":{"w":-1,"h":2}}]}"#,
            Err("banner.w must be"),
        );
        check(
            r#"{"id":"a","imp":[{"id":"1","banner":{"format":[{"w":3}]}}]}"#,
            Err("non-zero"),
        );
        check(
            &format!(r#"{{"id":"a","imp":[{{"id":"1",{banner}}},{{"id":"1",{banner}}}]}}"#),
            Err("both \"1\""),
        );
        check(
            r#"{"id":"a","imp":[{"id":"1","video":{"mimes":[]}}]}"#,
            Err("MIME"),
        );
        check(
            r#"{"id":"a","imp":[{"id":"1","native":{"request":"{\"assets\":[]}"}}]}"#,
            Err("at least one asset"),
        );
        check(
            r#"{"id":"a","imp":[{"id":"1","native":{"request":"{\"assets\":[{\"id\":1,\"title\":{}},{\"id\":1,\"img\":{}}]}"}}]}"#,
            Err("used twice"),
        );
        check(
            r#"{"id":"a","imp":[{"id":"1","native":{"request":{"assets":[{"id":1,"title":{"len":9}}]}}}]}"#,
            Ok(()),
        );
        check(
            &format!(r#"{{"id":"a","tmax":-2,"imp":[{{"id":"1",{banner}}}]}}"#),
            Err("tmax"),
        );
        check(
            &format!(r#"{{"id":"a","site":{{}},"imp":[{{"id":"1",{banner}}}]}}"#),
            Ok(()),
        );
        check(
            &format!(
                r#"{{"id":"a","site":{{"id":"s"}},"app":{{}},"imp":[{{"id":"1",{banner}}}]}}"#
            ),
            Err("no more than one"),
        );
        check(
            &format!(r#"{{"id":"a","regs":{{"gdpr":2}},"imp":[{{"id":"1",{banner}}}]}}"#),
            Err("gdpr"),
        );
        check(
            &format!(r#"{{"id":"a","regs":{{"ext":"x"}},"imp":[{{"id":"1",{banner}}}]}}"#),
            Err("not a bid request"),
        );
        check(
            &format!(
                r#"{{"id":"a","user":{{"ext":{{"consent":1}}}},"imp":[{{"id":"1",{banner}}}]}}"#
            ),
            Err("not a bid request"),
        );
        check(
            &format!(r#"{{"id":"a","imp":[{{"id":"1","pmp":{{"deals":[{{}}]}},{banner}}}]}}"#),
            Err("deals[0] needs an id"),
        );
    }

    #[test]
    fn prices_are_written_exactly() {
        let cpm = |m: i64| {
            let mut out = Vec::new();
            push_cpm(&mut out, m);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(cpm(2500), "2.500");
        assert_eq!(cpm(1), "0.001");
        assert_eq!(cpm(0), "0.000");
        assert_eq!(cpm(-1_050), "-1.050");
        assert_eq!(cpm(1_234_567), "1234.567");
        let back = shared::Money::from_cpm_str(&cpm(1_234_567)).unwrap();
        assert_eq!(back.micros(), 1_234_567);
    }

    #[test]
    fn strings_are_written_as_serde_json_reads_them() {
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nand\ttab\u{1}",
            "ünï/cödé ✓",
            "\u{7f}",
        ] {
            let mut out = Vec::new();
            push_json_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s, "{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn versions_from_the_header() {
        assert_eq!(Version::from_header(None), Ok(Version::V26));
        assert_eq!(Version::from_header(Some("2.5")), Ok(Version::V25));
        assert_eq!(Version::from_header(Some("2.6.1")), Ok(Version::V26));
        assert!(Version::from_header(Some("3.0")).is_err());
        assert!(Version::from_header(Some("banana")).is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    const SAMPLE: &str = r#"{"id":"a","at":2,"tmax":120,"cur":["USD"],"imp":[{"id":"1","bidfloor":0.5,
        "banner":{"w":300,"h":250,"format":[{"w":300,"h":250}]},"pmp":{"deals":[{"id":"d"}]}}],
        "site":{"id":"s","domain":"x.example","cat":["IAB1"]},"device":{"devicetype":2,"geo":{"country":"USA"}},
        "regs":{"gdpr":1,"ext":{"gdpr":0}},"user":{"ext":{"consent":"c"}}}"#;

    proptest! {
        /// Any bytes: an answer, never a panic.
        #[test]
        fn any_body_is_answered(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&body, Version::V26);
        }

        /// A real request with one byte changed or cut short: an answer, never a panic.
        #[test]
        fn a_damaged_request_is_answered(at in 0usize..600, to in any::<u8>(), cut in 0usize..600) {
            let mut b = SAMPLE.as_bytes().to_vec();
            let at = at % b.len();
            b[at] = to;
            b.truncate(cut.max(1).min(b.len()));
            let _ = parse(&b, Version::V25);
        }
    }
}
