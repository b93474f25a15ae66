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
    let mut lowest: Option<i64> = None;
    let _ = writeln!(
        text,
        "{:>8} {:>6} {:>14} {:>7} {:>12}  failed invariants",
        "seed", "secs", "nemesis", "faults", "utilization"
    );
    for (_, v) in &runs {
        let passed = v["passed"] == true;
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
            lowest = Some(lowest.map_or(u, |l| l.min(u)));
        }
        let nemesis: Vec<&str> = v["nemesis"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .collect();
        let _ = writeln!(
            text,
            "{:>8} {:>6} {:>14} {:>3}/{:<3} {:>12}  {}",
            v["seed"].to_string(),
            v["time_limit_secs"].to_string(),
            if nemesis.len() == 8 {
                "all".to_string()
            } else if nemesis.is_empty() {
                "none".to_string()
            } else {
                nemesis.join(",")
            },
            v["faults_injected"].to_string(),
            v["faults_scheduled"].to_string(),
            u.map_or("-".into(), percent),
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
    Ok(Tally { text, failed })
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
}
