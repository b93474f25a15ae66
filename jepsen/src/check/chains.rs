//! I4: every replica of a region holds the same chain (one may be a prefix of another), and
//! every replica's chain verifies.

use super::Verdict;

/// One replica's financial log as the harness read it from its data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The node.
    pub node: String,
    /// Entry hashes by seq, from seq 0.
    pub hashes: Vec<[u8; 32]>,
    /// The verifier's result on the node's data directory (`budgetctl audit verify`): `Err`
    /// holds its reason.
    pub verified: Result<(), String>,
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the replicas of one region.
pub fn check(replicas: &[Replica]) -> Verdict {
    let mut violations = Vec::new();
    for r in replicas {
        if let Err(why) = &r.verified {
            violations.push(format!("{}: the chain does not verify: {why}", r.node));
        }
    }
    if let Some(longest) = replicas.iter().max_by_key(|r| r.hashes.len()) {
        for r in replicas {
            let diverged = r
                .hashes
                .iter()
                .zip(&longest.hashes)
                .position(|(a, b)| a != b);
            if let Some(seq) = diverged {
                violations.push(format!(
                    "{} and {} differ at seq {seq}: {} against {}",
                    r.node,
                    longest.node,
                    hex(&r.hashes[seq]),
                    hex(&longest.hashes[seq])
                ));
            }
        }
    }
    Verdict::new("I4", replicas.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, hashes: &[u8]) -> Replica {
        Replica {
            node: node.into(),
            hashes: hashes.iter().map(|b| [*b; 32]).collect(),
            verified: Ok(()),
        }
    }

    #[test]
    fn prefixes_pass_and_forks_are_caught() {
        let same = [
            replica("n1", &[1, 2, 3]),
            replica("n2", &[1, 2]),
            replica("n3", &[1, 2, 3]),
        ];
        assert!(check(&same).held);
        let fork = [replica("n1", &[1, 2, 3]), replica("n2", &[1, 9])];
        let v = check(&fork);
        assert!(!v.held);
        assert!(v.evidence[0].contains("differ at seq 1"), "{v:?}");
    }

    #[test]
    fn a_replica_that_does_not_verify_is_caught() {
        let mut bad = replica("n2", &[1, 2]);
        bad.verified = Err("seq 1: hash".into());
        let v = check(&[replica("n1", &[1, 2]), bad]);
        assert!(!v.held);
        assert!(v.evidence[0].starts_with("n2"), "{v:?}");
        assert!(!check(&[]).held);
    }
}
