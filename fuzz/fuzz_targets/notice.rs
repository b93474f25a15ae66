//! Notice parsing: any query gets an answer, never a panic; nothing unsigned verifies.
#![no_main]

use edge::notice::{Kind, Signer, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    let signer = Signer::new("fuzz", b"fuzz-key-fuzz-key".to_vec(), None);
    for kind in [Kind::Win, Kind::Bill, Kind::Loss] {
        if let Ok(n) = parse(kind, q, &signer) {
            // Only a correct HMAC gets here; the fuzzer cannot forge one.
            assert!(q.contains("s="), "verified without a signature: {n:?}");
        }
    }
});
