//! The edge's configuration: a TOML file whose every key has a default (so the file is
//! optional), then command-line flags, which win. Unknown keys are an error.

use std::collections::BTreeMap;

use serde::Deserialize;
use shared::{EdgeId, ExchangeId, Money};

use crate::catalog::Currencies;
use crate::notice::Signer;

/// The notice-signing key used when none is configured. Fine on a laptop, never in production:
/// the edge warns loudly at start-up when it is in use.
pub const DEV_NOTICE_KEY_HEX: &str = "6465762d6f6e6c792d6e6f746963652d6b65792d646f2d6e6f742d757365";

/// The whole configuration of one edge.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This edge's name (leases are granted to it).
    pub edge_id: String,
    /// The region whose coordinators it bids for (`coordinators`): it signs its notices with
    /// it and refuses other regions' notices.
    pub region: String,
    /// HTTP listen address: bids, notices, `/healthz`, `/metrics`.
    pub listen: String,
    /// The region's coordinators (`host:port`), any number; writes find the leader.
    pub coordinators: Vec<String>,
    /// The exchanges this edge bids on, each at its own path (`[[exchanges]]`).
    pub exchanges: Vec<ExchangeConfig>,
    /// Base URL of notices as the exchange will call them; empty: `http://<listen>`.
    pub notice_base_url: String,
    /// Our seat id in responses.
    pub seat: String,
    /// The campaigns' currency, the one we bid in.
    pub currency: String,
    /// Other currencies a floor may come in: code → value of one unit in ours, as a decimal
    /// string (`EUR = "1.08"`).
    pub currencies: BTreeMap<String, String>,
    /// Notice-signing key, hex; empty: the development key (with a warning).
    pub notice_key_hex: String,
    /// The previous key, still accepted during a rotation; empty: none.
    pub notice_previous_key_hex: String,
    /// How much to ask for per lease, micros (the coordinator grants at most a share).
    pub lease_want_micros: i64,
    /// Ask for a new lease when this share of the current one is reserved, percent.
    pub renew_at_used_percent: u32,
    /// Bid requests handled at once; more are answered 204 at once.
    pub max_concurrent_bids: usize,
    /// `tmax` assumed when a request has none, ms.
    pub default_tmax_ms: u64,
    /// Kept in hand from `tmax` for the network, ms.
    pub tmax_safety_ms: u64,
    /// Largest request body (after gzip), bytes.
    pub max_body_bytes: usize,
    /// A client has this long to send a request's headers, and again its body, ms; then its
    /// connection is closed (a slow or stalled client holds nothing for long).
    pub client_timeout_ms: u64,
    /// Connections held at once; one more is closed at once (and counted).
    pub max_connections: usize,
    /// Spend events per batch.
    pub batch_max_events: usize,
    /// The oldest event of a batch waits at most this, ms.
    pub batch_max_delay_ms: u64,
    /// Campaign poll interval, ms.
    pub poll_interval_ms: u64,
    /// A notice waits this long for its batch before answering 503 (the exchange retries).
    pub notice_timeout_ms: u64,
    /// How often the edge checks in with its region, ms: in-doubt money whose deadlines have
    /// passed returns only once every registered edge has checked in since (it may hold
    /// notices it accepted and could not settle yet).
    pub check_in_interval_ms: u64,
    /// Timeout of one call to a coordinator, ms.
    pub coordinator_timeout_ms: u64,
    /// Source IP of calls to the coordinators; empty: the system chooses. (The chaos harness
    /// gives each process its own `127.0.0.x` and partitions them by it.)
    pub outgoing_address: String,
    /// Mutual TLS to the coordinators: the CA, this edge's certificate (role `edge`) and key.
    /// Required unless `--insecure-plaintext`.
    pub tls: shared::tls::TlsFiles,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            edge_id: "edge-1".into(),
            region: "local".into(),
            listen: "127.0.0.1:8080".into(),
            coordinators: vec!["127.0.0.1:7001".into()],
            exchanges: vec![ExchangeConfig::default()],
            notice_base_url: String::new(),
            seat: "budget".into(),
            currency: "USD".into(),
            currencies: BTreeMap::new(),
            notice_key_hex: String::new(),
            notice_previous_key_hex: String::new(),
            lease_want_micros: 50_000_000,
            renew_at_used_percent: 70,
            max_concurrent_bids: 1_024,
            default_tmax_ms: 200,
            tmax_safety_ms: 5,
            max_body_bytes: 256 * 1024,
            client_timeout_ms: 5_000,
            max_connections: 10_000,
            batch_max_events: 500,
            batch_max_delay_ms: 5,
            poll_interval_ms: 1_000,
            notice_timeout_ms: 10_000,
            check_in_interval_ms: 500,
            coordinator_timeout_ms: 2_000,
            outgoing_address: String::new(),
            tls: shared::tls::TlsFiles::default(),
        }
    }
}

