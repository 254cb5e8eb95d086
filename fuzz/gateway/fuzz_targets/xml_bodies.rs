#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    insitu_gateway::s3::fuzz::xml_bodies(data);
});
