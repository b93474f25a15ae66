//! The edge process: HTTP routes (bids, notices, `/healthz`, `/metrics`), start-up and clean
//! shutdown.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shared::clock::Clock;
use tokio::net::TcpListener;

use crate::bidder::{BidOutcome, Edge};
use crate::catalog::{Catalog, Slots};
use crate::config::Settings;
use crate::coord::Coordinators;
use crate::metrics::Metrics;
use crate::notice::Kind;
use crate::openrtb::Version;
use crate::settle::{BatchLimits, Settler};

/// Slots that may wait for the lease manager at once.
const ASK_QUEUE: usize = 4_096;

/// Builds the edge's state and starts its background tasks; returns the state and a handle
/// that stops them.
pub fn start(settings: Settings, clock: Clock) -> (Arc<Edge>, tokio::sync::watch::Sender<bool>) {
    let cfg = &settings.config;
    let coords = Arc::new(Coordinators::new(
        cfg.coordinators.clone(),
        Duration::from_millis(cfg.coordinator_timeout_ms),
        settings.outgoing,
        settings.transport.clone(),
    ));
    start_with(settings, clock, coords)
}

/// [`start`] with the coordinators reached through `coords` (a simulation's nodes, say).
pub fn start_with(
    settings: Settings,
    clock: Clock,
    coords: Arc<Coordinators>,
) -> (Arc<Edge>, tokio::sync::watch::Sender<bool>) {
    let cfg = &settings.config;
    let metrics = Arc::new(Metrics::new());
    let settler = Settler::start(
        settings.edge.clone(),
        coords.clone(),
        BatchLimits {
            max_events: cfg.batch_max_events,
            max_delay: Duration::from_millis(cfg.batch_max_delay_ms),
        },
        metrics.clone(),
        &clock,
    );
    let (ask_tx, ask_rx) = tokio::sync::mpsc::channel(ASK_QUEUE);
    let edge = Arc::new(Edge {
        settings,
        catalog: ArcSwap::from_pointee(Catalog::default()),
        slots: Mutex::new(Slots::default()),
        leases: Mutex::new(HashMap::new()),
        clock,
        metrics,
        ask: ask_tx,
        settler,
        in_flight: Default::default(),
        polled: Default::default(),
        released: Default::default(),
        released_held: Default::default(),
    });
    if let Some(t) = edge.settings.transport.certificate_expiry() {
        edge.metrics.certificate_expiry.set(t);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::settle::check_in_loop(
        edge.settler.clone(),
        edge.settings.edge.clone(),
        coords.clone(),
        Duration::from_millis(edge.settings.config.check_in_interval_ms),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::manager::poll_campaigns(
        edge.clone(),
        coords.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::manager::manage_leases(
        edge.clone(),
        coords,
        ask_rx,
        stop_rx,
    ));
    (edge, stop_tx)
}

/// The HTTP routes of an edge.
pub fn router(edge: Arc<Edge>) -> axum::Router {
    let limit = edge.settings.config.max_body_bytes;
    let mut r = axum::Router::new();
    for (i, x) in edge.settings.exchanges.iter().enumerate() {
        r = r.route(
            &x.bid_path,
            post(move |state, headers, body| bid(state, i, headers, body)),
        );
    }
    r.route("/notice/{kind}", get(notice).post(notice))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/debug/leases", get(debug_leases))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(edge)
}

/// Serves until `shutdown` resolves, then lets requests in flight (notices waiting for their
/// batch included) finish, and stops the background tasks.
pub async fn run(
    settings: Settings,
    clock: Clock,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if settings.dev_key {
        tracing::warn!(
            "NOTICE KEY: using the built-in development key; anyone can forge notices. Set notice_key_hex in production."
        );
    }
    let addr = listener.local_addr()?;
    let (edge, stop) = start(settings, clock);
    let exchanges: Vec<String> = edge
        .settings
        .exchanges
        .iter()
        .map(|x| {
            format!(
                "{} at {} (bills by {})",
                x.id,
                x.bid_path,
                x.billing.as_str()
            )
        })
        .collect();
    tracing::info!(%addr, edge = %edge.settings.edge, coordinators = ?edge.settings.config.coordinators,
        ?exchanges, "edge serving");
    serve(listener, edge, shutdown).await?;
    let _ = stop.send(true);
    tracing::info!("edge stopped");
    Ok(())
}

/// Serves `edge`'s routes on `listener` until `shutdown` resolves, then lets requests in flight
/// finish. Every connection has `TCP_NODELAY`: a bid answer is one small write that must not
/// wait for the peer's delayed ACK. A client has `client_timeout_ms` to send a request's
/// headers (and the bid handler as long again for its body), and at most `max_connections`
/// are held at once: a slow or stalled client ties up a file descriptor for seconds, not for
/// ever, and a flood of them is closed at the door.
pub async fn serve(
    listener: TcpListener,
    edge: Arc<Edge>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let config = &edge.settings.config;
    let timeout = Duration::from_millis(config.client_timeout_ms);
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let app = router(edge.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or the like: a moment, then go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            edge.metrics.connections("refused");
            drop(tcp);
            continue;
        };
        edge.metrics.connections("accepted");
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(tcp), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn bid(
    State(edge): State<Arc<Edge>>,
    exchange: usize,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let m = &edge.metrics;
    // The body arrives within the client timeout, or the request is answered 408.
    let config = &edge.settings.config;
    let read = axum::body::to_bytes(body, config.max_body_bytes);
    let body =
        match tokio::time::timeout(Duration::from_millis(config.client_timeout_ms), read).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let too_large = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_large {
                    m.request("too_large");
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body: over {} bytes\n", config.max_body_bytes),
                    )
                        .into_response();
                }
                m.request("invalid");
                return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response();
            }
            Err(_) => {
                m.request("slow_body");
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time\n",
                )
                    .into_response();
            }
        };
    let start = Instant::now();
    let limit = edge.settings.config.max_concurrent_bids;
    if edge.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
        edge.in_flight.fetch_sub(1, Ordering::AcqRel);
        m.request("shed");
        return StatusCode::NO_CONTENT.into_response();
    }
    let response = answer(&edge, exchange, &headers, &body, start);
    edge.in_flight.fetch_sub(1, Ordering::AcqRel);
    m.bid_seconds.observe(start.elapsed());
    response
}

