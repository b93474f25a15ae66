//! Every request in `../shared/openrtb-samples/` is answered with a bid, 204 or 400 as it
//! should be, and never 5xx.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge::http::HttpClient;
use edge::notice::{self, Kind};
use edge::openrtb::BidResponse;
use shared::{LeaseId, Money};

use crate::harness::{edge_config, edge_in_process, metric};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/openrtb-samples")
}

fn files(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.ends_with(".json") && n != "manifest.json" && keep(n)
        })
        .collect();
    v.sort();
    v
}

/// An edge with one campaign that bids on anything at 1.00 CPM up to 50.00, holding a lease of
/// 1,000 currency units: no coordinator needed.
async fn open_edge() -> (Arc<edge::bidder::Edge>, String) {
    let (edge, base) = edge_in_process(edge_config("walker", &["127.0.0.1:1".into()])).await;
    edge::fixture::bid_on_anything(&edge, LeaseId(7), 1_000_000_000, Duration::from_secs(3600));
    (edge, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_request_gets_a_bid_a_no_bid_or_a_400_and_never_a_5xx() {
    let (edge, base) = open_edge().await;
    let http = HttpClient::new(Duration::from_secs(10));
    let url = format!("{base}/openrtb2/bid");
    let root = samples();
    let mut valid = files(&root.join("iab"), |n| n.contains("-req-"));
    valid.extend(files(&root.join("prebid"), |_| true));
    let invalid = files(&root.join("invalid"), |_| true);
    assert!(
        valid.len() >= 150 && invalid.len() >= 37,
        "{} valid, {} invalid",
        valid.len(),
        invalid.len()
    );

    let (mut bids, mut no_bids) = (0, 0);
    let mut refused = Vec::new();
    for f in &valid {
        let body = std::fs::read(f).unwrap();
        let version = if f.to_str().unwrap().contains("2.5-") {
            "2.5"
        } else {
            "2.6"
        };
        let r = http
            .post(&url, &[("x-openrtb-version", version)], body.clone())
            .await
            .unwrap();
        match r.status {
            200 => {
                bids += 1;
                check_bid(&edge, f, &body, &r.body);
            }
            204 => no_bids += 1,
            400 if refusable(f) => {}
            s => refused.push(format!(
                "{}: {s} {}",
                f.display(),
                String::from_utf8_lossy(&r.body)
            )),
        }
    }
    assert!(
        refused.is_empty(),
        "valid requests refused:\n{}",
        refused.join("\n")
    );
    // Prebid refuses these, but OpenRTB allows them: a banner without sizes (an interstitial
    // takes what it is given) and a site object without id or page (both only "recommended").
    // We answer them like any valid request.
    let spec_valid = ["011.json", "014.json", "031.json"];
    let mut wrong = Vec::new();
    for f in &invalid {
        let r = http
            .post(&url, &[], std::fs::read(f).unwrap())
            .await
            .unwrap();
        let name = f.file_name().unwrap().to_str().unwrap();
        let ok = r.status == 400 && !r.body.is_empty()
            || spec_valid.contains(&name) && matches!(r.status, 200 | 204);
        if !ok {
            wrong.push(format!(
                "{name}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "invalid requests not refused:\n{}",
        wrong.join("\n")
    );
    // The campaign bids on anything in our currency above no floor over 50: most requests.
    assert!(
        bids * 10 >= valid.len() * 8,
        "{bids} bids, {no_bids} no-bids of {}",
        valid.len()
    );
    let page = http.get(&format!("{base}/metrics")).await.unwrap();
    let page = String::from_utf8_lossy(&page.body);
    assert_eq!(
        metric(&page, "edge_bid_requests_total") as usize,
        valid.len() + invalid.len()
    );
}

/// Sample requests that break OpenRTB, and so are refused with a 400: they come from adapter
/// test fixtures (or, for the IAB one, an example whose payload the spec elides), not from
/// requests an exchange would send.
fn refusable(f: &Path) -> bool {
    let name = f.to_str().unwrap();
    [
        // Three impressions with one id: the id must be unique (§3.2.4), and a charge is keyed
        // by it.
        "prebid/010.json",
        // `native: {}`: the native object's `request` is required (§3.2.9).
        "prebid/045.json",
        // `video` without `mimes`, or `mimes: null`: mimes is a required array (§3.2.7).
        "prebid/041.json",
        "prebid/071.json",
        // `site` and `app` together: at most one may be present (§3.2.1).
        "prebid/102.json",
        "prebid/109.json",
        "prebid/110.json",
        // The native request is `{"native":{"ver":"1.0","assets":[ ... ]}}`: not JSON.
        "iab/2.5-req-06-native.json",
    ]
    .iter()
    .any(|r| name.ends_with(r))
}

/// A bid answers an impression of the request, within its floor rules, with notice URLs that
/// verify.
fn check_bid(edge: &edge::bidder::Edge, f: &Path, request: &[u8], body: &[u8]) {
    let req: serde_json::Value = serde_json::from_slice(request).unwrap();
    let resp: BidResponse =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    assert_eq!(resp.id, req["id"].as_str().unwrap());
    assert_eq!(resp.cur, "USD");
    for bid in &resp.seatbid[0].bid {
        let imp = req["imp"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == *bid.impid);
        let imp =
            imp.unwrap_or_else(|| panic!("{}: bid for unknown imp {}", f.display(), bid.impid));
        let price = Money::from_cpm_str(bid.price.get()).unwrap().micros();
        assert!(
            (1000..=50_000).contains(&price),
            "{}: price {price}",
            f.display()
        );
        if let Some(floor) = imp["bidfloor"].as_f64() {
            assert!(
                price >= Money::from_cpm(floor).unwrap().micros(),
                "{}: under the floor",
                f.display()
            );
        }
        for (kind, url) in [
            (Kind::Win, &bid.nurl),
            (Kind::Bill, &bid.burl),
            (Kind::Loss, &bid.lurl),
        ] {
            let q = url
                .split_once('?')
                .unwrap()
                .1
                .replace("${AUCTION_PRICE}", "0.5")
                .replace("${AUCTION_LOSS}", "102");
            let n = notice::parse(kind, &q, &edge.settings.signer).unwrap();
            assert_eq!(n.key.auction_id(), resp.id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_versions_tmax_and_shedding() {
    let (edge, base) = open_edge().await;
    let http = HttpClient::new(Duration::from_secs(10));
    let url = format!("{base}/openrtb2/bid");
    let body = std::fs::read(samples().join("iab/2.6-req-01-simple-banner.json")).unwrap();
    assert_eq!(
        http.post(&url, &[], body.clone()).await.unwrap().status,
        200
    );

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let r = http
        .post(&url, &[("content-encoding", "gzip")], gz.finish().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = http
        .post(&url, &[("content-encoding", "gzip")], b"not gzip".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // A gzip bomb: small on the wire, over the limit inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 4 << 20]).unwrap();
    let r = http
        .post(&url, &[("content-encoding", "gzip")], gz.finish().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 413);

    assert_eq!(
        http.post(&url, &[("x-openrtb-version", "3.0")], body.clone())
            .await
            .unwrap()
            .status,
        400
    );

    // tmax too short to answer in: no bid, and the reservation is not kept.
    let mut req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    req["tmax"] = 3.into();
    let before = edge.leases.lock().unwrap()[&LeaseId(7)]
        .reservoir
        .unreserved();
    let r = http
        .post(&url, &[], serde_json::to_vec(&req).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        edge.leases.lock().unwrap()[&LeaseId(7)]
            .reservoir
            .unreserved(),
        before
    );

    // An impression that may be shown an hour later is bid on, held until its deadline...
    req["tmax"] = 500.into();
    req["imp"][0]["exp"] = 3600.into();
    assert_eq!(
        http.post(&url, &[], serde_json::to_vec(&req).unwrap())
            .await
            .unwrap()
            .status,
        200
    );
    // ...and one past the region's maximum is not (its own outcome, not `no_match`).
    req["imp"][0]["exp"] = 3601.into();
    assert_eq!(
        http.post(&url, &[], serde_json::to_vec(&req).unwrap())
            .await
            .unwrap()
            .status,
        204
    );
    let page = http.get(&format!("{base}/metrics")).await.unwrap();
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert!(
        page.lines()
            .any(|l| l.starts_with("edge_bid_requests_total{")
                && l.contains("outcome=\"exp_too_long\"")
                && l.ends_with(" 1")),
        "the impression past the maximum is counted as exp_too_long"
    );

    // Past the concurrency limit: 204 at once.
    let limit = edge.settings.config.max_concurrent_bids;
    edge.in_flight
        .store(limit, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        http.post(&url, &[], body.clone()).await.unwrap().status,
        204
    );
    edge.in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    let page = http.get(&format!("{base}/metrics")).await.unwrap();
    assert!(
        String::from_utf8_lossy(&page.body).contains("edge_bid_requests_total{outcome=\"shed\"} 1")
    );
}

/// Oversized requests (issue 8): a bid body over `max_body_bytes`, plain or inflated from gzip,
/// is refused with 413, and a notice query over `notice::QUERY_MAX` with 400; none of them
/// reserves, spends or bids anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_change_nothing() {
    let (edge, base) = open_edge().await;
    let http = HttpClient::new(Duration::from_secs(10));
    let url = format!("{base}/openrtb2/bid");
    let limit = edge.settings.config.max_body_bytes;
    let unreserved = || {
        edge.leases.lock().unwrap()[&LeaseId(7)]
            .reservoir
            .unreserved()
    };
    // Bid requests by outcome, from the edge's own metrics.
    let outcomes = || async {
        let page = http.get(&format!("{base}/metrics")).await.unwrap();
        let page = String::from_utf8_lossy(&page.body).into_owned();
        let count = |outcome: &str| {
            page.lines()
                .find(|l| {
                    l.starts_with("edge_bid_requests_total{")
                        && l.contains(&format!("outcome=\"{outcome}\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (count("bid"), count("too_large"))
    };
    let before = unreserved();
    let (bids_before, large_before) = outcomes().await;

    // A real request, padded with spaces (still valid JSON) to one byte over the limit.
    let mut body = std::fs::read(samples().join("iab/2.6-req-01-simple-banner.json")).unwrap();
    body.resize(limit + 1, b' ');
    let r = http.post(&url, &[], body.clone()).await.unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&body).unwrap();
    let r = http
        .post(&url, &[("content-encoding", "gzip")], gz.finish().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    // At the limit exactly it is read, and bid on: the refusals above were for the size.
    body.truncate(limit);
    let r = http.post(&url, &[], body).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bid: BidResponse = serde_json::from_slice(&r.body).unwrap();
    let spent_on_the_bid = before - unreserved();
    assert!(spent_on_the_bid > 0, "the control bid reserved nothing");

    // A correctly signed notice of that bid, padded past the query limit: refused, unsettled.
    let nurl = &bid.seatbid[0].bid[0].nurl;
    let path = &nurl[nurl.find("/notice/").unwrap()..];
    let padded = format!(
        "{base}{}&pad={}",
        path.replace("${AUCTION_PRICE}", "0.5"),
        "x".repeat(notice::QUERY_MAX)
    );
    let r = http.get(&padded).await.unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        before - unreserved(),
        spent_on_the_bid,
        "an oversized request reserved or released money"
    );
    let (bids, large) = outcomes().await;
    assert_eq!(bids - bids_before, 1, "only the control request was bid on");
    assert!(
        large > large_before,
        "the inflated body was not counted as too large"
    );
}

/// A thousand clients that open a connection and never finish their request's headers (or
/// its body) hold nothing for long: bids from a real client are answered at their usual
/// latency meanwhile, every slow one is closed within the client timeout, and connections over
/// the cap are closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_timed_out_and_capped_while_bids_go_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = edge_config("slowpoke", &["127.0.0.1:1".into()]);
    config.client_timeout_ms = 2_000;
    config.max_connections = 1_050;
    let (edge, base) = edge_in_process(config).await;
    edge::fixture::bid_on_anything(&edge, LeaseId(7), 1_000_000_000, Duration::from_secs(3600));
    let addr = base.trim_start_matches("http://").to_string();
    let request = std::fs::read(&files(&samples().join("prebid"), |_| true)[0]).unwrap();
    let http = HttpClient::new(Duration::from_secs(5));
    let bid = || async {
        let t = std::time::Instant::now();
        let r = http
            .post(
                &format!("{base}/openrtb2/bid"),
                &[("x-openrtb-version", "2.6")],
                request.clone(),
            )
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 204, "{}", r.status);
        t.elapsed()
    };
    // The usual latency, before.
    let mut before = Vec::new();
    for _ in 0..50 {
        before.push(bid().await);
    }
    before.sort();
    // 1,000 slow clients: 800 stop in their headers, 200 after their headers, in the body.
    let opened = std::time::Instant::now();
    let mut slow = Vec::new();
    for i in 0..1_000 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let part: &[u8] = if i % 5 == 0 {
            b"POST /openrtb2/bid HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"id\":"
        } else {
            b"POST /openrtb2/bid HTTP/1.1\r\nHost: x\r\nContent-Le"
        };
        s.write_all(part).await.unwrap();
        slow.push(s);
    }
    // Bids go on at their usual latency while the slow clients hold their connections.
    let mut during = Vec::new();
    for _ in 0..50 {
        during.push(bid().await);
    }
    during.sort();
    let p = |v: &[Duration], q: usize| v[v.len() * q / 100 - 1];
    eprintln!(
        "bid latency p50/p99 before {:?}/{:?}, with 1,000 slow clients {:?}/{:?}",
        p(&before, 50),
        p(&before, 99),
        p(&during, 50),
        p(&during, 99)
    );
    assert!(
        p(&during, 50) <= p(&before, 50) * 5 + Duration::from_millis(5),
        "bids slowed down: {during:?}"
    );
    // Over the cap (1,050 with the bids' own connection), a new connection is closed at once.
    let mut extra = Vec::new();
    for _ in 0..60 {
        extra.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed_at_once = 0;
    for s in &mut extra {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            closed_at_once += 1;
        }
    }
    assert!(
        closed_at_once >= 10,
        "{closed_at_once} of 60 over the cap closed"
    );
    let page = http.get(&format!("{base}/metrics")).await.unwrap();
    let page = String::from_utf8_lossy(&page.body);
    let refused: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("edge_connections_total{outcome=\"refused\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(refused >= 10.0, "{page}");
    // Every slow client is closed by the server within the timeout (and a margin).
    let mut closed = 0;
    for s in &mut slow {
        let mut b = [0u8; 512];
        let left =
            (opened + Duration::from_secs(6)).saturating_duration_since(std::time::Instant::now());
        let ended = tokio::time::timeout(left.max(Duration::from_millis(10)), async {
            // A 408 for the slow bodies, then the close.
            while let Ok(n) = s.read(&mut b).await
                && n > 0
            {}
        })
        .await;
        if ended.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 1_000,
        "slow clients still connected 6 s after they stalled"
    );
}
