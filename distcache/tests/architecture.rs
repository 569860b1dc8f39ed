//! The runtime's modules import each other without a cycle (ARCHITECTURE.md, "Layers"): each
//! `crate::…` path in a module's source, its tests left out, names a module it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The crate's top-level modules, and what `lib.rs` re-exports from each.
const MODULES: &[(&str, &[&str])] = &[
    ("blocking", &[]),
    ("build_error", &["BuildError"]),
    ("builder", &["CacheBuilder"]),
    ("cache", &["Cache"]),
    ("coalesce", &[]),
    ("codec", &[]),
    ("core", &["OnUnavailable"]),
    ("entry", &[]),
    ("error", &["BoxError", "Error"]),
    ("flight", &[]),
    ("global", &["default_cache", "set_default"]),
    ("json", &[]),
    ("key", &[]),
    ("options", &["GetOptions"]),
    ("private", &[]),
    ("schedule", &[]),
    ("stats", &["Stats"]),
    ("store", &["NodeStats", "Server", "Ring"]),
];

/// A module's source without its `#[cfg(test)]` items (from that line to the file's end, or to
/// the end of the item when it is a `mod` block: tests sit at the end of our files).
fn without_tests(source: &str) -> &str {
    match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    }
}

/// The modules `source` names through `crate::`, in code (not in comments: doc links are no
/// imports).
fn dependencies(source: &str) -> BTreeSet<&'static str> {
    let code: String = source
        .lines()
        .map(|line| line.find("//").map_or(line, |at| &line[..at]))
        .collect::<Vec<_>>()
        .join("\n");
    let source = code.as_str();
    let mut found = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        // `crate::{A, b::C}` or `crate::name`.
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group[..group.find('}').unwrap_or(group.len())]
                .split(',')
                .map(|n| n.trim())
                .collect(),
            None => vec![rest],
        };
        for name in names {
            let head: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            for (module, exports) in MODULES {
                if head == *module || exports.contains(&head.as_str()) {
                    found.insert(*module);
                }
            }
        }
    }
    found
}

fn sources(module: &str) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = src.join(format!("{module}.rs"));
    let mut text = without_tests(&std::fs::read_to_string(&file).unwrap_or_default()).to_owned();
    let dir = src.join(module);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !test_only(&path) {
                    let source = std::fs::read_to_string(&path).unwrap();
                    text.push_str(without_tests(&source));
                }
            }
        }
    }
    text
}

/// Test-only files: `*_tests.rs`, `tests.rs`, and the store contract (`#[cfg(test)] mod`).
fn test_only(path: &Path) -> bool {
    let stem = path.file_stem().unwrap().to_string_lossy();
    stem == "tests" || stem == "contract" || stem.ends_with("_tests")
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph: BTreeMap<&str, BTreeSet<&str>> = MODULES
        .iter()
        .map(|(module, _)| {
            let mut deps = dependencies(&sources(module));
            deps.remove(module);
            (*module, deps)
        })
        .collect();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node);
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
        if done.contains(node) {
            return;
        }
        path.push(node);
        for next in &graph[node] {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
    // flight.rs, the algorithm, imports no public-face file.
    for face in ["cache", "builder", "global", "private"] {
        assert!(!graph["flight"].contains(face), "flight imports {face}");
    }
}
