//! What the example tests share.

use std::path::PathBuf;
use std::process::Command;

/// The example `name`'s binary, built by `cargo test` beside this test (or built now, if the test
/// is run alone).
pub(crate) fn example_binary(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("the test binary");
    let binary = deps
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join("examples")
        .join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", name])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the example {name} builds");
    }
    binary
}
