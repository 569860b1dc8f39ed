//! memcached's replies as a hostile or broken server might send them, cut into pieces as TCP may
//! deliver them, to a parser with a value limit: never a panic, never a value over the limit kept.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, u8, &[u8])| {
    let (max_value, piece, data) = input;
    distcache::__fuzz::parse_replies(data, usize::from(max_value), usize::from(piece));
});
