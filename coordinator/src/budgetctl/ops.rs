//! `budgetctl campaign …` and `budgetctl status`: operator commands against a running region.

use std::process::ExitCode;

use clap::Subcommand;
use shared::Money;
use shared::bucket::Bucket;
use shared::proto::v1 as pb;
use shared::proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{EXIT_FAILED, EXIT_USAGE};

#[derive(Debug, Subcommand)]
pub(crate) enum CampaignCommand {
    /// Create a campaign in this region (its home). Refused if the name exists: `campaign
    /// update` changes an existing one.
    Create {
        /// Campaign name (letters, digits, '.', '_', '-').
        name: String,
        /// IANA time zone of its days, e.g. America/New_York.
        #[arg(long, default_value = "UTC")]
        zone: String,
        /// Bid price, currency units per thousand impressions, e.g. 2.50.
        #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
        bid_cpm: Money,
        /// Budget of each day (in the campaign's zone); none: no daily cap.
        #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
        daily_budget: Option<Money>,
        /// What it bids on and how it paces.
        #[command(flatten)]
        targeting: Box<TargetingArgs>,
    },
    /// Change an existing campaign's settings: only those given; every other stays as it is.
    /// A list flag given replaces that list; --clear empties one.
    Update {
        /// Campaign name.
        name: String,
        /// IANA time zone of its days.
        #[arg(long)]
        zone: Option<String>,
        /// Bid price, currency units per thousand impressions.
        #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
        bid_cpm: Option<Money>,
        /// Budget of each day (in the campaign's zone).
        #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
        daily_budget: Option<Money>,
        /// What it bids on and how it paces.
        #[command(flatten)]
        targeting: Box<TargetingArgs>,
        /// Empty a setting: daily-budget, max-cpm, country, size, format, inventory,
        /// allow-domain, deny-domain, allow-bundle, deny-bundle, allow-category,
        /// deny-category, device-type or deal (repeat for several).
        #[arg(long, value_name = "SETTING")]
        clear: Vec<String>,
    },
    /// Set a budget: the lifetime one, or one day's with --day. Lowering it below what is
    /// spent or in flight is refused, with the smallest budget accepted now.
    SetBudget {
        /// Campaign name.
        name: String,
        /// The budget, in currency units, e.g. 100.00.
        #[arg(allow_negative_numbers = true)]
        amount: Money,
        /// Set this day's budget (YYYY-MM-DD) instead of the lifetime one.
        #[arg(long, value_name = "YYYY-MM-DD")]
        day: Option<String>,
    },
    /// Stop new leases for a campaign.
    Pause {
        /// Campaign name.
        name: String,
    },
    /// Allow new leases again.
    Resume {
        /// Campaign name.
        name: String,
    },
    /// List the campaigns and their settings.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a bucket's money in the region of --endpoint, read linearizably: budget, rights,
    /// settled, leased, in doubt, available. With --all-regions, every region's side by side.
    Show {
        /// Campaign name.
        name: String,
        /// Show this day's bucket (YYYY-MM-DD) instead of the lifetime one.
        #[arg(long, value_name = "YYYY-MM-DD")]
        day: Option<String>,
        /// Every region's figures of the bucket, side by side (as the region of --endpoint
        /// last heard of them).
        #[arg(long)]
        all_regions: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Targeting flags of `campaign create`. Every list flag may be repeated; an absent list means
/// "any".
#[derive(Debug, clap::Args)]
pub(crate) struct TargetingArgs {
    /// The most it bids, currency units per thousand impressions; default: the bid price.
    #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
    max_cpm: Option<Money>,
    /// Target these countries (ISO 3166-1 alpha-3, e.g. USA).
    #[arg(long = "country")]
    countries: Vec<String>,
    /// Target these sizes (WxH, e.g. 300x250).
    #[arg(long = "size")]
    sizes: Vec<String>,
    /// Media types: banner, video, native, audio.
    #[arg(long = "format")]
    formats: Vec<String>,
    /// Inventory: site, app, dooh.
    #[arg(long)]
    inventory: Vec<String>,
    /// Bid only on these site or app domains.
    #[arg(long = "allow-domain")]
    domains_allow: Vec<String>,
    /// Never bid on these domains.
    #[arg(long = "deny-domain")]
    domains_deny: Vec<String>,
    /// Bid only on these app bundles.
    #[arg(long = "allow-bundle")]
    bundles_allow: Vec<String>,
    /// Never bid on these app bundles.
    #[arg(long = "deny-bundle")]
    bundles_deny: Vec<String>,
    /// Bid only on content in these IAB categories (e.g. IAB1).
    #[arg(long = "allow-category")]
    categories_allow: Vec<String>,
    /// Never bid on content in these IAB categories.
    #[arg(long = "deny-category")]
    categories_deny: Vec<String>,
    /// OpenRTB device types (1 mobile/tablet, 2 PC, 3 CTV, 4 phone, 5 tablet, …).
    #[arg(long = "device-type")]
    device_types: Vec<u32>,
    /// Bid only through these PMP deal ids.
    #[arg(long = "deal")]
    deals: Vec<String>,
    /// Pacing: asap (spend as demand comes; the default of a new campaign) or even (spread
    /// the daily budget over the day).
    #[arg(long)]
    pacing: Option<String>,
}

impl TargetingArgs {
    /// A new campaign's targeting: everything as given (absent lists: any).
    fn write_to(self, c: &mut pb::CampaignConfig) {
        c.max_cpm_micros = self.max_cpm.map(|m| m.micros());
        c.countries = self.countries;
        c.sizes = self.sizes;
        c.formats = self.formats;
        c.inventory = self.inventory;
        c.domains_allow = self.domains_allow;
        c.domains_deny = self.domains_deny;
        c.bundles_allow = self.bundles_allow;
        c.bundles_deny = self.bundles_deny;
        c.categories_allow = self.categories_allow;
        c.categories_deny = self.categories_deny;
        c.device_types = self.device_types;
        c.deals = self.deals;
        c.pacing = self.pacing.unwrap_or_else(|| "asap".into());
    }

    /// An update: only what was given replaces what `c` holds; `clear` empties settings.
    fn merge_into(self, c: &mut pb::CampaignConfig, clear: &[String]) -> Result<(), String> {
        fn set<T>(to: &mut Vec<T>, given: Vec<T>) {
            if !given.is_empty() {
                *to = given;
            }
        }
        if let Some(m) = self.max_cpm {
            c.max_cpm_micros = Some(m.micros());
        }
        set(&mut c.countries, self.countries);
        set(&mut c.sizes, self.sizes);
        set(&mut c.formats, self.formats);
        set(&mut c.inventory, self.inventory);
        set(&mut c.domains_allow, self.domains_allow);
        set(&mut c.domains_deny, self.domains_deny);
        set(&mut c.bundles_allow, self.bundles_allow);
        set(&mut c.bundles_deny, self.bundles_deny);
        set(&mut c.categories_allow, self.categories_allow);
        set(&mut c.categories_deny, self.categories_deny);
        set(&mut c.device_types, self.device_types);
        set(&mut c.deals, self.deals);
        if let Some(p) = self.pacing {
            c.pacing = p;
        }
        for what in clear {
            match what.as_str() {
                "daily-budget" => c.daily_budget_micros = None,
                "max-cpm" => c.max_cpm_micros = None,
                "country" => c.countries.clear(),
                "size" => c.sizes.clear(),
                "format" => c.formats.clear(),
                "inventory" => c.inventory.clear(),
                "allow-domain" => c.domains_allow.clear(),
                "deny-domain" => c.domains_deny.clear(),
                "allow-bundle" => c.bundles_allow.clear(),
                "deny-bundle" => c.bundles_deny.clear(),
                "allow-category" => c.categories_allow.clear(),
                "deny-category" => c.categories_deny.clear(),
                "device-type" => c.device_types.clear(),
                "deal" => c.deals.clear(),
                other => return Err(format!("--clear {other}: no such setting (see --help)")),
            }
        }
        Ok(())
    }
}

/// A gRPC error as budgetctl reports it: a region that cannot be reached is a connection
/// error (exit 2); anything else is the service's answer, in its own words (exit 1).
pub(crate) fn status_error(s: tonic::Status) -> (u8, String) {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => (
            EXIT_USAGE,
            format!("cannot reach the region: {}", s.message()),
        ),
        _ => (EXIT_FAILED, s.message().to_string()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("budgetctl: {e}");
            ExitCode::from(EXIT_USAGE)
        })
}

async fn admin(endpoint: &str) -> Result<AdminClient<Channel>, String> {
    Ok(AdminClient::new(super::connect(endpoint).await?))
}

fn key() -> pb::IdempotencyKey {
    pb::IdempotencyKey {
        key: fastrand::u128(..).to_be_bytes().to_vec(),
    }
}

fn bucket(name: &str, day: Option<&str>) -> Result<pb::BucketKey, String> {
    let bucket: Bucket = match day {
        Some(d) => format!("day:{d}")
            .parse()
            .map_err(|e| format!("--day: {e}"))?,
        None => Bucket::Lifetime,
    };
    Ok(pb::BucketKey {
        campaign: name.to_string(),
        bucket: Some(pb::Bucket::from(&bucket)),
    })
}

/// Sends an admin write to `endpoint`, following one `not_leader` answer to the leader.
async fn write<F, Fut>(endpoint: &str, call: F) -> Result<String, (u8, String)>
where
    F: Fn(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<pb::AdminReply>, tonic::Status>>,
{
    let mut target = endpoint.to_string();
    for _ in 0..NO_LEADER_TRIES {
        let client = admin(&target).await.map_err(|e| (EXIT_USAGE, e))?;
        let reply = call(client).await.map_err(status_error)?.into_inner();
        match reply.result {
            Some(pb::admin_reply::Result::AppliedAtIndex(i)) => {
                return Ok(format!("applied at raft index {i}"));
            }
            Some(pb::admin_reply::Result::Refused(why)) => {
                return Err((EXIT_FAILED, format!("refused: {why}")));
            }
            Some(pb::admin_reply::Result::NotLeader(l)) if !l.leader_addr.is_empty() => {
                target = l.leader_addr
            }
            // No leader known (an election is under way): the same key makes a retry safe.
            _ => tokio::time::sleep(NO_LEADER_PAUSE).await,
        }
    }
    Err((EXIT_FAILED, "no leader could be found; try again".into()))
}

/// While a region has no known leader (an election), wait this long between tries …
const NO_LEADER_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// … this many times at most (about 5 s in all).
const NO_LEADER_TRIES: u32 = 20;

pub(crate) fn campaign(endpoint: &str, cmd: CampaignCommand) -> ExitCode {
    if let CampaignCommand::Show {
        name,
        day,
        all_regions: true,
        json,
    } = &cmd
    {
        return print_result(all_regions(endpoint, name, day.as_deref(), *json));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result: Result<String, (u8, String)> = rt.block_on(async {
        match cmd {
            CampaignCommand::Create {
                name,
                zone,
                bid_cpm,
                daily_budget,
                targeting,
            } => {
                let mut config = pb::CampaignConfig {
                    campaign: name.clone(),
                    time_zone: zone,
                    bid_cpm_micros: bid_cpm.micros(),
                    paused: false,
                    daily_budget_micros: daily_budget.map(Money::micros),
                    ..Default::default()
                };
                targeting.write_to(&mut config);
                if existing(endpoint, &name).await?.is_some() {
                    return Err((
                        EXIT_FAILED,
                        format!(
                            "campaign {name} exists; use `budgetctl campaign update {name}` to \
                             change its settings"
                        ),
                    ));
                }
                upsert(endpoint, config)
                    .await
                    .map(|s| format!("campaign {name} created ({s})"))
            }
            CampaignCommand::Update {
                name,
                zone,
                bid_cpm,
                daily_budget,
                targeting,
                clear,
            } => {
                let Some(mut config) = existing(endpoint, &name).await? else {
                    return Err((
                        EXIT_FAILED,
                        format!("unknown campaign {name} (`budgetctl campaign create` makes one)"),
                    ));
                };
                if let Some(z) = zone {
                    config.time_zone = z;
                }
                if let Some(b) = bid_cpm {
                    config.bid_cpm_micros = b.micros();
                }
                if let Some(d) = daily_budget {
                    config.daily_budget_micros = Some(d.micros());
                }
                targeting
                    .merge_into(&mut config, &clear)
                    .map_err(|e| (EXIT_USAGE, e))?;
                upsert(endpoint, config)
                    .await
                    .map(|s| format!("campaign {name} updated ({s})"))
            }
            CampaignCommand::SetBudget { name, amount, day } => {
                let b = bucket(&name, day.as_deref()).map_err(|e| (EXIT_USAGE, e))?;
                let k = key();
                write(endpoint, |mut c| {
                    let r = pb::SetBudgetRequest {
                        idempotency_key: Some(k.clone()),
                        bucket: Some(b.clone()),
                        budget_micros: amount.micros(),
                    };
                    async move { c.set_budget(r).await }
                })
                .await
                .map(|s| format!("budget of {name} set to {amount} ({s})"))
            }
            CampaignCommand::Pause { name } => pause(endpoint, &name, true).await,
            CampaignCommand::Resume { name } => pause(endpoint, &name, false).await,
            CampaignCommand::Show {
                name, day, json, ..
            } => show(endpoint, &name, day.as_deref(), json).await,
            CampaignCommand::List { json } => list_campaigns(endpoint, json).await,
        }
    });
    print_result(result)
}

/// A campaign's settings as the leader holds them, if it exists.
async fn existing(endpoint: &str, name: &str) -> Result<Option<pb::CampaignConfig>, (u8, String)> {
    let mut c = shared::proto::v1::lease_api_client::LeaseApiClient::new(
        channel(&leader_of(endpoint).await?).await?,
    );
    let r = c
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(r.campaigns.into_iter().find(|c| c.campaign == name))
}

/// Saves a campaign's settings.
async fn upsert(endpoint: &str, config: pb::CampaignConfig) -> Result<String, (u8, String)> {
    let k = key();
    write(endpoint, |mut c| {
        let r = pb::UpsertCampaignRequest {
            idempotency_key: Some(k.clone()),
            config: Some(config.clone()),
        };
        async move { c.upsert_campaign(r).await }
    })
    .await
}

/// One bucket of a campaign in every region, from the region status of --endpoint's region.
fn all_regions(
    endpoint: &str,
    name: &str,
    day: Option<&str>,
    json: bool,
) -> Result<String, (u8, String)> {
    let want = bucket(name, day).map_err(|e| (EXIT_USAGE, e))?;
    let mut v = region_view(endpoint, name)?;
    v.buckets.retain(|b| b.bucket.as_ref() == Some(&want));
    if v.buckets.is_empty() {
        return Err((
            EXIT_FAILED,
            format!("no bucket {} in any region", bucket_name(Some(&want))),
        ));
    }
    if json {
        return Ok(serde_json::to_string_pretty(&regions_json(&v)).unwrap_or_default());
    }
    Ok(regions_text(&v, true))
}

/// Pauses (`paused`) or resumes a campaign.
async fn pause(endpoint: &str, name: &str, paused: bool) -> Result<String, (u8, String)> {
    let k = key();
    let applied = write(endpoint, |mut c| {
        let r = pb::CampaignRequest {
            idempotency_key: Some(k.clone()),
            campaign: name.to_string(),
        };
        async move {
            if paused {
                c.pause_campaign(r).await
            } else {
                c.resume_campaign(r).await
            }
        }
    })
    .await?;
    Ok(format!(
        "campaign {name} {} ({applied})",
        if paused { "paused" } else { "resumed" }
    ))
}

async fn show(
    endpoint: &str,
    name: &str,
    day: Option<&str>,
    json: bool,
) -> Result<String, (u8, String)> {
    let b = bucket(name, day).map_err(|e| (EXIT_USAGE, e))?;
    let region = admin(endpoint)
        .await
        .map_err(|e| (EXIT_USAGE, e))?
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .region;
    let mut target = endpoint.to_string();
    let mut last = String::new();
    for _ in 0..3 {
        let mut client = admin(&target).await.map_err(|e| (EXIT_USAGE, e))?;
        match client
            .get_balance(pb::GetBalanceRequest {
                bucket: Some(b.clone()),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let m = Money::from_micros;
                if json {
                    let v = serde_json::json!({
                        "campaign": name, "region": region, "bucket": day.map_or("lifetime".to_string(), |d| format!("day:{d}")),
                        "budget_micros": r.budget_micros, "rights_micros": r.rights_micros, "settled_micros": r.settled_micros,
                        "leased_micros": r.leased_micros, "in_doubt_micros": r.in_doubt_micros, "available_micros": r.available_micros,
                        "read_at_index": r.read_at_index,
                    });
                    return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
                }
                return Ok(format!(
                    "{name} {}, in region {region} (--all-regions: every region's)\n  budget     {}\n  rights     {}\n  settled    {}\n  leased     {}\n  in doubt   {}\n  available  {}\n  (linearizable read at raft index {})",
                    day.map_or("lifetime".to_string(), |d| format!("day {d}")),
                    m(r.budget_micros),
                    m(r.rights_micros),
                    m(r.settled_micros),
                    m(r.leased_micros),
                    m(r.in_doubt_micros),
                    m(r.available_micros),
                    r.read_at_index
                ));
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err((EXIT_FAILED, s.message().to_string()));
            }
            Err(s) if s.code() == tonic::Code::Unavailable => {
                // Only the leader reads linearizably: ask who leads (waiting out an election).
                last = s.message().to_string();
                target = leader_of(&target).await?;
            }
            Err(s) => return Err(status_error(s)),
        }
    }
    Err((EXIT_FAILED, format!("no linearizable read: {last}")))
}

pub(crate) fn status(endpoint: &str, json: bool) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let mut client = admin(endpoint).await.map_err(|e| (EXIT_USAGE, e))?;
        client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(status_error)
    });
    match result {
        Ok(s) => {
            if json {
                let members: Vec<serde_json::Value> = s
                    .members
                    .iter()
                    .map(|m| serde_json::json!({"node": m.node, "addr": m.addr, "voter": m.voter}))
                    .collect();
                let mut v = serde_json::json!({"region": s.region, "node": s.node, "leader": s.leader_node, "term": s.term,
                    "last_applied_index": s.last_applied_index, "members": members});
                if let Ok(r) = region_view(endpoint, "")
                    && !r.peers.is_empty()
                {
                    v["regions"] = regions_json(&r);
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "region {}: asked node {}, leader node {}, term {}, applied index {}",
                    s.region, s.node, s.leader_node, s.term, s.last_applied_index
                );
                for m in &s.members {
                    let role = if m.node == s.leader_node {
                        "leader"
                    } else if m.voter {
                        "voter"
                    } else {
                        "learner"
                    };
                    println!("  node {:<3} {:<22} {role}", m.node, m.addr);
                }
                match buckets(endpoint) {
                    Ok(b) if b.is_empty() => println!("no budgets yet"),
                    Ok(b) => println!("{}", buckets_table(&b)),
                    Err((_, e)) => println!("buckets: {e}"),
                }
                match region_view(endpoint, "") {
                    Ok(v) if v.peers.is_empty() => {}
                    Ok(v) => println!("\n{}", regions_text(&v, true)),
                    Err((_, e)) => println!("regions: {e}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("budgetctl: {e}");
            ExitCode::from(code)
        }
    }
}

async fn channel(endpoint: &str) -> Result<Channel, (u8, String)> {
    super::connect(endpoint).await.map_err(|e| (EXIT_USAGE, e))
}

/// The campaigns as the leader holds them: it has applied every acknowledged write, so an
/// operator sees their own changes at once (a follower may trail by a moment).
async fn list_campaigns(endpoint: &str, json: bool) -> Result<String, (u8, String)> {
    let mut c = shared::proto::v1::lease_api_client::LeaseApiClient::new(
        channel(&leader_of(endpoint).await?).await?,
    );
    let r = c
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let v: Vec<serde_json::Value> = r
            .campaigns
            .iter()
            .map(|c| {
                serde_json::json!({"campaign": c.campaign, "zone": c.time_zone, "bid_cpm_micros": c.bid_cpm_micros,
                "daily_budget_micros": c.daily_budget_micros, "max_cpm_micros": c.max_cpm_micros,
                "countries": c.countries, "sizes": c.sizes, "formats": c.formats, "inventory": c.inventory,
                "domains_allow": c.domains_allow, "domains_deny": c.domains_deny,
                "bundles_allow": c.bundles_allow, "bundles_deny": c.bundles_deny,
                "categories_allow": c.categories_allow, "categories_deny": c.categories_deny,
                "device_types": c.device_types, "deals": c.deals, "pacing": c.pacing, "paused": c.paused})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    let mut out = format!(
        "{:<20} {:<22} {:>12} {:>14}  state",
        "campaign", "zone", "bid cpm", "daily budget"
    );
    for c in &r.campaigns {
        let daily = c
            .daily_budget_micros
            .map_or("-".to_string(), |d| Money::from_micros(d).to_string());
        let state = if c.paused { "paused" } else { "active" };
        out.push_str(&format!(
            "\n{:<20} {:<22} {:>12} {:>14}  {state}",
            c.campaign,
            c.time_zone,
            Money::from_micros(c.bid_cpm_micros).to_string(),
            daily
        ));
    }
    Ok(out)
}

/// Finds the leader's address through `endpoint`.
async fn leader_of(endpoint: &str) -> Result<String, (u8, String)> {
    let mut c = AdminClient::new(channel(endpoint).await?);
    for _ in 0..NO_LEADER_TRIES {
        let s = c
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        if let Some(m) = s.members.iter().find(|m| m.node == s.leader_node) {
            return Ok(m.addr.clone());
        }
        tokio::time::sleep(NO_LEADER_PAUSE).await;
    }
    Err((
        EXIT_FAILED,
        "no leader could be found; try again".to_string(),
    ))
}

fn print_result(result: Result<String, (u8, String)>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("budgetctl: {e}");
            ExitCode::from(code)
        }
    }
}

/// `campaign/bucket`, as people read a bucket key.
fn bucket_name(k: Option<&pb::BucketKey>) -> String {
    k.map_or(String::new(), |k| {
        let bucket = k
            .bucket
            .as_ref()
            .and_then(|x| Bucket::try_from(x).ok())
            .map_or("?".into(), |x| x.to_string());
        format!("{}/{bucket}", k.campaign)
    })
}

fn buckets_table(balances: &[pb::Balance]) -> String {
    let m = |n: i64| Money::from_micros(n).to_string();
    let mut out = format!(
        "{:<28} {:>14} {:>14} {:>14} {:>14} {:>14}",
        "bucket", "budget", "settled", "leased", "in doubt", "available"
    );
    for b in balances {
        let name = bucket_name(b.bucket.as_ref());
        out.push_str(&format!(
            "\n{name:<28} {:>14} {:>14} {:>14} {:>14} {:>14}",
            m(b.budget_micros),
            m(b.settled_micros),
            m(b.leased_micros),
            m(b.in_doubt_micros),
            m(b.available_micros)
        ));
    }
    out
}

fn buckets(endpoint: &str) -> Result<Vec<pb::Balance>, (u8, String)> {
    let rt = runtime().map_err(|_| (EXIT_USAGE, "cannot start a runtime".to_string()))?;
    rt.block_on(async {
        let leader = leader_of(endpoint).await?;
        let mut c = AdminClient::new(channel(&leader).await?);
        Ok(c.list_buckets(pb::ListBucketsRequest {
            campaign: String::new(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .balances)
    })
}

#[derive(Debug, Subcommand)]
pub(crate) enum LeasesCommand {
    /// List leases: open and in doubt (and with --all, recently closed ones).
    List {
        /// Only this campaign's.
        #[arg(long)]
        campaign: Option<String>,
        /// Include closed leases the region still remembers.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn leases(endpoint: &str, cmd: LeasesCommand) -> ExitCode {
    let LeasesCommand::List {
        campaign,
        all,
        json,
    } = cmd;
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    print_result(rt.block_on(async {
        let mut c = AdminClient::new(channel(endpoint).await?);
        let r = c
            .list_leases(pb::ListLeasesRequest { campaign: campaign.unwrap_or_default(), include_closed: all })
            .await
            .map_err(status_error)?
            .into_inner();
        if json {
            let v: Vec<serde_json::Value> = r
                .leases
                .iter()
                .map(|l| {
                    serde_json::json!({"lease": l.lease_id, "edge": l.edge, "campaign": l.campaign, "amount_micros": l.amount_micros,
                    "spent_micros": l.spent_micros, "state": l.state, "in_doubt_micros": l.in_doubt_micros, "duration_ms": l.duration_ms,
                    "granted_at_index": l.granted_at_index})
                })
                .collect();
            return Ok(serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        let m = |n: i64| Money::from_micros(n).to_string();
        let mut out = format!("{:<8} {:<16} {:<16} {:>14} {:>14} {:<9} {:>14}", "lease", "edge", "campaign", "amount", "spent", "state", "in doubt");
        for l in &r.leases {
            out.push_str(&format!(
                "\nL{:<7} {:<16} {:<16} {:>14} {:>14} {:<9} {:>14}",
                l.lease_id,
                l.edge,
                l.campaign,
                m(l.amount_micros),
                m(l.spent_micros),
                l.state,
                m(l.in_doubt_micros)
            ));
        }
        Ok(out)
    }))
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Make a new region's group from these members (ID=HOST:PORT, repeat); send it to one of
    /// them, once.
    Init {
        /// Members, ID=HOST:PORT.
        #[arg(required = true, value_name = "ID=HOST:PORT")]
        members: Vec<String>,
    },
    /// Add a node: as a learner, then promoted to voter once it has caught up.
    Add {
        /// Its node number.
        id: u64,
        /// Its address.
        addr: String,
        /// Leave it a learner (it receives the log but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Build a Raft snapshot on the node at --endpoint now (they are built every
    /// `snapshot_every` entries anyway), and purge its log behind it: before maintenance, or
    /// to make a node that joins next catch up by snapshot.
    Snapshot,
    /// Remove a node from the group.
    Remove {
        /// Its node number.
        id: u64,
    },
    /// The region's lease rules, as its log records them (replicated: the same on every node);
    /// `params set` changes them.
    Params {
        #[command(subcommand)]
        set: Option<ParamsCommand>,
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Is the node at --endpoint healthy: a voter of a region with a leader, its applied index
    /// caught up with the leader's? Exits 0 if so, 1 if not (a rolling restart waits on it).
    Health {
        /// Keep asking for up to this many seconds until it is.
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ParamsCommand {
    /// Change the flags given, keep the rest: one logged command (a `params_set` entry) that
    /// every replica applies. Leases already granted keep the terms they were granted under;
    /// the coordinators refuse rules that break a rule of DESIGN §5 (e.g. a margin below the
    /// lease duration × the clock rate error).
    Set {
        /// How long a lease may be spent from, ms.
        #[arg(long, value_name = "MS")]
        lease_duration_ms: Option<u64>,
        /// W: how long after its spending window a lease's notices may still come, ms.
        #[arg(long, value_name = "MS")]
        settlement_window_ms: Option<u64>,
        /// The reclaim margin, ms.
        #[arg(long, value_name = "MS")]
        margin_ms: Option<u64>,
        /// How long past a bid's deadline its notice is still accepted, ms.
        #[arg(long, value_name = "MS")]
        late_acceptance_ms: Option<u64>,
        /// The `exp` of an impression that has none, ms.
        #[arg(long, value_name = "MS")]
        default_exp_ms: Option<u64>,
        /// The longest `exp` bid on, ms (at most a day).
        #[arg(long, value_name = "MS")]
        max_exp_ms: Option<u64>,
        /// The longest `tmax` allowed for, ms.
        #[arg(long, value_name = "MS")]
        max_tmax_ms: Option<u64>,
        /// The clock rate error the waits allow for, ppm.
        #[arg(long, value_name = "PPM")]
        clock_rate_error_ppm: Option<u32>,
        /// A lease takes at most available / this.
        #[arg(long, value_name = "N")]
        lease_share_divisor: Option<u32>,
        /// The smallest lease, as a decimal amount (e.g. 0.10).
        #[arg(long, value_name = "AMOUNT", allow_hyphen_values = true)]
        lease_min: Option<Money>,
    },
}

/// The region's rules as `budgetctl cluster params` prints them.
fn params_text(p: &pb::RegionParams) -> String {
    let m = |micros: i64| Money::from_micros(micros).to_string();
    let mut out = format!(
        "rules of the region{}\n",
        if p.recorded {
            format!(
                " (recorded in its log; read at raft index {})",
                p.read_at_index
            )
        } else {
            " (not recorded yet: its first leader records them; these are the defaults)".into()
        }
    );
    for (k, v) in [
        ("lease_duration_ms", p.lease_duration_ms.to_string()),
        ("settlement_window_ms", p.settlement_window_ms.to_string()),
        ("margin_ms", p.margin_ms.to_string()),
        ("late_acceptance_ms", p.late_acceptance_ms.to_string()),
        ("default_exp_ms", p.default_exp_ms.to_string()),
        ("max_exp_ms", p.max_exp_ms.to_string()),
        ("max_tmax_ms", p.max_tmax_ms.to_string()),
        ("clock_rate_error_ppm", p.clock_rate_error_ppm.to_string()),
        ("lease_share_divisor", p.lease_share_divisor.to_string()),
        ("lease_min", m(p.lease_min_micros)),
        (
            "closed_leases_retained",
            p.closed_leases_retained.to_string(),
        ),
        ("requests_retained", p.requests_retained.to_string()),
    ] {
        out.push_str(&format!("  {k:<24} {v}\n"));
    }
    out.pop();
    out
}

/// The rules, read at the leader (a linearizable read).
async fn get_params(endpoint: &str) -> Result<pb::RegionParams, (u8, String)> {
    let leader = leader_of(endpoint).await?;
    let mut c = admin(&leader).await.map_err(|e| (EXIT_USAGE, e))?;
    c.get_params(pb::GetParamsRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(status_error)
}

async fn params(
    endpoint: &str,
    set: Option<ParamsCommand>,
    json: bool,
) -> Result<String, (u8, String)> {
    let mut p = get_params(endpoint).await?;
    let Some(ParamsCommand::Set {
        lease_duration_ms,
        settlement_window_ms,
        margin_ms,
        late_acceptance_ms,
        default_exp_ms,
        max_exp_ms,
        max_tmax_ms,
        clock_rate_error_ppm,
        lease_share_divisor,
        lease_min,
    }) = set
    else {
        return Ok(if json {
            serde_json::json!({
                "recorded": p.recorded,
                "read_at_index": p.read_at_index,
                "lease_duration_ms": p.lease_duration_ms,
                "settlement_window_ms": p.settlement_window_ms,
                "margin_ms": p.margin_ms,
                "late_acceptance_ms": p.late_acceptance_ms,
                "default_exp_ms": p.default_exp_ms,
                "max_exp_ms": p.max_exp_ms,
                "max_tmax_ms": p.max_tmax_ms,
                "clock_rate_error_ppm": p.clock_rate_error_ppm,
                "lease_share_divisor": p.lease_share_divisor,
                "lease_min_micros": p.lease_min_micros,
                "closed_leases_retained": p.closed_leases_retained,
                "requests_retained": p.requests_retained,
            })
            .to_string()
        } else {
            params_text(&p)
        });
    };
    let before = p;
    let put = |field: &mut u64, v: Option<u64>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    put(&mut p.lease_duration_ms, lease_duration_ms);
    put(&mut p.settlement_window_ms, settlement_window_ms);
    put(&mut p.margin_ms, margin_ms);
    put(&mut p.late_acceptance_ms, late_acceptance_ms);
    put(&mut p.default_exp_ms, default_exp_ms);
    put(&mut p.max_exp_ms, max_exp_ms);
    put(&mut p.max_tmax_ms, max_tmax_ms);
    if let Some(v) = clock_rate_error_ppm {
        p.clock_rate_error_ppm = v;
    }
    if let Some(v) = lease_share_divisor {
        p.lease_share_divisor = v;
    }
    if let Some(v) = lease_min {
        p.lease_min_micros = v.micros();
    }
    if p == before {
        return Err((
            EXIT_USAGE,
            "params set: give at least one flag to change (budgetctl cluster params set --help)"
                .into(),
        ));
    }
    let k = key();
    let applied = write(endpoint, |mut c| {
        let r = pb::SetParamsRequest {
            idempotency_key: Some(k.clone()),
            params: Some(p),
        };
        async move { c.set_params(r).await }
    })
    .await?;
    Ok(format!(
        "region rules changed ({applied})\n{}",
        params_text(&get_params(endpoint).await?)
    ))
}

pub(crate) fn cluster(endpoint: &str, cmd: ClusterCommand) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    print_result(rt.block_on(async {
        match cmd {
            ClusterCommand::Init { members } => {
                let mut list = Vec::new();
                for m in &members {
                    let (id, addr) = m
                        .split_once('=')
                        .ok_or((EXIT_USAGE, format!("{m:?}: expected ID=HOST:PORT")))?;
                    let node: u64 = id
                        .parse()
                        .map_err(|_| (EXIT_USAGE, format!("{m:?}: {id:?} is not a node number")))?;
                    list.push(pb::Member {
                        node,
                        addr: addr.to_string(),
                        voter: true,
                    });
                }
                let mut c = AdminClient::new(channel(endpoint).await?);
                c.initialize(pb::InitializeRequest { members: list })
                    .await
                    .map_err(status_error)?;
                Ok(format!("region initialized with {} members", members.len()))
            }
            ClusterCommand::Add { id, addr, learner } => {
                let leader = leader_of(endpoint).await?;
                let mut c = AdminClient::new(channel(&leader).await?);
                c.add_node(pb::AddNodeRequest {
                    node: id,
                    addr: addr.clone(),
                    voter: !learner,
                })
                .await
                .map_err(|s| match s.code() {
                    // The leader answered nothing in time: it waits for the learner to catch
                    // up (a snapshot, then the log) before making it a voter.
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => (
                        EXIT_FAILED,
                        format!(
                            "node {id} was not made a {} in time ({}): it is most likely a \
                             learner still catching up (`budgetctl status` shows it); run \
                             `cluster add {id} {addr}` again to finish",
                            if learner { "learner" } else { "voter" },
                            s.message()
                        ),
                    ),
                    _ => status_error(s),
                })?;
                Ok(format!(
                    "node {id} added as a {}",
                    if learner { "learner" } else { "voter" }
                ))
            }
            ClusterCommand::Health { wait } => {
                super::transport().map_err(|e| (EXIT_USAGE, e))?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
                loop {
                    let why = match health(endpoint).await {
                        Ok(text) => return Ok(text),
                        Err(why) => why,
                    };
                    if std::time::Instant::now() >= deadline {
                        return Err((EXIT_FAILED, format!("{endpoint}: not healthy: {why}")));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            ClusterCommand::Params { set, json } => params(endpoint, set, json).await,
            ClusterCommand::Snapshot => {
                let mut c = AdminClient::new(channel(endpoint).await?);
                let reply = c
                    .trigger_snapshot(pb::TriggerSnapshotRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let at = match reply.result {
                    Some(pb::admin_reply::Result::AppliedAtIndex(i)) => i,
                    other => return Err((EXIT_FAILED, format!("unexpected reply: {other:?}"))),
                };
                Ok(format!(
                    "snapshot asked for at index {at}: it is built when snapshot_last_index on \
                     the node's /metrics reaches it"
                ))
            }
            ClusterCommand::Remove { id } => {
                let leader = leader_of(endpoint).await?;
                let mut c = AdminClient::new(channel(&leader).await?);
                c.remove_node(pb::RemoveNodeRequest { node: id })
                    .await
                    .map_err(status_error)?;
                Ok(format!("node {id} removed"))
            }
        }
    }))
}

/// One look at the node at `endpoint`: why it is not healthy, or a line saying that it is.
async fn health(endpoint: &str) -> Result<String, String> {
    async fn status(addr: &str) -> Result<pb::ClusterStatusReply, String> {
        let ch = super::connect(addr).await?;
        AdminClient::new(ch)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("{addr}: {}", s.message()))
    }
    let me = status(endpoint).await?;
    let member = me
        .members
        .iter()
        .find(|m| m.node == me.node)
        .ok_or_else(|| format!("node {} is not a member of a region (yet)", me.node))?;
    if !member.voter {
        return Err(format!("node {} is a learner, not yet a voter", me.node));
    }
    let leader = me
        .members
        .iter()
        .find(|m| m.node == me.leader_node)
        .ok_or("no leader")?;
    let target = if leader.node == me.node {
        me.last_applied_index
    } else {
        status(&leader.addr).await?.last_applied_index
    };
    // Read again after the leader: caught up means up to where the leader was a moment ago.
    let now = status(endpoint).await?;
    if now.last_applied_index < target {
        return Err(format!(
            "applied index {}, the leader's {target}: catching up",
            now.last_applied_index
        ));
    }
    Ok(format!(
        "node {} of {}: healthy: leader node {}, term {}, applied index {} (the leader's was {target})",
        now.node, now.region, now.leader_node, now.term, now.last_applied_index
    ))
}

/// The leader's view of every region (`RegionStatus`), for `status` and `regions`.
pub(crate) fn region_view(
    endpoint: &str,
    campaign: &str,
) -> Result<pb::RegionStatusReply, (u8, String)> {
    let rt = runtime().map_err(|_| (EXIT_USAGE, "cannot start a runtime".to_string()))?;
    rt.block_on(async {
        let leader = leader_of(endpoint).await?;
        let mut c = AdminClient::new(channel(&leader).await?);
        let r = c
            .region_status(pb::RegionStatusRequest {
                campaign: campaign.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        if r.not_leader.is_some() {
            return Err((EXIT_FAILED, "the leader changed; try again".to_string()));
        }
        Ok(r)
    })
}

fn age(ms: i64) -> String {
    if ms < 0 {
        "never".to_string()
    } else if ms < 10_000 {
        format!("{:.1}s ago", ms as f64 / 1000.0)
    } else {
        format!("{}s ago", ms / 1000)
    }
}

fn short_hash(h: &[u8]) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Peers, sync ages, witnessed heads and alarms; with `buckets`, every bucket's figures per
/// region as well.
pub(crate) fn regions_text(v: &pb::RegionStatusReply, buckets: bool) -> String {
    let m = |n: i64| Money::from_micros(n).to_string();
    let mut out = format!(
        "region {} (log seq {}, head {}…)\n{:<12} {:>14} {:>14} {:>10} {:>18} {:>8} {:>8}  last error",
        v.region,
        v.log_seq,
        short_hash(&v.log_head),
        "peer",
        "pushed ok",
        "heard from",
        "witn. seq",
        "witnessed head",
        "ok",
        "failed"
    );
    for p in &v.peers {
        out.push_str(&format!(
            "\n{:<12} {:>14} {:>14} {:>10} {:>17}… {:>8} {:>8}  {}",
            p.region,
            age(p.last_push_ok_age_ms),
            age(p.last_received_age_ms),
            p.witnessed_seq,
            short_hash(&p.witnessed_head),
            p.pushes_ok,
            p.pushes_failed,
            p.last_error
        ));
    }
    if v.alarms.is_empty() {
        out.push_str("\nalarms: none");
    } else {
        out.push_str(&format!("\nALARMS ({}):", v.alarms.len()));
        for a in &v.alarms {
            out.push_str(&format!("\n  {a}"));
        }
    }
    if buckets {
        for b in &v.buckets {
            let name = bucket_name(b.bucket.as_ref());
            out.push_str(&format!(
                "\n\n{name} (home {})\n  {:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}  figures",
                if b.home.is_empty() { "?" } else { &b.home },
                "region", "created", "in", "out", "settled", "burned", "leased", "in doubt", "available"
            ));
            for r in &b.regions {
                let known = r.figures_age_ms >= 0;
                let or_q = |n: i64| if known { m(n) } else { "?".to_string() };
                out.push_str(&format!(
                    "\n  {:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}  {}",
                    r.region,
                    m(r.created_micros),
                    m(r.transferred_in_micros),
                    m(r.transferred_out_micros),
                    m(r.settled_micros),
                    m(r.burned_micros),
                    or_q(r.leased_micros),
                    or_q(r.in_doubt_micros),
                    or_q(r.available_micros),
                    if r.figures_age_ms == 0 {
                        "here".to_string()
                    } else {
                        age(r.figures_age_ms)
                    }
                ));
            }
        }
        for r in &v.retired {
            out.push_str(&format!(
                "\n\n{}: days through {} retired here (final figures in the log)",
                r.campaign, r.retired_through
            ));
        }
    }
    out
}

/// `budgetctl regions`.
pub(crate) fn regions(endpoint: &str, campaign: Option<&str>, json: bool) -> ExitCode {
    match region_view(endpoint, campaign.unwrap_or("")) {
        Ok(v) if json => {
            let out = regions_json(&v);
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => {
            println!("{}", regions_text(&v, campaign.is_some()));
            if v.alarms.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err((code, e)) => {
            eprintln!("budgetctl: {e}");
            ExitCode::from(code)
        }
    }
}

/// `RegionStatus` as JSON.
fn regions_json(v: &pb::RegionStatusReply) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = v
        .peers
        .iter()
        .map(|p| {
            serde_json::json!({"region": p.region, "addrs": p.addrs,
                "last_push_ok_age_ms": p.last_push_ok_age_ms,
                "last_received_age_ms": p.last_received_age_ms,
                "witnessed_seq": p.witnessed_seq,
                "witnessed_head": p.witnessed_head.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "witnessed_at_index": p.witnessed_at_index,
                "pushes_ok": p.pushes_ok, "pushes_failed": p.pushes_failed,
                "last_error": p.last_error})
        })
        .collect();
    let buckets: Vec<serde_json::Value> = v
        .buckets
        .iter()
        .map(|b| {
            let k = b.bucket.clone().unwrap_or_default();
            let name = bucket_name(b.bucket.as_ref());
            let bucket = name.split_once('/').map_or("?", |(_, b)| b);
            let regions: Vec<serde_json::Value> = b.regions.iter().map(|r| serde_json::json!({
                "region": r.region, "created_micros": r.created_micros,
                "transferred_in_micros": r.transferred_in_micros,
                "transferred_out_micros": r.transferred_out_micros,
                "settled_micros": r.settled_micros, "burned_micros": r.burned_micros,
                "leased_micros": r.leased_micros, "in_doubt_micros": r.in_doubt_micros,
                "available_micros": r.available_micros, "figures_age_ms": r.figures_age_ms})).collect();
            serde_json::json!({"campaign": k.campaign, "bucket": bucket, "home": b.home, "regions": regions})
        })
        .collect();
    serde_json::json!({"region": v.region, "log_seq": v.log_seq,
        "log_head": v.log_head.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "peers": peers, "alarms": v.alarms, "buckets": buckets,
        "retired": v.retired.iter().map(|r| serde_json::json!({"campaign": r.campaign,
            "retired_through": r.retired_through})).collect::<Vec<_>>()})
}

#[derive(Debug, Subcommand)]
pub(crate) enum EdgesCommand {
    /// Registered edges and how far each has checked in. In-doubt money whose deadlines have
    /// passed returns only once every registered edge has checked in past the entry that found
    /// it due: an edge cut off from the region may hold notices it accepted. An edge far behind
    /// the others is the one in-doubt money waits for.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop waiting for an edge that is gone for good (decommissioned, host lost). Notices it
    /// accepted and never reported are lost with it: retire an edge only once its process is
    /// stopped. A restarted edge registers again by itself; it needs no retiring.
    Retire {
        /// The edge's name, as `edges list` shows it.
        edge: String,
    },
}

pub(crate) fn edges(endpoint: &str, cmd: EdgesCommand) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    print_result(rt.block_on(async {
        match cmd {
            EdgesCommand::List { json } => {
                let leader = leader_of(endpoint).await?;
                let mut c = AdminClient::new(channel(&leader).await?);
                let r = c
                    .list_edges(pb::ListEdgesRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner();
                Ok(edges_text(&r, json))
            }
            EdgesCommand::Retire { edge } => {
                let k = key();
                let applied = write(endpoint, |mut c| {
                    let r = pb::RetireEdgeRequest {
                        idempotency_key: Some(k.clone()),
                        edge: edge.clone(),
                    };
                    async move { c.retire_edge(r).await }
                })
                .await?;
                Ok(format!(
                    "edge {edge} retired ({applied}): in-doubt money no longer waits for it"
                ))
            }
        }
    }))
}

fn edges_text(r: &pb::ListEdgesReply, json: bool) -> String {
    if json {
        let edges: Vec<serde_json::Value> = r
            .edges
            .iter()
            .map(|e| {
                serde_json::json!({"edge": e.edge, "incarnation": e.incarnation,
                    "covers_index": e.covers_index})
            })
            .collect();
        let v = serde_json::json!({"edges": edges, "covered_index": r.covered_index,
            "parts_waiting": r.parts_waiting, "waiting_micros": r.waiting_micros,
            "lowest_due_index": r.lowest_due_index, "read_at_index": r.read_at_index});
        return serde_json::to_string_pretty(&v).unwrap_or_default();
    }
    let mut out = format!(
        "{:<24} {:>20} {:>14} {}",
        "edge", "incarnation", "checked in to", ""
    );
    for e in &r.edges {
        let behind = r.lowest_due_index > 0 && e.covers_index < r.lowest_due_index;
        out.push_str(&format!(
            "\n{:<24} {:>20} {:>14} {}",
            e.edge,
            e.incarnation,
            e.covers_index,
            if behind {
                "(in-doubt money waits for it)"
            } else {
                ""
            }
        ));
    }
    if r.edges.is_empty() {
        out.push_str("\n(no edge has registered)");
    }
    if r.parts_waiting > 0 {
        out.push_str(&format!(
            "\n{} in-doubt part(s), {}, are due and wait for the edges marked above to check in \
             (due since raft index {}).",
            r.parts_waiting,
            Money::from_micros(r.waiting_micros),
            r.lowest_due_index
        ));
    } else {
        out.push_str("\nNo in-doubt money waits for a check-in.");
    }
    out.trim_end().to_string()
}
