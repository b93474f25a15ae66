//! Memory per campaign: builds a catalog of N campaigns (default 100,000) with a few targeting
//! values each and prints the growth of the process's resident memory divided by N.
//!
//! `cargo run --release -p edge --example catalog-memory -- 100000`

use shared::proto::v1 as pb;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let countries = ["USA", "FRA", "DEU", "GBR", "ESP"];
    let sizes = ["300x250", "728x90", "320x50", "160x600"];
    let list: Vec<pb::CampaignConfig> = (0..n)
        .map(|i| pb::CampaignConfig {
            campaign: format!("campaign-{i:07}"),
            time_zone: "America/New_York".into(),
            bid_cpm_micros: 1_000_000 + (i as i64 % 1000) * 1000,
            countries: vec![countries[i % 5].into()],
            sizes: vec![sizes[i % 4].into()],
            formats: vec!["banner".into()],
            ..Default::default()
        })
        .collect();
    let before = rss_bytes();
    let mut slots = edge::catalog::Slots::default();
    let (catalog, skipped) = edge::catalog::Catalog::build(1, &list, &mut slots);
    let after = rss_bytes();
    assert!(skipped.is_empty());
    drop(list);
    println!(
        "{} campaigns: resident memory grew {} KiB, {} bytes per campaign (catalog, index and slots)",
        catalog.campaigns.len(),
        (after - before) / 1024,
        (after - before) / catalog.campaigns.len() as u64
    );
}
