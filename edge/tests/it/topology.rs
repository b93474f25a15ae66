//! The local topology in miniature: a region, two edges and the simulated exchange. What the
//! exchange billed is what the ledger settled, never more than the budget, and demand above the
//! budget spends nearly all of it.

use std::time::Duration;

use edge::sim::{SimConfig, run};

use crate::harness::{Region, edge_config, registered_edge};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_exchange_bills_what_the_ledger_settles_and_budgets_are_spent_but_never_exceeded() {
    // Leases of 2 s and W = 1 s: money held by a finished lease is back within 3 s.
    let mut region = Region::start_with(2_000).await;
    let budget = 300_000;
    region.campaign("spring", 2_500_000, budget).await;
    let mut edges = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let mut c = edge_config(name, &region.addrs);
        c.lease_want_micros = 100_000;
        edges.push(registered_edge(c).await);
    }
    let cfg = SimConfig {
        edges: edges.iter().map(|(_, base)| base.clone()).collect(),
        regions: vec![],
        focus_every: None,
        coordinators: region.addrs.clone(),
        transport: shared::tls::Transport::Plaintext,
        rate: 300,
        // Long enough for money that bids without a notice hold (up to their 10 s `exp` and
        // the late acceptance) to come back and be spent again.
        duration: Duration::from_secs(25),
        max_requests: 7_500,
        seed: 7,
        run_id: "7".into(),
        // The harness's region bids on `exp` up to 10 s: the real mix in seconds.
        exp_scale: 360,
        status: false,
    };
    let tally = run(cfg.clone()).await;
    // It behaved as a real exchange does: ids reused, requests replayed, losses told.
    for (what, n) in [
        ("reused ids", &tally.reused_ids),
        ("replays", &tally.replays),
        ("loss notices", &tally.losses),
    ] {
        assert!(
            n.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "no {what}"
        );
    }
    let lost = tally
        .notices_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(lost, 0, "every notice acknowledged");
    let billed = tally
        .billed
        .lock()
        .await
        .get("spring")
        .copied()
        .unwrap_or(0);
    let settled = region.settled("spring");
    assert_eq!(
        billed, settled,
        "the exchange's record and the ledger agree"
    );
    eprintln!("spent {settled} of {budget} micros; exchange billed {billed}");
    assert!(settled <= budget, "settled {settled} of {budget}");
    // Demand (300 requests/s, ~80 % won at about 1.25 CPM) is far above a 0.30 budget.
    assert!(
        settled * 100 >= budget * 95,
        "only {settled} of {budget} spent"
    );
    // The run's verdict: every bill in a ledger, none over the budget.
    let (text, kept) = edge::sim::verdict(&cfg, &tally, Duration::from_secs(10)).await;
    eprintln!("{text}");
    assert!(kept, "{text}");
    assert!(
        text.contains("never over budget: yes") && text.contains("every bill in a ledger: yes"),
        "{text}"
    );
    assert!(
        text.contains("spring") && text.contains("0.300000"),
        "{text}"
    );
    // A bill no ledger holds, past the budget: the verdict says so.
    *tally.made.lock().await.get_mut("spring").unwrap() += budget;
    let (text, kept) = edge::sim::verdict(&cfg, &tally, Duration::from_millis(100)).await;
    assert!(!kept, "{text}");
    assert!(
        text.contains("never over budget: NO (spring by")
            && text.contains("billed that no ledger holds"),
        "{text}"
    );
    // After real traffic, every binary's metrics pass Prometheus' own linter.
    let http = edge::http::HttpClient::new(Duration::from_secs(5));
    for (_, base) in &edges {
        let r = http.get(&format!("{base}/metrics")).await.unwrap();
        assert_eq!(r.status, 200);
        promtool_check(&String::from_utf8_lossy(&r.body), base);
    }
    for n in &region.nodes {
        promtool_check(&n.render_metrics(), &format!("coordinator {}", n.id));
    }
}

/// `promtool check metrics` on a `/metrics` page: no finding. promtool comes with Debian's
/// `prometheus` package, which `./dev setup` installs.
fn promtool_check(page: &str, whose: &str) {
    use std::io::Write;
    assert!(
        page.contains("# TYPE") && !page.contains("# EOF"),
        "{whose}: not Prometheus text:\n{page}"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (./dev setup installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{whose}: promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
