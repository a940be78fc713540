//! Every shipped example config, and every legate config embedded in the Kubernetes manifests,
//! passes the same validation `legate check` runs.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn example_configs_pass_check() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("examples"), &mut files);
    assert!(
        files.len() >= 2,
        "examples/ should hold the scenario configs"
    );
    for f in files {
        // Defaults only: examples must not depend on the caller's environment. Their
        // certificates live in the cluster (`legate check --skip-files`).
        if let Err(e) = legate::config::load_file_with(&f, legate::config::Files::Skip) {
            panic!("{} does not pass check:\n{e}", f.display());
        }
    }
}

/// ConfigMaps named `*legate*` carry a `legate.yaml` key; it must be a valid config.
#[test]
fn manifests_parse_and_embedded_configs_pass_check() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("deploy/k8s"), &mut files);
    assert!(!files.is_empty(), "deploy/k8s should hold manifests");
    let mut embedded = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", f.display()));
            if v.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
                if let Some(cfg) = v
                    .get("data")
                    .and_then(|d| d.get("legate.yaml"))
                    .and_then(|c| c.as_str())
                {
                    let name = format!("{}:legate.yaml", f.display());
                    if let Err(e) = legate::config::load_str(&name, cfg, |_| None) {
                        panic!("{name} does not pass check:\n{e}");
                    }
                    embedded += 1;
                }
            }
        }
    }
    assert!(
        embedded >= 1,
        "expected at least one legate.yaml ConfigMap in deploy/k8s"
    );
}

/// The checked-in schema (for editors, `# yaml-language-server: $schema=...`) is the one the
/// config types generate: a changed field cannot leave it stale.
#[test]
fn checked_in_schema_matches_the_config_types() {
    let path = repo_root().join("deploy/legate.schema.json");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == legate::config::schema::json(),
        "{} is stale: run `cargo run -- schema > deploy/legate.schema.json`",
        path.display()
    );
}
