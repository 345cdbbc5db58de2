#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder_fuzz::master_ops(data));
