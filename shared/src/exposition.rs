//! Prometheus' text exposition format (version 0.0.4), from the OpenMetrics text that the
//! `prometheus-client` crate writes.
//!
//! Both binaries serve `/metrics` as `text/plain; version=0.0.4`, the format every Prometheus
//! server and `promtool check metrics` read. The crate writes OpenMetrics 1.0, which differs in
//! three ways that matter: a counter's `# HELP`/`# TYPE` name lacks the `_total` its samples
//! carry (so a 0.0.4 parser sees samples with no help and no type), `# UNIT` lines, and the
//! closing `# EOF`. [`to_prometheus_text`] rewrites those and passes every other line through.

/// The content type of [`to_prometheus_text`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as Prometheus text 0.0.4: counters' metadata named as their samples are
/// (`x_total`), `# UNIT` and `# EOF` dropped, and `_created` samples (which 0.0.4 does not have)
/// dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<&str> = Vec::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.push(name);
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(prefix);
            out.push_str(name);
            if counters.contains(&name) && !name.ends_with("_total") {
                out.push_str("_total");
            }
            if !tail.is_empty() {
                out.push(' ');
                out.push_str(tail);
            }
            out.push('\n');
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if sample_name.ends_with("_created")
            && counters
                .iter()
                .any(|c| sample_name.strip_suffix("_created") == Some(c))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_openmetrics_lines_go() {
        let om = "# HELP edge_bids Bids.\n# TYPE edge_bids counter\n\
                  edge_bids_total{outcome=\"bid\"} 3\nedge_bids_created 17.0\n\
                  # HELP edge_up Up.\n# TYPE edge_up gauge\n# UNIT edge_up seconds\nedge_up 1\n\
                  # HELP edge_done_total Done.\n# TYPE edge_done_total counter\nedge_done_total 2\n\
                  # EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP edge_bids_total Bids.\n# TYPE edge_bids_total counter\n\
             edge_bids_total{outcome=\"bid\"} 3\n\
             # HELP edge_up Up.\n# TYPE edge_up gauge\nedge_up 1\n\
             # HELP edge_done_total Done.\n# TYPE edge_done_total counter\nedge_done_total 2\n"
        );
    }
}