/// Which of an exchange's notices is its billing event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    /// The billing notice (`burl`, OpenRTB 2.5+) charges; a win notice only says the bid won
    /// (the impression may never become billable).
    Burl,
    /// The win notice (`nurl`) charges: the exchange bills every win. A billing notice, if it
    /// sends one too, is the same charge.
    Nurl,
}

impl Billing {
    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Burl => "burl",
            Billing::Nurl => "nurl",
        }
    }
}

/// One exchange this edge bids on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    /// Its name: part of every charge's exchange ids, and signed into its notices.
    pub id: String,
    /// Path of its OpenRTB endpoint.
    pub bid_path: String,
    /// Which notice it bills by.
    pub billing: Billing,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            id: "sim".into(),
            bid_path: "/openrtb2/bid".into(),
            billing: Billing::Burl,
        }
    }
}

/// An exchange, checked.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Its id.
    pub id: ExchangeId,
    /// Its endpoint's path.
    pub bid_path: String,
    /// Which notice it bills by.
    pub billing: Billing,
}

/// A configuration that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

/// The configuration, checked and in working types.
#[derive(Clone, Debug)]
pub struct Settings {
    /// As given.
    pub config: Config,
    /// The edge's id.
    pub edge: EdgeId,
    /// The exchanges, in the configured order.
    pub exchanges: Vec<Exchange>,
    /// Notice base URL.
    pub notice_base: String,
    /// Floors' currencies.
    pub currencies: Currencies,
    /// Notice keys.
    pub signer: Signer,
    /// The development key is in use.
    pub dev_key: bool,
    /// Source IP of calls to the coordinators.
    pub outgoing: Option<std::net::IpAddr>,
    /// How it calls the coordinators. `validate` leaves it plaintext; the `edge` binary sets
    /// it from `[tls]`, or keeps plaintext only with `--insecure-plaintext`.
    pub transport: shared::tls::Transport,
}

