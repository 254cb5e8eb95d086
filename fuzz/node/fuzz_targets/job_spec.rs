#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = insitu_jobs::spec::JobSpec::parse(data);
});
