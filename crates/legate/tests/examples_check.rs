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

mod typed {
    //! The manifests as the API server would read them: each document parsed into its
    //! `k8s-openapi` type (Kubernetes 1.33), then the properties every legate container must
    //! have checked on the typed objects.

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{
        ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::path::Path;

    fn parse<T: serde::de::DeserializeOwned>(file: &Path, v: serde_yaml_ng::Value) -> T {
        serde_yaml_ng::from_value(v).unwrap_or_else(|e| {
            panic!(
                "{}: not a valid {}: {e}",
                file.display(),
                std::any::type_name::<T>()
            )
        })
    }

    fn probe_path(p: Option<&k8s_openapi::api::core::v1::Probe>) -> Option<&str> {
        p?.http_get.as_ref()?.path.as_deref()
    }

    /// Every legate container: non-root, read-only, no capabilities, probes on the right
    /// endpoints, its config from a ConfigMap of the same folder mounted as a directory (a
    /// `subPath` mount never sees ConfigMap updates, so hot reload would never happen).
    fn check_legate(
        file: &Path,
        c: &Container,
        native_sidecar: bool,
        pod: &PodSpec,
        configmaps: &[String],
    ) {
        let at = format!("{}: container `{}`", file.display(), c.name);
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: no securityContext"));
        assert_eq!(sc.run_as_non_root, Some(true), "{at}: runAsNonRoot");
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{at}: readOnlyRootFilesystem"
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{at}: allowPrivilegeEscalation"
        );
        let drops = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.clone())
            .unwrap_or_default();
        assert!(
            drops.iter().any(|d| d == "ALL"),
            "{at}: capabilities.drop [ALL]"
        );
        if native_sidecar {
            assert_eq!(
                probe_path(c.startup_probe.as_ref()),
                Some("/startup"),
                "{at}: a native sidecar's startupProbe gates the app on /startup"
            );
        }
        if c.readiness_probe.is_some() {
            assert_eq!(
                probe_path(c.readiness_probe.as_ref()),
                Some("/ready"),
                "{at}"
            );
        }
        if c.liveness_probe.is_some() {
            assert_eq!(probe_path(c.liveness_probe.as_ref()), Some("/live"), "{at}");
        }
        for p in [&c.startup_probe, &c.readiness_probe, &c.liveness_probe]
            .into_iter()
            .flatten()
        {
            if let Some(IntOrString::String(port)) = p.http_get.as_ref().map(|h| &h.port) {
                assert!(
                    c.ports
                        .iter()
                        .flatten()
                        .any(|cp| cp.name.as_deref() == Some(port.as_str())),
                    "{at}: probe port `{port}` is not a named port of the container"
                );
            }
        }
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(
            args.first().map(String::as_str),
            Some("run"),
            "{at}: args {args:?}"
        );
        let config = args
            .iter()
            .position(|a| a == "-c")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{at}: no `-c CONFIG` in {args:?}"));
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| config.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{at}: {config} is on no volume mount"));
        assert!(
            mount.sub_path.is_none(),
            "{at}: the config is mounted with subPath, which never sees ConfigMap updates"
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{at}: volume `{}` is not defined", mount.name));
        let cm = volume
            .config_map
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: volume `{}` is not a ConfigMap", mount.name));
        assert!(
            configmaps.contains(&cm.name),
            "{at}: ConfigMap `{}` is not in this folder ({configmaps:?})",
            cm.name
        );
        let key = Path::new(config).file_name().unwrap().to_string_lossy();
        assert_eq!(key, "legate.yaml", "{at}: the config key");
    }

    fn check_pod(file: &Path, pod: &PodSpec, configmaps: &[String]) -> usize {
        let mut legates = 0;
        let init = pod.init_containers.iter().flatten().map(|c| (c, true));
        let main = pod.containers.iter().map(|c| (c, false));
        for (c, is_init) in init.chain(main) {
            let image = c.image.as_deref().unwrap_or_default();
            if image.starts_with("legate") {
                let native = is_init && c.restart_policy.as_deref() == Some("Always");
                assert!(
                    !is_init || native,
                    "{}: legate as a plain init container would block the Pod",
                    file.display()
                );
                check_legate(file, c, native, pod, configmaps);
                legates += 1;
            }
        }
        legates
    }

    #[test]
    fn manifests_parse_into_typed_kubernetes_objects() {
        let mut dirs: Vec<_> = std::fs::read_dir(super::repo_root().join("deploy/k8s"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        assert!(dirs.len() >= 6, "one folder per scenario");
        for dir in dirs {
            let mut files = Vec::new();
            super::yaml_files(&dir, &mut files);
            let mut docs = Vec::new();
            for f in &files {
                let text = std::fs::read_to_string(f).unwrap();
                for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                    let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
                    if !v.is_null() {
                        docs.push((f.clone(), v));
                    }
                }
            }
            let configmaps: Vec<String> = docs
                .iter()
                .filter(|(_, v)| v.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap"))
                .map(|(f, v)| {
                    parse::<ConfigMap>(f, v.clone())
                        .metadata
                        .name
                        .unwrap_or_default()
                })
                .collect();
            let (mut legates, mut kustomization) = (0, false);
            for (f, v) in docs {
                let kind = v
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("")
                    .to_string();
                match kind.as_str() {
                    "Deployment" => {
                        let d: Deployment = parse(&f, v);
                        let pod = d.spec.and_then(|s| s.template.spec).expect("a pod spec");
                        legates += check_pod(&f, &pod, &configmaps);
                    }
                    "Job" => {
                        let j: Job = parse(&f, v);
                        let pod = j.spec.and_then(|s| s.template.spec).expect("a pod spec");
                        assert!(
                            matches!(pod.restart_policy.as_deref(), Some("Never" | "OnFailure")),
                            "{}: a Job's Pod restartPolicy",
                            f.display()
                        );
                        legates += check_pod(&f, &pod, &configmaps);
                    }
                    "ConfigMap" => {}
                    "Service" => drop(parse::<Service>(&f, v)),
                    "ServiceAccount" => drop(parse::<ServiceAccount>(&f, v)),
                    "Namespace" => drop(parse::<Namespace>(&f, v)),
                    "Kustomization" => {
                        kustomization = true;
                        for r in v
                            .get("resources")
                            .and_then(|r| r.as_sequence())
                            .into_iter()
                            .flatten()
                        {
                            let r = r.as_str().unwrap_or_default();
                            assert!(
                                dir.join(r).exists(),
                                "{}: resource {r} is missing",
                                f.display()
                            );
                        }
                    }
                    other => panic!("{}: kind `{other}`: add it to this test", f.display()),
                }
            }
            assert!(
                kustomization,
                "{}: each scenario is a kustomization",
                dir.display()
            );
            assert!(legates >= 1, "{}: runs no legate", dir.display());
        }
    }
}
