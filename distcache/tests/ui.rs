//! Every misuse of `#[distcached]` is a compile error at the user's own tokens.
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p distcache --test ui`,
//! then read the diff.

#[test]
fn misuse_is_a_spanned_compile_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
