//! Fuzz the IDX image parser: any bytes must give Ok or an error, never a
//! panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(images) = vae_ood::idx::parse_images(data, "fuzz") {
        assert_eq!(images.pixels.len(), images.n * images.rows * images.cols);
        assert!(images.n > 0 && images.rows > 0 && images.cols > 0);
    }
});
