//! One-shot SHA-256 over a few byte slices, for the verification hot path.
//!
//! The log hashes many short inputs (leaves of ~60 bytes, nodes of 65, entry links of 82). The
//! streaming `sha2::Sha256` spends as much time buffering and finalising those as compressing
//! them, so this calls the `sha2` crate's block function (SHA-NI where the CPU has it) directly
//! and does the FIPS 180-4 padding itself, on the stack. The test below checks it against
//! `sha2::Sha256` for every length around the block boundaries and for random splits.

use sha2::block_api::compress256;

use super::Hash;

const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// `SHA-256(parts[0] ‖ parts[1] ‖ …)`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut state = IV;
    let mut block = [0u8; 64];
    let mut fill = 0usize;
    let mut total_bytes: u64 = 0;
    for part in parts {
        let mut p: &[u8] = part;
        total_bytes += p.len() as u64;
        if fill > 0 {
            let take = (64 - fill).min(p.len());
            block[fill..fill + take].copy_from_slice(&p[..take]);
            fill += take;
            p = &p[take..];
            if fill < 64 {
                continue;
            }
            compress256(&mut state, std::slice::from_ref(&block));
        }
        let (blocks, rest) = p.as_chunks::<64>();
        if !blocks.is_empty() {
            compress256(&mut state, blocks);
        }
        block[..rest.len()].copy_from_slice(rest);
        fill = rest.len();
    }
    // Padding: 0x80, zeros, then the message length in bits as a big-endian u64.
    block[fill] = 0x80;
    fill += 1;
    if fill > 56 {
        block[fill..].fill(0);
        compress256(&mut state, std::slice::from_ref(&block));
        fill = 0;
    }
    block[fill..56].fill(0);
    block[56..].copy_from_slice(&total_bytes.wrapping_mul(8).to_be_bytes());
    compress256(&mut state, std::slice::from_ref(&block));
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn agrees_with_sha2_at_every_length_near_block_boundaries() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..data.len() {
            let expected: Hash = Sha256::digest(&data[..len]).into();
            assert_eq!(sha256(&[&data[..len]]), expected, "len {len}");
            let (a, b) = data[..len].split_at(len / 3);
            assert_eq!(sha256(&[a, &[], b]), expected, "len {len} split");
        }
        assert_eq!(
            hex::encode(sha256(&[b"abc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        #[test]
        fn agrees_with_sha2_on_random_splits(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..150), 0..6)) {
            let whole: Vec<u8> = parts.concat();
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let expected: Hash = Sha256::digest(&whole).into();
            prop_assert_eq!(sha256(&slices), expected);
        }
    }
}
