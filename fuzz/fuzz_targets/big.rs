//! Big values' bytes as a foreign writer, a bomb or corruption might leave them: compressed items
//! (`DZJ1`, `DZF1`) and manifests, read or refused within the limits, never a panic, never more
//! than `max_value_bytes` back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, u32, u32, &[u8])| {
    let (fresh, max_value, max_chunk, data) = input;
    distcache::__fuzz::unpack_item(fresh, data, max_value as usize);
    distcache::__fuzz::read_manifest(data, max_value as usize, max_chunk as usize % (1 << 20));
});
