//! Architecture checks that run with the test suite.
//!
//! The layers depend one way: protocol <- engine <- transport <- server. The protocol crate
//! must stay free of async runtimes, HTTP and the inference engine, even through other crates,
//! so that any program can use it alone. These tests read `cargo metadata` and fail on a wrong
//! edge.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap, VecDeque};
    use std::process::Command;

    use serde_json::Value;

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
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
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
            ("llm-bench", &["llm-protocol", "llm-transport"]),
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
}
