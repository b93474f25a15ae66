//! The segment reader and verifier on arbitrary bytes: must return, never panic, hang or
//! allocate without bound. Seeded with the sample archive's segments by `./dev fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::log::segment::{Item, read_header, read_item};
use shared::log::verify::Verifier;

fuzz_target!(|data: &[u8]| {
    // The whole verifier, as `budgetctl audit verify` runs it.
    let _ = Verifier::new().segment("fuzz-00000000000000000000.seg", data);
    // The framing alone, walked to the end, so records after a bad one are read too.
    if let Ok((_, mut pos)) = read_header(data) {
        while let Ok(Item::Record(r)) = read_item(data, pos) {
            assert!(r.end > pos, "the reader must advance");
            pos = r.end;
        }
    }
});
