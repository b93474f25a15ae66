//! A set-up shared by tests and benchmarks: an edge that bids on anything, with no coordinator.

use std::sync::Arc;
use std::time::Duration;

use shared::clock::Clock;
use shared::proto::v1 as pb;
use shared::{LeaseId, Money};

use crate::bidder::Edge;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::lease::{ActiveLease, Terms};

/// Gives `edge` one campaign, `anything`, that bids 1.00 CPM (up to 50.00 above a floor) on any
/// impression, and a lease `id` of `micros` for that campaign, spendable for `window`.
pub fn bid_on_anything(edge: &Edge, id: LeaseId, micros: i64, window: Duration) {
    let list = vec![pb::CampaignConfig {
        campaign: "anything".into(),
        time_zone: "UTC".into(),
        bid_cpm_micros: 1_000_000,
        max_cpm_micros: Some(50_000_000),
        ..Default::default()
    }];
    let (catalog, _) = {
        let mut slots = edge.slots.lock().unwrap_or_else(|p| p.into_inner());
        Catalog::build(1, &list, &mut slots)
    };
    let slot = catalog.campaigns[0].slot.clone();
    edge.catalog.store(Arc::new(catalog));
    let lease = Arc::new(ActiveLease::new(
        id,
        0,
        Money::from_micros(micros),
        edge.clock.mono(),
        Terms::new(window, Duration::from_secs(10), Duration::from_secs(1)),
    ));
    edge.leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(lease.id, lease.clone());
    slot.current.store(Some(lease));
}

/// Starts an edge with `config` in this process, on a fresh loopback port (the `listen` setting
/// is replaced), serving until the runtime ends. Returns it and its address.
pub async fn serve_in_process(mut config: Config) -> (Arc<Edge>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    config.listen = addr.to_string();
    let settings = config.validate().expect("a valid test configuration");
    let (edge, stop) = crate::server::start(settings, Clock::system());
    let serving = edge.clone();
    tokio::spawn(async move {
        if let Err(e) = crate::server::serve(listener, serving, std::future::pending()).await {
            tracing::error!(error = %e, "test edge stopped serving");
        }
        drop(stop);
    });
    (edge, addr)
}
