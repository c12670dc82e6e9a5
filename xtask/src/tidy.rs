//! Architecture checks that run with the test suite.
//!
//! - The layers depend one way: protocol <- engine <- transport <- server. The protocol crate
//!   must stay free of async runtimes, HTTP and the inference engine, even through other
//!   crates, so that any program can use it alone. These tests read `cargo metadata` and fail
//!   on a wrong edge.
//! - Inside each crate, modules depend one way too: the tests read the sources' `crate::` and
//!   `super::` paths and fail on a cycle, naming it.
//! - `cargo run -p llm-server` and `cargo test --workspace` (the README's two commands) build
//!   every third-party crate the same way, so that the second reuses the first's build of
//!   mistral.rs rather than compiling it again for half an hour.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap, VecDeque};
    use std::process::Command;

    use serde_json::Value;

    /// xtask's own directory. `cargo test` sets CARGO_MANIFEST_DIR for the test process: prefer
    /// it to the compile-time value, since checkouts that share one target directory can run a
    /// test binary built in another checkout, whose compile-time path points there (or nowhere).
    fn xtask_dir() -> String {
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    }

    /// The workspace root.
    fn root() -> std::path::PathBuf {
        std::path::Path::new(&xtask_dir())
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf()
    }

    /// The resolved dependency graph: package id -> (name, normal and build dependency ids).
    struct Graph {
        names: HashMap<String, String>,
        edges: HashMap<String, Vec<String>>,
    }

    impl Graph {
        fn load() -> Self {
            // The graph for this machine's platform only: the full graph also names every
            // platform's dependencies (and GPU features'), which a fresh machine has not
            // downloaded, and `--offline` would then fail.
            let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
                .arg("-vV")
                .output()
                .expect("rustc -vV runs");
            let version = String::from_utf8_lossy(&rustc.stdout);
            let host = version
                .lines()
                .find_map(|line| line.strip_prefix("host: "))
                .expect("rustc -vV names the host")
                .trim()
                .to_owned();
            let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["metadata", "--format-version", "1", "--offline"])
                .args(["--filter-platform", &host])
                .current_dir(root())
                .output()
                .expect("cargo metadata runs");
            assert!(
                output.status.success(),
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let metadata: Value =
                serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
            let names = metadata["packages"]
                .as_array()
                .expect("packages is an array")
                .iter()
                .map(|package| {
                    (
                        package["id"].as_str().expect("id").to_owned(),
                        package["name"].as_str().expect("name").to_owned(),
                    )
                })
                .collect();
            let edges = metadata["resolve"]["nodes"]
                .as_array()
                .expect("resolve nodes")
                .iter()
                .map(|node| {
                    let deps = node["deps"]
                        .as_array()
                        .expect("deps")
                        .iter()
                        .filter(|dep| {
                            // Dev-dependencies do not ship; normal and build ones do.
                            dep["dep_kinds"]
                                .as_array()
                                .expect("dep_kinds")
                                .iter()
                                .any(|kind| kind["kind"].as_str() != Some("dev"))
                        })
                        .map(|dep| dep["pkg"].as_str().expect("pkg").to_owned())
                        .collect();
                    (node["id"].as_str().expect("id").to_owned(), deps)
                })
                .collect();
            Self { names, edges }
        }

        fn id_of(&self, name: &str) -> &str {
            self.names
                .iter()
                .find(|(_, package)| *package == name)
                .map(|(id, _)| id.as_str())
                .unwrap_or_else(|| panic!("package {name} is in the workspace"))
        }

        fn direct(&self, name: &str) -> BTreeSet<String> {
            self.edges[self.id_of(name)]
                .iter()
                .map(|id| self.names[id].clone())
                .collect()
        }

        fn transitive(&self, name: &str) -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut queue = VecDeque::from([self.id_of(name).to_owned()]);
            while let Some(id) = queue.pop_front() {
                for dep in &self.edges[&id] {
                    if seen.insert(self.names[dep].clone()) {
                        queue.push_back(dep.clone());
                    }
                }
            }
            seen
        }
    }

    fn ours(deps: &BTreeSet<String>) -> BTreeSet<&str> {
        deps.iter()
            .map(String::as_str)
            .filter(|name| name.starts_with("llm-"))
            .collect()
    }

    #[test]
    fn protocol_is_pure() {
        let graph = Graph::load();
        let deps = graph.transitive("llm-protocol");
        for banned in [
            "tokio",
            "hyper",
            "mistralrs",
            "mistralrs-core",
            "candle-core",
        ] {
            assert!(
                !deps.contains(banned),
                "llm-protocol must not depend on {banned}, even transitively"
            );
        }
        assert!(
            ours(&deps).is_empty(),
            "llm-protocol depends on no other layer"
        );
    }

    #[test]
    fn layers_depend_one_way() {
        let graph = Graph::load();
        let allowed: [(&str, &[&str]); 4] = [
            ("llm-engine", &["llm-protocol"]),
            ("llm-transport", &["llm-protocol", "llm-engine"]),
            (
                "llm-server",
                &["llm-protocol", "llm-engine", "llm-transport"],
            ),
            // The engine only for the CPU description every report carries.
            (
                "llm-bench",
                &["llm-protocol", "llm-engine", "llm-transport"],
            ),
        ];
        for (layer, below) in allowed {
            let direct = graph.direct(layer);
            for dep in ours(&direct) {
                assert!(
                    below.contains(&dep),
                    "{layer} may depend only on {below:?}, but depends on {dep}"
                );
            }
            assert!(
                !ours(&graph.transitive(layer)).contains(layer),
                "{layer} depends on itself through a cycle"
            );
        }
        // The engine knows nothing of HTTP; the transport knows mistral.rs only through the
        // engine's API.
        let engine = graph.direct("llm-engine");
        assert!(!engine.contains("hyper") && !engine.contains("http"));
        let transport = graph.direct("llm-transport");
        assert!(!transport.contains("mistralrs") && !transport.contains("mistralrs-core"));
    }

    /// A module of one crate, as its path below the crate root (`["stream", "pump"]`).
    type Module = Vec<String>;

    /// Every module of the crate whose sources are in `src`, with the text of its file.
    fn modules(src: &std::path::Path) -> Vec<(Module, String)> {
        let mut found = Vec::new();
        let mut folders = vec![src.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).expect("the source folder reads") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                    continue;
                }
                let relative = path.strip_prefix(src).expect("under src");
                let mut module: Module = relative
                    .with_extension("")
                    .iter()
                    .map(|part| part.to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                if module.first().map(String::as_str) == Some("bin") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file reads");
                found.push((module, text));
            }
        }
        found
    }

    /// The module paths a file names: `crate::a::b`, `super::a`, `self::a`, and each name of
    /// `crate::{a, b::c}`. Comments are skipped.
    fn references(module: &[String], text: &str) -> Vec<Module> {
        let code: String = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut paths = Vec::new();
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", module[..module.len().saturating_sub(1)].to_vec()),
            ("self::", module.to_vec()),
        ] {
            let mut rest = code.as_str();
            while let Some(at) = rest.find(prefix) {
                let before = rest[..at].chars().next_back();
                rest = &rest[at + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let tails: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                    let end = group.find('}').unwrap_or(group.len());
                    group[..end].split(',').collect()
                } else {
                    vec![rest]
                };
                for tail in tails {
                    let mut path = base.clone();
                    let mut tail = tail.trim();
                    loop {
                        let end = tail
                            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .unwrap_or(tail.len());
                        if end == 0 {
                            break;
                        }
                        path.push(tail[..end].to_owned());
                        match tail[end..].strip_prefix("::") {
                            Some(next) => tail = next,
                            None => break,
                        }
                    }
                    paths.push(path);
                }
            }
        }
        paths
    }

    /// The edges between sibling modules: `from` uses something of `to`, both children of
    /// the same parent. A module that uses its own ancestors (what a `mod.rs` re-exports)
    /// adds no edge.
    fn sibling_edges(found: &[(Module, String)]) -> BTreeSet<(Module, String, String)> {
        let known: BTreeSet<&Module> = found.iter().map(|(module, _)| module).collect();
        let mut edges = BTreeSet::new();
        for (module, text) in found {
            for mut target in references(module, text) {
                while !target.is_empty() && !known.contains(&target) {
                    target.pop();
                }
                let common = module
                    .iter()
                    .zip(&target)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common == target.len() || common == module.len() {
                    continue;
                }
                edges.insert((
                    module[..common].to_vec(),
                    module[common].clone(),
                    target[common].clone(),
                ));
            }
        }
        edges
    }

    #[test]
    fn modules_depend_one_way() {
        let root = root();
        let mut crates: Vec<_> = std::fs::read_dir(root.join("crates"))
            .expect("crates/ reads")
            .map(|entry| entry.expect("an entry").path().join("src"))
            .filter(|src| src.is_dir())
            .collect();
        crates.push(root.join("xtask/src"));
        for src in crates {
            let found = modules(&src);
            let edges = sibling_edges(&found);
            let parents: BTreeSet<&Module> = edges.iter().map(|(parent, _, _)| parent).collect();
            for parent in parents {
                let graph: HashMap<&str, Vec<&str>> = edges
                    .iter()
                    .filter(|(p, _, _)| p == parent)
                    .fold(HashMap::new(), |mut graph, (_, from, to)| {
                        graph.entry(from.as_str()).or_default().push(to.as_str());
                        graph
                    });
                if let Some(cycle) = find_cycle(&graph) {
                    panic!(
                        "modules of {} (in {}) form a cycle: {}",
                        if parent.is_empty() {
                            "the crate root".to_owned()
                        } else {
                            parent.join("::")
                        },
                        src.display(),
                        cycle.join(" -> ")
                    );
                }
            }
        }
    }

    /// A cycle of the graph, as the modules along it (the first repeated at the end).
    fn find_cycle<'a>(graph: &HashMap<&'a str, Vec<&'a str>>) -> Option<Vec<&'a str>> {
        fn visit<'a>(
            node: &'a str,
            graph: &HashMap<&'a str, Vec<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<&'a str>> {
            if let Some(at) = path.iter().position(|n| *n == node) {
                let mut cycle = path[at..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            if done.contains(node) {
                return None;
            }
            path.push(node);
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            done.insert(node);
            None
        }
        let mut done = BTreeSet::new();
        let mut nodes: Vec<&&str> = graph.keys().collect();
        nodes.sort();
        nodes
            .into_iter()
            .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
    }

    #[test]
    fn the_cycle_check_sees_a_cycle() {
        let found = vec![
            (vec!["a".to_owned()], "use crate::b::X;".to_owned()),
            (vec!["b".to_owned()], "use crate::{c, d::Y};".to_owned()),
            (
                vec!["c".to_owned()],
                "// crate::a in a comment\n".to_owned(),
            ),
            (vec!["d".to_owned()], "fn f() { crate::a::g() }".to_owned()),
            (
                vec!["d".to_owned(), "e".to_owned()],
                "use super::Z;".to_owned(),
            ),
        ];
        let edges = sibling_edges(&found);
        let graph = edges.iter().fold(
            HashMap::new(),
            |mut graph: HashMap<&str, Vec<&str>>, (_, from, to)| {
                graph.entry(from.as_str()).or_default().push(to.as_str());
                graph
            },
        );
        assert_eq!(find_cycle(&graph), Some(vec!["a", "b", "d", "a"]));
    }

    /// The build units cargo plans for a command, each with a hash of everything that makes
    /// it (package, target, mode, features, profile, and the same of its dependencies):
    /// two plans share a unit exactly when its hash is in both.
    fn units(args: &[&str]) -> Vec<(String, String)> {
        let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .args(["--unit-graph", "-Z", "unstable-options", "--offline"])
            // The unit graph is an unstable cargo output; this stable toolchain prints it
            // when told to allow unstable options. Nothing is built.
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(root())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "cargo {args:?} --unit-graph failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let graph: Value = serde_json::from_slice(&output.stdout).expect("a unit graph");
        let units = graph["units"].as_array().expect("units");
        let mut hashes: Vec<Option<String>> = vec![None; units.len()];
        fn hash(index: usize, units: &[Value], hashes: &mut [Option<String>]) -> String {
            if let Some(done) = &hashes[index] {
                return done.clone();
            }
            let unit = &units[index];
            let mut profile = unit["profile"].clone();
            // cargo leaves the profile's name out of a unit's identity.
            profile.as_object_mut().map(|p| p.remove("name"));
            let mut deps: Vec<String> = unit["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .map(|dep| {
                    hash(
                        dep["index"].as_u64().expect("index") as usize,
                        units,
                        hashes,
                    )
                })
                .collect();
            deps.sort();
            let identity = serde_json::json!([
                unit["pkg_id"],
                unit["target"]["name"],
                unit["target"]["kind"],
                unit["mode"],
                unit["features"],
                profile,
                unit["platform"],
                deps
            ]);
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            identity.to_string().hash(&mut hasher);
            let done = format!("{:016x}", hasher.finish());
            hashes[index] = Some(done.clone());
            done
        }
        (0..units.len())
            .map(|index| {
                (
                    units[index]["pkg_id"].as_str().expect("pkg_id").to_owned(),
                    hash(index, units, &mut hashes),
                )
            })
            .collect()
    }

    #[test]
    fn serving_and_testing_share_every_third_party_build() {
        let run = units(&["build", "-p", "llm-server"]);
        let test: BTreeSet<String> = units(&["test", "--workspace", "--no-run"])
            .into_iter()
            .map(|(_, hash)| hash)
            .collect();
        // Path packages outside the workspace (the vendored crates) count as third party:
        // they are the slowest to build.
        let workspace = format!("path+file://{}", xtask_dir());
        let workspace = workspace.trim_end_matches("/xtask");
        let rebuilt: Vec<&str> = run
            .iter()
            .filter(|(package, _)| !package.starts_with(workspace) || package.contains("/vendor/"))
            .filter(|(_, hash)| !test.contains(hash))
            // `registry+...#name@version` reads as `name@version`.
            .map(|(package, _)| package.rsplit('#').next().unwrap_or(package))
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .collect();
        assert!(
            rebuilt.is_empty(),
            "`cargo test --workspace` would build these again after `cargo run -p llm-server` \
             (a dependency's features differ between the two: pin them in \
             crates/llm-engine/Cargo.toml): {rebuilt:?}"
        );
    }
}
