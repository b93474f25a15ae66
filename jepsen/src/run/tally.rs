//! `jepsen tally`: what a batch of runs found, from each run's `results.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::check::progress::percent;

/// The tally, as text, and how many runs failed.
pub struct Tally {
    /// The table.
    pub text: String,
    /// Runs that did not pass.
    pub failed: usize,
}

/// Tallies every `*/results.json` under `dir`.
pub fn tally(dir: &Path) -> Result<Tally> {
    let mut runs = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path().join("results.json");
        if p.is_file() {
            let text = std::fs::read_to_string(&p)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}", p.display()))?;
            runs.push((p, v));
        }
    }
    if runs.is_empty() {
        bail!("no results.json under {}", dir.display());
    }
    runs.sort_by_key(|(_, v)| v["seed"].as_u64());
    let mut text = String::new();
    let mut failed = 0;
    let mut faults: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut violations: BTreeMap<String, u64> = BTreeMap::new();
    // Lowest utilization: runs with faults, and baselines (`--nemesis none`) apart.
    let (mut lowest, mut lowest_baseline): (Option<i64>, Option<i64>) = (None, None);
    let (mut baselines, mut slowest_converge) = (0usize, None::<u64>);
    let _ = writeln!(
        text,
        "{:>8} {:>7} {:>6} {:>14} {:>7} {:>12} {:>8}  failed invariants",
        "seed", "regions", "secs", "nemesis", "faults", "utilization", "I5 ms"
    );
    for (_, v) in &runs {
        let passed = v["passed"] == true;
        let baseline = v["baseline"] == true;
        baselines += usize::from(baseline);
        let converged = v["converged_ms"].as_u64();
        if let Some(ms) = converged {
            slowest_converge = Some(slowest_converge.map_or(ms, |s| s.max(ms)));
        }
        failed += usize::from(!passed);
        let mut bad = Vec::new();
        for i in v["invariants"].as_array().into_iter().flatten() {
            let name = i["invariant"].as_str().unwrap_or("?").to_string();
            let n = i["violations"].as_u64().unwrap_or(0);
            if i["held"] != true {
                bad.push(name.clone());
            }
            *violations.entry(name).or_default() += n;
        }
        for c in v["crashed"].as_array().into_iter().flatten() {
            bad.push(format!("crashed {}", c.as_str().unwrap_or("?")));
        }
        for f in v["faults"].as_array().into_iter().flatten() {
            let kind = f["window"]["fault"]["kind"]
                .as_str()
                .unwrap_or("?")
                .to_string();
            let e = faults.entry(kind).or_default();
            e.0 += 1;
            e.1 += u64::from(f["observed"] == true);
        }
        let u = v["utilization_ppm"].as_i64();
        if let Some(u) = u {
            let l = if baseline {
                &mut lowest_baseline
            } else {
                &mut lowest
            };
            *l = Some(l.map_or(u, |l| l.min(u)));
        }
        let nemesis: Vec<&str> = v["nemesis"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
        let regions = v["regions"].as_u64().unwrap_or_else(|| regions_of(v));
        let every = crate::nemesis::Kind::all()
            .iter()
            .chain(if regions > 1 {
                &crate::nemesis::Kind::REGION[..]
            } else {
                &[]
            })
            .all(|k| nemesis.contains(&k.as_str()));
        let _ = writeln!(
            text,
            "{:>8} {:>7} {:>6} {:>14} {:>3}/{:<3} {:>12} {:>8}  {}",
            v["seed"].to_string(),
            regions,
            v["time_limit_secs"].to_string(),
            if every {
                "all".to_string()
            } else if nemesis.is_empty() {
                "none".to_string()
            } else {
                nemesis.join(",")
            },
            v["faults_injected"].to_string(),
            v["faults_scheduled"].to_string(),
            u.map_or("-".into(), percent),
            converged.map_or("-".into(), |ms| ms.to_string()),
            match (passed, bad.is_empty()) {
                (true, _) => "-".to_string(),
                (false, true) => "none (a fault was not seen to reach its target)".to_string(),
                (false, false) => bad.join(","),
            }
        );
    }
    let _ = writeln!(
        text,
        "\n{} runs, {} passed, {} failed.",
        runs.len(),
        runs.len() - failed,
        failed
    );
    if baselines > 0 {
        let _ = writeln!(
            text,
            "{baselines} of them baselines (--nemesis none): measurements, not chaos passes."
        );
    }
    let _ = writeln!(
        text,
        "Faults (injected and seen to reach their target / scheduled): {}.",
        faults
            .iter()
            .map(|(k, (n, seen))| format!("{k} {seen}/{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        text,
        "Violations: {}.",
        violations
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(l) = lowest {
        let _ = writeln!(text, "Lowest utilization: {}.", percent(l));
    }
    if let Some(l) = lowest_baseline {
        let _ = writeln!(text, "Lowest utilization of the baselines: {}.", percent(l));
    }
    if let Some(ms) = slowest_converge {
        let _ = writeln!(
            text,
            "Slowest convergence of the regions after the load (I5): {ms} ms."
        );
    }
    Ok(Tally { text, failed })
}

/// The regions of a run whose `results.json` predates its `regions` field: the distinct
/// regions its nodes' names start with (`eu-1-coordinator-1`), or 1.
fn regions_of(v: &serde_json::Value) -> u64 {
    let names: std::collections::BTreeSet<&str> = v["data_directories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            d["node"]
                .as_str()?
                .split_once("-coordinator-")
                .map(|(r, _)| r)
        })
        .filter(|r| !r.is_empty())
        .collect();
    names.len().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, seed: u64, passed: bool, i1_held: bool) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let v = serde_json::json!({
            "seed": seed, "time_limit_secs": 600, "passed": passed,
            "nemesis": ["partition", "kill"], "faults_injected": 2, "faults_scheduled": 2,
            "utilization_ppm": 990_000 + seed as i64,
            "invariants": [{"invariant": "I1", "held": i1_held, "violations": u64::from(!i1_held)}],
            "faults": [{"window": {"fault": {"kind": "kill"}}, "observed": true},
                       {"window": {"fault": {"kind": "partition"}}, "observed": true}],
        });
        std::fs::write(d.join("results.json"), v.to_string()).unwrap();
    }

    #[test]
    fn runs_are_counted_and_failures_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", 2, true, true);
        write(dir.path(), "b", 1, false, false);
        let t = tally(dir.path()).unwrap();
        assert_eq!(t.failed, 1);
        assert!(t.text.contains("2 runs, 1 passed, 1 failed."), "{}", t.text);
        assert!(t.text.contains("kill 2/2"), "{}", t.text);
        assert!(t.text.contains("Violations: I1 1."), "{}", t.text);
        assert!(t.text.contains("99.0001 %"), "{}", t.text);
        assert!(tally(&dir.path().join("none")).is_err());
    }

    #[test]
    fn baselines_and_regions_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", 3, true, true);
        let d = dir.path().join("b");
        std::fs::create_dir_all(&d).unwrap();
        let v = serde_json::json!({
            "seed": 4, "time_limit_secs": 120, "passed": true, "baseline": true, "regions": 3,
            "nemesis": [], "faults_injected": 0, "faults_scheduled": 0,
            "utilization_ppm": 980_000, "converged_ms": 13,
            "invariants": [{"invariant": "I5", "held": true, "violations": 0}],
            "faults": [],
        });
        std::fs::write(d.join("results.json"), v.to_string()).unwrap();
        let t = tally(dir.path()).unwrap();
        assert_eq!(t.failed, 0);
        assert!(t.text.contains("1 of them baselines"), "{}", t.text);
        assert!(
            t.text.contains("Lowest utilization: 99.0003 %."),
            "{}",
            t.text
        );
        assert!(
            t.text
                .contains("Lowest utilization of the baselines: 98.0000 %."),
            "{}",
            t.text
        );
        assert!(t.text.contains("(I5): 13 ms."), "{}", t.text);
        let row = t
            .text
            .lines()
            .find(|l| l.trim_start().starts_with('4'))
            .unwrap();
        assert!(row.contains(" 3 ") && row.contains("none"), "{row}");
        // Older results name their regions only through their nodes.
        let old = serde_json::json!({"data_directories": [
            {"node": "eu-1-coordinator-1"}, {"node": "us-1-coordinator-2"}, {"node": "eu-1-coordinator-3"}]});
        assert_eq!(regions_of(&old), 2);
        let one = serde_json::json!({"data_directories": [{"node": "coordinator-1"}]});
        assert_eq!(regions_of(&one), 1);
    }
}
