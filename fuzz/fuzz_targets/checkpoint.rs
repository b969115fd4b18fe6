//! Fuzz the safetensors checkpoint parser: any bytes must give Ok or a
//! one-line error, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match vae_ood::checkpoint::from_bytes(data, "fuzz") {
        Ok(ck) => {
            let d = ck.layout.dims;
            assert!(d.d > 0 && d.h > 0 && d.l > 0);
            assert_eq!(ck.params.len(), ck.layout.total);
            assert!(ck.params.iter().all(|x| x.is_finite()));
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
