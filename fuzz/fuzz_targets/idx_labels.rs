//! Fuzz the IDX label parser: any bytes must give Ok or an error, never a
//! panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(labels) = vae_ood::idx::parse_labels(data, "fuzz") {
        assert!(!labels.is_empty());
    }
});
