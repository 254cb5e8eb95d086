#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    insitu_gateway::auth::fuzz::sigv4_parsers(data);
});
