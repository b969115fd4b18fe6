//! Fuzz the 28x28 PNG decoder: any bytes must give Ok or a one-line error,
//! never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = vae_ood::images::decode_png_28x28(data, "fuzz") {
        assert!(!e.to_string().contains('\n'));
    }
});
