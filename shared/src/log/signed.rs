//! Signed log heads (LOG_FORMAT.md §9), as Certificate Transparency's signed tree heads: a
//! region's coordinator signs (region, seq, head hash, time) with the private key of its own
//! TLS certificate, and an auditor who trusts the deployment's CA checks the signature, that
//! the CA issued the certificate, and that the certificate is a coordinator's of that region.
//!
//! The log's digests are unkeyed: whoever can write an archive can rewrite it consistently. A
//! signed head ties an archive (or a proof) to what a coordinator of the region committed to,
//! and two valid heads of one region with one seq and different hashes are proof that the
//! region showed two different logs.

use serde::{Deserialize, Serialize};

use super::Hash;
use super::codec::Writer;
use super::entry::hex_hash;
use crate::RegionId;
use crate::tls::{self, Role};

/// The `format` field of every signed head.
pub const SIGNED_HEAD_FORMAT: &str = "budget-log-signed-head/v1";

/// The domain tag of the signed message.
pub const SIGNED_HEAD_TAG: &[u8] = b"BUDGETLOG-V1-SIGNED-HEAD";

/// The extension of a signed head file beside a sealed segment.
pub const HEAD_EXT: &str = "head";

/// A signed head (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// Always [`SIGNED_HEAD_FORMAT`].
    pub format: String,
    /// The region whose log it is.
    pub region: RegionId,
    /// The seq of the head entry.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "hex_hash")]
    pub head_hash: Hash,
    /// When the coordinator signed, µs since the Unix epoch, by its own clock: informative,
    /// covered by the signature, checked against nothing.
    pub time_us: i64,
    /// The signer's certificate (PEM).
    pub certificate: String,
    /// The signature over [`signed_message`], hex.
    pub signature: String,
}

/// The bytes a head's signature covers: `"BUDGETLOG-V1-SIGNED-HEAD" ‖ region str ‖ seq u64 ‖
/// head_hash ‖ time_us i64`, in the encodings of LOG_FORMAT.md §1.
pub fn signed_message(region: &RegionId, seq: u64, head_hash: &Hash, time_us: i64) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(SIGNED_HEAD_TAG);
    w.str(region.as_str());
    w.u64(seq);
    w.hash(head_hash);
    w.i64(time_us);
    w.into_bytes()
}

/// Why a signed head cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a signed head at all (bad JSON, format, hex).
    #[error("not a signed head: {0}")]
    Malformed(String),
    /// A signed head that does not check.
    #[error("{0}")]
    Invalid(String),
}

/// Signs heads with a coordinator's TLS key.
pub struct HeadSigner {
    key: rcgen::KeyPair,
    cert_pem: String,
    region: RegionId,
}

impl std::fmt::Debug for HeadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadSigner({})", self.region)
    }
}

impl HeadSigner {
    /// A signer from a coordinator's certificate and key (PEM). The certificate must be a
    /// coordinator's of `region`, and the key its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str, region: &RegionId) -> Result<Self, HeadError> {
        let invalid = |s: String| HeadError::Invalid(s);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid(format!("the certificate is not PEM: {e}")))?;
        let peer = tls::peer_of(&pem.contents).map_err(|e| invalid(e.0))?;
        if peer.role != Role::Coordinator || peer.region.as_deref() != Some(region.as_str()) {
            return Err(invalid(format!(
                "the certificate of {:?} is not a coordinator's of region {region}",
                peer.name
            )));
        }
        let key = rcgen::KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(format!("the key is not a PEM private key: {e}")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| invalid(format!("the certificate does not parse: {e}")))?;
        if key.public_key_raw() != &*cert.public_key().subject_public_key.data {
            return Err(invalid("the key is not the certificate's".into()));
        }
        Ok(HeadSigner {
            key,
            cert_pem: cert_pem.to_string(),
            region: region.clone(),
        })
    }

    /// Signs the head `(seq, head_hash)` at `time_us`.
    pub fn sign(&self, seq: u64, head_hash: &Hash, time_us: i64) -> Result<SignedHead, HeadError> {
        use rcgen::SigningKey as _;
        let msg = signed_message(&self.region, seq, head_hash, time_us);
        let sig = self
            .key
            .sign(&msg)
            .map_err(|e| HeadError::Invalid(format!("signing failed: {e}")))?;
        Ok(SignedHead {
            format: SIGNED_HEAD_FORMAT.to_string(),
            region: self.region.clone(),
            seq,
            head_hash: *head_hash,
            time_us,
            certificate: self.cert_pem.clone(),
            signature: hex::encode(sig),
        })
    }
}

