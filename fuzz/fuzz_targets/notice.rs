//! Notice parsing, two ways, chosen by the first byte:
//! - raw: any query gets an answer, never a panic, and nothing unsigned verifies;
//! - signed: fields taken from the input are signed as the edge signs them, the exchange's
//!   price macro is replaced by input bytes, and the parse must give back exactly the signed
//!   fields. This reaches what the raw mode cannot: the code after the HMAC check (event keys,
//!   the price reader, the price-above-bid refusal).
#![no_main]

use edge::notice::{Fields, Kind, Price, Refused, Signer, parse};
use libfuzzer_sys::fuzz_target;
use shared::id::LeaseId;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let signer = Signer::new("fuzz", b"fuzz-key-fuzz-key".to_vec(), None);
    if mode % 2 == 0 {
        for kind in [Kind::Win, Kind::Bill, Kind::Loss] {
            if let Ok(n) = parse(kind, text, &signer) {
                // Only a correct HMAC gets here; the fuzzer cannot forge one.
                assert!(text.contains("s="), "verified without a signature: {n:?}");
            }
        }
        return;
    }
    // campaign \n exchange \n auction \n imp \n bid \n price
    let mut parts = text.splitn(6, '\n');
    let mut next = || parts.next().unwrap_or("");
    let (campaign, exchange, auction, imp) = (next(), next(), next(), next());
    let bid_micros: i64 = next().parse().unwrap_or(1);
    let price = next();
    let kind = [Kind::Win, Kind::Bill, Kind::Loss][usize::from(mode / 2 % 3)];
    let fields = Fields {
        lease: LeaseId(u64::from(mode)),
        bid: u64::from(mode / 6) + 1,
        hold_s: edge::lease::EXP_CLASSES_S[usize::from(mode) % edge::lease::EXP_CLASSES_S.len()],
        campaign,
        exchange,
        auction,
        imp,
        bid_micros,
        first_price: mode & 0x80 != 0,
    };
    // One signature for the bid's three notices: the one called is `kind`'s.
    let url = fields.url(kind, "http://edge", &signer);
    let query = url.split_once('?').expect("a query").1;
    let called = query
        .replace("${AUCTION_PRICE}", price)
        .replace("${AUCTION_LOSS}", "102");
    match parse(kind, &called, &signer) {
        Ok(n) => {
            assert_eq!(n.kind, kind);
            assert_eq!(n.lease, fields.lease);
            assert_eq!(n.bid_no, fields.bid);
            assert_eq!(edge::lease::EXP_CLASSES_S[n.class], fields.hold_s);
            assert_eq!(n.campaign, campaign);
            assert_eq!(n.key.exchange(), exchange);
            assert_eq!(n.key.auction_id(), auction);
            assert_eq!(n.key.imp_id(), imp);
            assert_eq!(n.bid.micros(), bid_micros);
            if fields.first_price {
                assert_eq!(n.price, Price::FirstPrice);
            }
            if let (Price::Cleared(c), true) = (n.price, kind != Kind::Loss) {
                assert!(c <= n.bid, "a cleared price above the bid was accepted");
            }
        }
        // Invalid ids, a price above the bid, or price bytes that repeat a parameter are
        // refused, and those are answers. Calling a correctly signed notice forged is not: a
        // repeated signed parameter is refused as malformed before the HMAC is checked.
        Err(Refused::BadSignature) => panic!("a correctly signed notice failed to verify: {called:?}"),
        Err(_) => {}
    }
});