fn answer(
    edge: &Edge,
    exchange: usize,
    headers: &HeaderMap,
    body: &Bytes,
    start: Instant,
) -> Response {
    let m = &edge.metrics;
    let bad = |outcome: &'static str, why: String| {
        m.request(outcome);
        (StatusCode::BAD_REQUEST, why).into_response()
    };
    let version = match Version::from_header(
        headers
            .get("x-openrtb-version")
            .and_then(|v| v.to_str().ok()),
    ) {
        Ok(v) => v,
        Err(e) => return bad("invalid", e.0),
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let inflated;
    let bytes: &[u8] = if gzip {
        let limit = edge.settings.config.max_body_bytes;
        let mut out = Vec::new();
        let read = flate2::read::GzDecoder::new(&body[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out);
        match read {
            Err(e) => return bad("invalid", format!("gzip body: {e}")),
            Ok(n) if n > limit => {
                m.request("too_large");
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body over {limit} bytes once inflated"),
                )
                    .into_response();
            }
            Ok(_) => {}
        }
        inflated = out;
        &inflated
    } else {
        body
    };
    match edge.bid(exchange, bytes, version, start) {
        BidOutcome::Bid(json) => {
            m.request("bid");
            ([(header::CONTENT_TYPE, "application/json")], json).into_response()
        }
        BidOutcome::NoBid(why) => {
            m.request(why);
            StatusCode::NO_CONTENT.into_response()
        }
        BidOutcome::Invalid(why) => bad("invalid", why),
    }
}

async fn notice(
    State(edge): State<Arc<Edge>>,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else {
        return (
            StatusCode::NOT_FOUND,
            "notices are /notice/win, /notice/bill or /notice/loss\n",
        )
            .into_response();
    };
    let (status, body) = edge.notice(kind, query.as_deref().unwrap_or("")).await;
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body,
    )
        .into_response()
}

async fn healthz(State(edge): State<Arc<Edge>>) -> Response {
    let catalog = edge.catalog.load();
    if !edge.polled.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the coordinators yet\n",
        )
            .into_response();
    }
    if !edge.settler.registered() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered with the region yet: notices are refused until it is\n",
        )
            .into_response();
    }
    let leases = edge.leases.lock().unwrap_or_else(|p| p.into_inner()).len();
    (
        StatusCode::OK,
        format!(
            "ok campaigns={} version={} leases={leases}\n",
            catalog.campaigns.len(),
            catalog.version
        ),
    )
        .into_response()
}

/// The leases this edge holds and the last ones it released: amount, what was never reserved
/// and bids made. A harness checks that no lease was ever reserved past its amount.
async fn debug_leases(State(edge): State<Arc<Edge>>) -> Response {
    let open: Vec<crate::bidder::LeaseRecord> = edge
        .leases
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .map(|l| crate::bidder::LeaseRecord::of(l))
        .collect();
    let released: Vec<crate::bidder::LeaseRecord> = edge
        .released
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let body = serde_json::json!({"edge": edge.settings.edge.to_string(), "open": open, "released": released});
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    edge.metrics
        .clock_wall_seconds
        .set(edge.clock.wall_us() as f64 / 1e6);
    (
        [(header::CONTENT_TYPE, shared::exposition::CONTENT_TYPE)],
        edge.metrics.render(),
    )
        .into_response()
}