/// A signed head that checked: who signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedHead {
    /// The head.
    pub head: SignedHead,
    /// The signer's common name.
    pub signer: String,
}

impl SignedHead {
    /// Parses a signed head file's text.
    pub fn parse(text: &str) -> Result<SignedHead, HeadError> {
        let h: SignedHead =
            serde_json::from_str(text).map_err(|e| HeadError::Malformed(e.to_string()))?;
        if h.format != SIGNED_HEAD_FORMAT {
            return Err(HeadError::Malformed(format!(
                "format {:?}, expected {SIGNED_HEAD_FORMAT:?}",
                h.format
            )));
        }
        Ok(h)
    }

    /// Checks the head against the deployment's CA certificate (PEM): the CA issued the
    /// signer's certificate, which is a coordinator's of the head's region, and the signature
    /// covers the head.
    pub fn check(&self, ca_pem: &[u8]) -> Result<CheckedHead, HeadError> {
        let invalid = |s: String| HeadError::Invalid(s);
        let malformed = |s: String| HeadError::Malformed(s);
        if self.format != SIGNED_HEAD_FORMAT {
            return Err(malformed(format!("format {:?}", self.format)));
        }
        let sig =
            hex::decode(&self.signature).map_err(|_| malformed("signature is not hex".into()))?;
        tls::check_signed_by(self.certificate.as_bytes(), ca_pem).map_err(|e| {
            invalid(format!(
                "the signer's certificate is not from this CA: {}",
                e.0
            ))
        })?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.certificate.as_bytes())
            .map_err(|e| malformed(format!("certificate: {e}")))?;
        let peer = tls::peer_of(&pem.contents).map_err(|e| invalid(e.0))?;
        if peer.role != Role::Coordinator {
            return Err(invalid(format!(
                "signed by {:?}, whose certificate grants the role {}, not coordinator",
                peer.name, peer.role
            )));
        }
        if peer.region.as_deref() != Some(self.region.as_str()) {
            return Err(invalid(format!(
                "the head says region {}, but its signer {:?} is a coordinator of region {}",
                self.region,
                peer.name,
                peer.region.as_deref().unwrap_or("?")
            )));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| malformed(format!("certificate: {e}")))?;
        let spki = cert.public_key();
        let alg = verification_algorithm(spki).ok_or_else(|| {
            invalid(format!(
                "the signer's key type ({}) is not one heads are signed with (ECDSA P-256 or \
                 P-384, Ed25519, RSA)",
                spki.algorithm.algorithm
            ))
        })?;
        let msg = signed_message(&self.region, self.seq, &self.head_hash, self.time_us);
        ring::signature::UnparsedPublicKey::new(alg, &*spki.subject_public_key.data)
            .verify(&msg, &sig)
            .map_err(|_| {
                invalid(format!(
                    "the signature does not match region {}, seq {}, head {}",
                    self.region,
                    self.seq,
                    hex::encode(self.head_hash)
                ))
            })?;
        Ok(CheckedHead {
            head: self.clone(),
            signer: peer.name,
        })
    }
}

/// The verification algorithm for a signer's key (the ones `rcgen` signs with).
fn verification_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Option<&'static dyn ring::signature::VerificationAlgorithm> {
    use x509_parser::oid_registry as oids;
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
        if curve == oids::OID_EC_P256 {
            Some(&ring::signature::ECDSA_P256_SHA256_ASN1)
        } else if curve == oids::OID_NIST_EC_P384 {
            Some(&ring::signature::ECDSA_P384_SHA384_ASN1)
        } else {
            None
        }
    } else if *alg == oids::OID_SIG_ED25519 {
        Some(&ring::signature::ED25519)
    } else if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        Some(&ring::signature::RSA_PKCS1_2048_8192_SHA256)
    } else {
        None
    }
}

