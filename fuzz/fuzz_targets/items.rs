//! Items under our key as a foreign writer or corruption might leave them: decoded or refused,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u32, &[u8])| {
    let (flags, data) = input;
    distcache::__fuzz::decode_item(flags, data);
    // Our own flags too, so that most inputs reach the JSON decoder.
    distcache::__fuzz::decode_item(u32::from_be_bytes(*b"DCJ1"), data);
});
