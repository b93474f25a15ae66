//! The Merkle tree over a spend batch's events, exactly as RFC 6962 §2.1 defines it (and RFC 9162
//! §2.1.3 verifies it), so that an auditor can use any CT library:
//!
//! ```text
//! leaf  = SHA-256(0x00 ‖ event bytes)
//! node  = SHA-256(0x01 ‖ left ‖ right)
//! MTH({d0})      = leaf(d0)
//! MTH(D[n]), n>1 = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
//! ```
//!
//! Spend batches are never empty, so the empty tree's hash (`SHA-256("")`) never occurs in the log.

use super::Hash;
use super::sha::sha256;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The tree head over `leaves` (already leaf-hashed). The empty tree is `SHA-256("")`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 6962 §2.1.1 `PATH`), from the leaf upward; `None` if
/// `index` is out of range.
pub fn audit_path(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path_into(leaves, index, &mut out);
    Some(out)
}

fn path_into(leaves: &[Hash], m: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_into(&leaves[..k], m, out);
        out.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], m - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// The root that `leaf` at `index` of a tree of `size` leaves leads to along `path` (RFC 9162
/// §2.1.3.2), or `None` if the path cannot belong to such a tree.
pub fn root_from_path(leaf: &Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i as u8])).collect()
    }

    #[test]
    fn rfc6962_shape_for_small_trees() {
        let l = leaves(7);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node_hash(&l[0], &l[1]));
        let n01 = node_hash(&l[0], &l[1]);
        let n23 = node_hash(&l[2], &l[3]);
        assert_eq!(root(&l[..3]), node_hash(&n01, &l[2]));
        let n0123 = node_hash(&n01, &n23);
        let n45 = node_hash(&l[4], &l[5]);
        assert_eq!(root(&l[..7]), node_hash(&n0123, &node_hash(&n45, &l[6])));
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_path_of_every_size_leads_to_the_root() {
        for n in 1..=40 {
            let l = leaves(n);
            let head = root(&l);
            for i in 0..n {
                let path = audit_path(&l, i).unwrap();
                assert_eq!(
                    root_from_path(&l[i], i as u64, n as u64, &path),
                    Some(head),
                    "n={n} i={i}"
                );
                // A wrong index, size, leaf or path does not.
                if n > 1 {
                    let other = (i + 1) % n;
                    assert_ne!(
                        root_from_path(&l[i], other as u64, n as u64, &path),
                        Some(head)
                    );
                    assert_ne!(
                        root_from_path(&l[other], i as u64, n as u64, &path),
                        Some(head)
                    );
                    let mut bent = path.clone();
                    bent[0][0] ^= 1;
                    assert_ne!(root_from_path(&l[i], i as u64, n as u64, &bent), Some(head));
                    assert_eq!(root_from_path(&l[i], i as u64, n as u64, &path[1..]), None);
                }
            }
            assert_eq!(audit_path(&l, n), None);
            assert_eq!(root_from_path(&l[0], n as u64, n as u64, &[]), None);
        }
    }
}
