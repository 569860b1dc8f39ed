//! `docker-compose.yml` and its Dockerfile, checked with a real YAML parser: CI has no Docker
//! engine, so this is what keeps them from rotting. The same demo runs against local memcached
//! processes in `demo.rs`.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
}

fn compose() -> Yaml {
    let text =
        std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut docs = YamlLoader::load_from_str(&text).expect("docker-compose.yml is valid YAML");
    assert_eq!(docs.len(), 1, "one document");
    docs.remove(0)
}

#[test]
fn compose_runs_three_memcached_and_two_demo_replicas_sharing_them() {
    let compose = compose();
    let services = compose["services"].as_hash().expect("a services map");
    let memcached: Vec<&str> = services
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("memcached:1.6"))
        })
        .map(|(name, _)| name.as_str().expect("service names are strings"))
        .collect();
    assert_eq!(
        memcached.len(),
        3,
        "three memcached 1.6 servers: {memcached:?}"
    );

    let demo = &compose["services"]["demo"];
    assert!(
        demo["deploy"]["replicas"].as_i64().is_some_and(|r| r >= 2),
        "at least two replicas of the demo"
    );
    let servers = demo["environment"]["DISTCACHE_SERVERS"]
        .as_str()
        .expect("DISTCACHE_SERVERS is set");
    let listed: Vec<distcache::Server> = servers
        .split(',')
        .map(|s| s.parse().expect("each server parses as distcache reads it"))
        .collect();
    let mut hosts: Vec<&str> = listed.iter().map(|s| s.host()).collect();
    hosts.sort_unstable();
    let mut expected = memcached.clone();
    expected.sort_unstable();
    assert_eq!(
        hosts, expected,
        "the demo uses exactly the three memcached services"
    );
    assert!(
        listed.iter().all(|s| s.port() == 11211),
        "on memcached's port"
    );
    let depends = demo["depends_on"]
        .as_hash()
        .expect("depends_on, with conditions");
    for name in &memcached {
        let condition = depends[&Yaml::String((*name).to_owned())]["condition"].as_str();
        assert_eq!(
            condition,
            Some("service_healthy"),
            "the demo waits until {name} answers"
        );
        let test = compose["services"][*name]["healthcheck"]["test"]
            .as_vec()
            .expect("a healthcheck");
        let script = test.last().and_then(Yaml::as_str).unwrap_or_default();
        assert!(
            script.contains("/dev/tcp/127.0.0.1/11211") && script.contains("MN"),
            "{name}'s healthcheck asks memcached: {script}"
        );
    }

    let build = &demo["build"];
    assert_eq!(build["context"].as_str(), Some("."));
    let dockerfile = build["dockerfile"].as_str().expect("a Dockerfile");
    let dockerfile =
        std::fs::read_to_string(root().join(dockerfile)).expect("the Dockerfile exists");
    assert!(
        dockerfile.contains("cargo build --release --locked --example factorial"),
        "it builds the demo"
    );
    assert!(
        dockerfile.contains("/src/target/release/examples/factorial")
            && dockerfile.contains("ENTRYPOINT"),
        "and runs it"
    );
}
