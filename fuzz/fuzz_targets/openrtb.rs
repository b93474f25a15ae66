//! Bid request parsing: any body gets an answer (a request or a reason), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edge::openrtb::parse(data, edge::openrtb::Version::V26);
    let _ = edge::openrtb::parse(data, edge::openrtb::Version::V25);
});
