//! Caller keys of any bytes: always a valid memcached key, and distinct keys stay distinct.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str)| {
    let (namespace, a, b) = input;
    let (Some(wa), Some(wb)) = (
        distcache::__fuzz::wire_key(namespace, a),
        distcache::__fuzz::wire_key(namespace, b),
    ) else {
        return;
    };
    assert_eq!(a == b, wa == wb, "{a:?} and {b:?} gave {wa:?} and {wb:?}");
});