/// Two checked heads of one region at one seq with different hashes: the region signed two
/// different logs. Returns the first such pair.
pub fn conflict(heads: &[CheckedHead]) -> Option<(&CheckedHead, &CheckedHead)> {
    for (i, a) in heads.iter().enumerate() {
        for b in &heads[i + 1..] {
            if a.head.region == b.head.region
                && a.head.seq == b.head.seq
                && a.head.head_hash != b.head.head_hash
            {
                return Some((a, b));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Authority, Validity};

    fn region(s: &str) -> RegionId {
        s.parse().unwrap()
    }

    fn issue(ca: &Authority, role: Role, region: Option<&str>) -> (String, String) {
        let i = ca
            .issue(
                role,
                "node-1",
                region,
                &["127.0.0.1".into()],
                Validity::days(30).unwrap(),
            )
            .unwrap();
        (i.cert_pem.clone(), i.key_pem.clone())
    }

    #[test]
    fn a_head_signed_by_a_coordinator_of_its_region_checks_and_edits_do_not() {
        let ca = Authority::create("test CA", Validity::days(30).unwrap()).unwrap();
        let (cert, key) = issue(&ca, Role::Coordinator, Some("eu-1"));
        let signer = HeadSigner::from_pem(&cert, &key, &region("eu-1")).unwrap();
        let h = signer.sign(41, &[7; 32], 1_793_491_200_000_000).unwrap();
        let text = serde_json::to_string(&h).unwrap();
        let parsed = SignedHead::parse(&text).unwrap();
        let ok = parsed.check(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(ok.signer, "node-1");
        // Every signed field is bound.
        let mut e = h.clone();
        e.region = region("us-1");
        assert!(e.check(ca.cert_pem().as_bytes()).is_err());
        let mut e = h.clone();
        e.seq = 42;
        assert!(e.check(ca.cert_pem().as_bytes()).is_err());
        let mut e = h.clone();
        e.head_hash[0] ^= 1;
        assert!(e.check(ca.cert_pem().as_bytes()).is_err());
        let mut e = h.clone();
        e.time_us += 1;
        assert!(e.check(ca.cert_pem().as_bytes()).is_err());
        // Another CA's view: the certificate is not its.
        let other = Authority::create("other CA", Validity::days(30).unwrap()).unwrap();
        assert!(h.check(other.cert_pem().as_bytes()).is_err());
        // Unknown fields are refused.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            SignedHead::parse(&v.to_string()),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn only_a_coordinator_of_the_region_may_sign() {
        let ca = Authority::create("test CA", Validity::days(30).unwrap()).unwrap();
        let (cert, key) = issue(&ca, Role::Coordinator, Some("us-1"));
        assert!(HeadSigner::from_pem(&cert, &key, &region("eu-1")).is_err());
        // A head re-labelled with another region than its signer's does not check, even
        // when signed over that region (by a coordinator of us-1).
        let us = HeadSigner::from_pem(&cert, &key, &region("us-1")).unwrap();
        let mut h = us.sign(1, &[1; 32], 0).unwrap();
        h.region = region("eu-1");
        let e = h.check(ca.cert_pem().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("signature") || e.to_string().contains("region"),
            "{e}"
        );
        // An edge's certificate does not sign heads.
        let (cert, key) = issue(&ca, Role::Edge, Some("eu-1"));
        assert!(HeadSigner::from_pem(&cert, &key, &region("eu-1")).is_err());
    }

    #[test]
    fn two_heads_of_one_seq_with_different_hashes_conflict() {
        let ca = Authority::create("test CA", Validity::days(30).unwrap()).unwrap();
        let (cert, key) = issue(&ca, Role::Coordinator, Some("eu-1"));
        let s = HeadSigner::from_pem(&cert, &key, &region("eu-1")).unwrap();
        let pem = ca.cert_pem().as_bytes().to_vec();
        let a = s.sign(5, &[1; 32], 0).unwrap().check(&pem).unwrap();
        let b = s.sign(5, &[1; 32], 9).unwrap().check(&pem).unwrap();
        let c = s.sign(6, &[2; 32], 0).unwrap().check(&pem).unwrap();
        assert!(conflict(&[a.clone(), b.clone(), c.clone()]).is_none());
        let d = s.sign(5, &[3; 32], 0).unwrap().check(&pem).unwrap();
        let heads = [a, c, d];
        let (x, y) = conflict(&heads).unwrap();
        assert_ne!(x.head.head_hash, y.head.head_hash);
    }
}