impl Config {
    /// Checks everything once, at start-up.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let err = |m: String| ConfigError(m);
        let edge: EdgeId = self
            .edge_id
            .parse()
            .map_err(|e| err(format!("edge_id: {e}")))?;
        let region: shared::RegionId = self
            .region
            .parse()
            .map_err(|e| err(format!("region: {e}")))?;
        if self.coordinators.is_empty() {
            return Err(err("coordinators: at least one is needed".into()));
        }
        if self.exchanges.is_empty() {
            return Err(err("exchanges: at least one is needed".into()));
        }
        let mut exchanges: Vec<Exchange> = Vec::new();
        for (i, x) in self.exchanges.iter().enumerate() {
            let id: ExchangeId =
                x.id.parse()
                    .map_err(|e| err(format!("exchanges[{i}].id: {e}")))?;
            let reserved = ["/notice", "/healthz", "/metrics"];
            if !x.bid_path.starts_with('/') || reserved.iter().any(|r| x.bid_path.starts_with(r)) {
                return Err(err(format!(
                    "exchanges[{i}].bid_path {:?}: must start with / and not be /notice, /healthz or /metrics",
                    x.bid_path
                )));
            }
            if let Some(other) = exchanges
                .iter()
                .find(|o| o.id == id || o.bid_path == x.bid_path)
            {
                return Err(err(format!(
                    "exchanges[{i}]: {} at {} repeats the id or path of {} at {}",
                    x.id, x.bid_path, other.id, other.bid_path
                )));
            }
            exchanges.push(Exchange {
                id,
                bid_path: x.bid_path.clone(),
                billing: x.billing,
            });
        }
        if self.currency.len() != 3 {
            return Err(err(format!(
                "currency {:?}: an ISO 4217 code",
                self.currency
            )));
        }
        let mut currencies = Currencies::only(&self.currency);
        for (code, rate) in &self.currencies {
            // The rate is a decimal like a price: reuse the exact decimal reader (× 1000 of
            // micros-per-thousand gives parts per million).
            let ppm = Money::from_cpm_str(rate)
                .map_err(|e| err(format!("currencies.{code} = {rate:?}: {e}")))?
                .micros()
                .checked_mul(1000)
                .filter(|p| *p > 0)
                .ok_or_else(|| err(format!("currencies.{code} = {rate:?}: must be positive")))?;
            currencies
                .rates_ppm
                .insert(code.to_ascii_uppercase(), ppm.unsigned_abs());
        }
        let key_hex = if self.notice_key_hex.is_empty() {
            DEV_NOTICE_KEY_HEX
        } else {
            &self.notice_key_hex
        };
        let key = hex::decode(key_hex).map_err(|e| err(format!("notice_key_hex: {e}")))?;
        if key.len() < 16 {
            return Err(err("notice_key_hex: at least 16 bytes".into()));
        }
        let previous = if self.notice_previous_key_hex.is_empty() {
            None
        } else {
            Some(
                hex::decode(&self.notice_previous_key_hex)
                    .map_err(|e| err(format!("notice_previous_key_hex: {e}")))?,
            )
        };
        if self.renew_at_used_percent == 0 || self.renew_at_used_percent > 100 {
            return Err(err("renew_at_used_percent: 1 to 100".into()));
        }
        if self.batch_max_events == 0 || self.batch_max_events > 1_000 {
            return Err(err(
                "batch_max_events: 1 to 1000 (the ledger's limit)".into()
            ));
        }
        if self.client_timeout_ms == 0 || self.client_timeout_ms > 600_000 {
            return Err(err("client_timeout_ms: 1 to 600000".into()));
        }
        if self.max_connections == 0 {
            return Err(err("max_connections: at least 1".into()));
        }
        if self.check_in_interval_ms == 0 || self.check_in_interval_ms > 60_000 {
            return Err(err("check_in_interval_ms: 1 to 60000".into()));
        }
        if self.max_concurrent_bids == 0
            || self.lease_want_micros <= 0
            || self.poll_interval_ms == 0
        {
            return Err(err(
                "max_concurrent_bids, lease_want_micros and poll_interval_ms must be positive"
                    .into(),
            ));
        }
        let outgoing = if self.outgoing_address.is_empty() {
            None
        } else {
            Some(self.outgoing_address.parse().map_err(|_| {
                err(format!(
                    "outgoing_address: {:?} is not an IP address",
                    self.outgoing_address
                ))
            })?)
        };
        let notice_base = if self.notice_base_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.notice_base_url.trim_end_matches('/').to_owned()
        };
        // Notice URLs are written into answers as they are (JSON strings, no escaping): the base
        // must be a plain http(s) URL of printable ASCII, without a query or fragment.
        let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '?' | '#');
        if !(notice_base.starts_with("http://") || notice_base.starts_with("https://"))
            || !notice_base.chars().all(plain)
        {
            return Err(err(format!(
                "notice_base_url: {notice_base:?} must be an http:// or https:// URL of printable \
                 ASCII without quotes, backslashes, spaces, a query or a fragment"
            )));
        }
        Ok(Settings {
            config: self.clone(),
            edge,
            exchanges,
            notice_base,
            currencies,
            signer: Signer::new(region.as_str(), key, previous),
            dev_key: self.notice_key_hex.is_empty(),
            outgoing,
            transport: shared::tls::Transport::Plaintext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let s = Config::default().validate().unwrap();
        assert!(s.dev_key);
        assert_eq!(s.notice_base, "http://127.0.0.1:8080");
        let mut c = Config::default();
        c.currencies.insert("eur".into(), "1.08".into());
        assert_eq!(c.validate().unwrap().currencies.rates_ppm["EUR"], 1_080_000);
        c.currencies.insert("GBP".into(), "lots".into());
        assert!(c.validate().unwrap_err().0.contains("currencies.GBP"));
        let c = Config {
            batch_max_events: 5000,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("batch_max_events"));
        let c = Config {
            outgoing_address: "127.0.0".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("outgoing_address"));
        let bad: Result<Config, _> = toml::from_str("listn = \"x\"");
        assert!(bad.unwrap_err().to_string().contains("listn"));
        // Exchanges: each with its own id and path, and the notice it bills by.
        let c: Config = toml::from_str(
            "[[exchanges]]\nid = \"adx\"\nbid_path = \"/openrtb2/adx\"\nbilling = \"nurl\"\n\
             [[exchanges]]\nid = \"pbs\"\nbid_path = \"/openrtb2/pbs\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.exchanges.len(), 2);
        assert_eq!(s.exchanges[0].billing, Billing::Nurl);
        assert_eq!(s.exchanges[1].billing, Billing::Burl);
        let twice: Config = toml::from_str(
            "[[exchanges]]\nid = \"adx\"\n[[exchanges]]\nid = \"adx\"\nbid_path = \"/b\"\n",
        )
        .unwrap();
        assert!(twice.validate().unwrap_err().0.contains("repeats"));
        let notice: Config = toml::from_str("[[exchanges]]\nbid_path = \"/notice/x\"\n").unwrap();
        assert!(notice.validate().unwrap_err().0.contains("bid_path"));
        let billing: Result<Config, _> = toml::from_str("[[exchanges]]\nbilling = \"lurl\"\n");
        assert!(billing.unwrap_err().to_string().contains("lurl"));
        // The notice base goes into answers unescaped: a plain http(s) URL only.
        for (base, ok) in [
            ("https://edge-1.example:8443/rtb/", true),
            ("http://10.0.0.1:8080", true),
            ("ftp://edge-1", false),
            ("http://edge \"1\"", false),
            ("http://edge-1/?x=1", false),
            ("http://édge-1", false),
        ] {
            let c = Config {
                notice_base_url: base.into(),
                ..Config::default()
            };
            match c.validate() {
                Ok(s) => assert!(ok, "{base} accepted as {}", s.notice_base),
                Err(e) => assert!(!ok && e.0.contains("notice_base_url"), "{base}: {}", e.0),
            }
        }
    }
}
