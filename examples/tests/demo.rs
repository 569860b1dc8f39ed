//! The demo across processes, as `docker-compose.yml` runs it but with local memcached
//! processes: two factorial processes at once on three servers; each number is computed once
//! across both. One round each, so that the run fits in one 10 s `expire` window even on a slow
//! machine (the cold round takes about 5 s here); each process also checks its own computations
//! against the window.

mod common;
#[path = "../../distcache/tests/support/memcached.rs"]
mod memcached;

use std::collections::BTreeMap;
use std::process::Output;

use memcached::Memcached;

/// Per number: (computed, read), from the summary of one run's output.
fn summary(output: &str) -> BTreeMap<u64, (u64, u64)> {
    output
        .lines()
        .skip_while(|line| !line.starts_with("summary"))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let n = fields.first()?.strip_suffix('!')?.parse().ok()?;
            Some((
                n,
                (fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_on_three_servers_compute_each_number_once() {
    let servers = Memcached::start_many::<3>().await;
    let list = servers
        .iter()
        .map(Memcached::addr)
        .collect::<Vec<_>>()
        .join(",");
    let binary = common::example_binary("factorial");
    let run = || {
        let mut command = tokio::process::Command::new(&binary);
        command
            .args(["--rounds", "1"])
            .env("DISTCACHE_SERVERS", &list)
            .env("RUST_LOG", "warn");
        async move { command.output().await.expect("the demo runs") }
    };
    let (a, b): (Output, Output) = tokio::join!(run(), run());
    let mut computed = BTreeMap::new();
    for output in [&a, &b] {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the demo succeeded:\n{text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with(&format!("cache: memcached {list}")),
            "{text}"
        );
        assert!(
            text.contains("computed at most once per 10s window in this process: yes"),
            "{text}"
        );
        let table = summary(&text);
        assert_eq!(table.len(), 10, "ten numbers in the summary:\n{text}");
        for (n, (c, read)) in table {
            assert_eq!(c + read, 10, "10 workers x 1 round asked for {n}!");
            *computed.entry(n).or_insert(0) += c;
        }
    }
    assert_eq!(
        computed.values().copied().collect::<Vec<_>>(),
        vec![1; 10],
        "each number computed once across both processes: {computed:?}\n{}\n{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
}
