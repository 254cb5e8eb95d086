#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (out, _) = insitu_storage_node::image_archive::rewrite_in_memory(data);
    // Nothing sent can be larger than what was read, beyond the rebuilt
    // tag files and the end marker.
    assert!(out.len() <= 2 * data.len() + 64 * 1024);
});
