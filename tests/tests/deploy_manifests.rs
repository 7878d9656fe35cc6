#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment examples in `deploy/` (they cannot be applied here): every YAML document
//! under `deploy/k8s` parses, and the fields the `halo` binary relies on agree with the TOML
//! configuration the ConfigMaps carry — the container runs `halo kingdom|duchy --config P`
//! with P a ConfigMap file, the gRPC container port is the config's `listen` port and a
//! Service targets it, the probes hit `/readyz` and `/healthz` on the `metrics_listen` port,
//! every path in the config lies under a mounted volume of the right kind, Secrets are mounted
//! read-only, the grace period outlasts `shutdown_grace_secs`, the duchy is never rolled (its
//! data directory is locked by one process). The Dockerfile's `COPY` sources exist and its
//! build makes `halo-cli` and the wasm plugins. Negative tests break each check on purpose.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use halo_cli::settings::{self, DuchySettings, KingdomSettings};
use halo_protocol::roles::RoleConfig;
use serde::Deserialize;
use serde_norway::Value as Yaml;

/// One YAML document and the file it came from.
#[derive(Clone, Debug)]
struct Doc {
    file: String,
    value: Yaml,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every document of every `*.yaml` / `*.yml` under `dir` (recursively), empty ones skipped.
fn load_yaml_dir(dir: &Path) -> Vec<Doc> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .display()
            .to_string();
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value =
                Yaml::deserialize(de).unwrap_or_else(|e| panic!("{name}: document {}: {e}", i + 1));
            if !value.is_null() {
                docs.push(Doc {
                    file: name.clone(),
                    value,
                });
            }
        }
    }
    docs
}

fn kind(v: &Yaml) -> &str {
    v.get("kind").and_then(Yaml::as_str).unwrap_or("")
}

fn name(v: &Yaml) -> &str {
    v.get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Yaml::as_str)
        .unwrap_or("")
}

fn path<'a>(v: &'a Yaml, keys: &[&str]) -> Option<&'a Yaml> {
    keys.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq(v: Option<&Yaml>) -> &[Yaml] {
    v.and_then(Yaml::as_sequence).map_or(&[], Vec::as_slice)
}

fn toml_str<'a>(t: &'a toml::Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .try_fold(t, |t, k| t.get(*k))
        .and_then(toml::Value::as_str)
}

/// The port of a `host:port` listen address.
fn listen_port(addr: &str) -> Option<u64> {
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| u64::from(a.port()))
}

/// Where a file path in the config comes from.
enum Source {
    /// A ConfigMap key (projected or mounted): its text when the ConfigMap is in the manifests.
    ConfigMap { name: String, text: String },
    /// A Secret key.
    Secret { name: String },
    /// A directory mount of a ConfigMap / Secret / projection (e.g. trusted keys).
    ConfigDir,
    /// A PersistentVolumeClaim.
    Pvc { writable: bool },
    /// An emptyDir.
    EmptyDir,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::ConfigMap { name, .. } => write!(f, "ConfigMap {name}"),
            Source::Secret { name } => write!(f, "Secret {name}"),
            Source::ConfigDir => write!(f, "a ConfigMap/Secret directory"),
            Source::Pvc { writable } => write!(f, "a PersistentVolumeClaim (writable: {writable})"),
            Source::EmptyDir => write!(f, "an emptyDir"),
        }
    }
}

/// The mounts of one container, with their volumes, and every object of the manifests.
struct Pod<'a> {
    all: &'a [Doc],
    mounts: Vec<(String, &'a Yaml, bool)>,
    volumes: &'a [Yaml],
}

impl<'a> Pod<'a> {
    fn new(all: &'a [Doc], pod_spec: &'a Yaml, container: &'a Yaml) -> Pod<'a> {
        let mounts = seq(container.get("volumeMounts"))
            .iter()
            .map(|m| {
                (
                    m.get("mountPath")
                        .and_then(Yaml::as_str)
                        .unwrap_or("")
                        .trim_end_matches('/')
                        .to_string(),
                    m,
                    m.get("readOnly").and_then(Yaml::as_bool).unwrap_or(false),
                )
            })
            .collect();
        Pod {
            all,
            mounts,
            volumes: seq(pod_spec.get("volumes")),
        }
    }

    fn object(&self, kind_: &str, name_: &str) -> Option<&'a Yaml> {
        self.all
            .iter()
            .map(|d| &d.value)
            .find(|v| kind(v) == kind_ && name(v) == name_)
    }

    fn volume(&self, mount: &Yaml) -> Option<&'a Yaml> {
        let n = mount.get("name").and_then(Yaml::as_str)?;
        self.volumes
            .iter()
            .find(|v| v.get("name").and_then(Yaml::as_str) == Some(n))
    }

    /// The key of `object` (ConfigMap / Secret volume or projection source) that lands at
    /// `rel` inside its mount.
    fn key_at(source: &Yaml, rel: &str) -> Option<String> {
        match source.get("items").and_then(Yaml::as_sequence) {
            Some(items) => items
                .iter()
                .find(|i| i.get("path").and_then(Yaml::as_str) == Some(rel))
                .and_then(|i| i.get("key").and_then(Yaml::as_str))
                .map(str::to_string),
            None => (!rel.is_empty() && !rel.contains('/')).then(|| rel.to_string()),
        }
    }

    fn config_map_file(&self, source: &Yaml, rel: &str) -> Result<Option<Source>, String> {
        let Some(key) = Self::key_at(source, rel) else {
            return Ok(None);
        };
        let cm = source.get("name").and_then(Yaml::as_str).unwrap_or("");
        let obj = self
            .object("ConfigMap", cm)
            .ok_or_else(|| format!("ConfigMap {cm} is not in the manifests"))?;
        let text = path(obj, &["data", &key])
            .and_then(Yaml::as_str)
            .ok_or_else(|| format!("ConfigMap {cm} has no key {key}"))?;
        Ok(Some(Source::ConfigMap {
            name: cm.to_string(),
            text: text.to_string(),
        }))
    }

    fn secret_file(&self, source: &Yaml, rel: &str) -> Result<Option<Source>, String> {
        let Some(key) = Self::key_at(source, rel) else {
            return Ok(None);
        };
        let s = source
            .get("secretName")
            .or_else(|| source.get("name"))
            .and_then(Yaml::as_str)
            .unwrap_or("");
        let obj = self
            .object("Secret", s)
            .ok_or_else(|| format!("Secret {s} is not in the manifests"))?;
        if path(obj, &["data", &key])
            .or_else(|| path(obj, &["stringData", &key]))
            .is_none()
        {
            return Err(format!("Secret {s} has no key {key}"));
        }
        Ok(Some(Source::Secret {
            name: s.to_string(),
        }))
    }

    /// What provides the file or directory `p` in this container; the bool is the mount's
    /// readOnly flag.
    fn resolve(&self, p: &str) -> Result<(Source, bool), String> {
        if !p.starts_with('/') {
            return Err(format!("{p} is not an absolute path"));
        }
        let (mount_path, mount, read_only) = self
            .mounts
            .iter()
            .filter(|(m, _, _)| p == m || p.starts_with(&format!("{m}/")))
            .max_by_key(|(m, _, _)| m.len())
            .ok_or_else(|| format!("{p} lies under no volume mount"))?;
        let volume = self
            .volume(mount)
            .ok_or_else(|| format!("mount {mount_path} names no volume of the pod"))?;
        let rel = p[mount_path.len()..].trim_start_matches('/');
        let dir_or_file = |found: Option<Source>| match found {
            Some(s) => Ok((s, *read_only)),
            None if rel.is_empty() => Ok((Source::ConfigDir, *read_only)),
            None => Err(format!(
                "nothing in the volume mounted at {mount_path} lands at {p}"
            )),
        };
        if let Some(cm) = volume.get("configMap") {
            return dir_or_file(self.config_map_file(cm, rel)?);
        }
        if let Some(s) = volume.get("secret") {
            return dir_or_file(self.secret_file(s, rel)?);
        }
        if let Some(proj) = volume.get("projected") {
            for src in seq(proj.get("sources")) {
                let found = if let Some(cm) = src.get("configMap") {
                    self.config_map_file(cm, rel)?
                } else if let Some(s) = src.get("secret") {
                    self.secret_file(s, rel)?
                } else {
                    None
                };
                if let Some(f) = found {
                    return Ok((f, true));
                }
            }
            return dir_or_file(None).map(|(s, _)| (s, true));
        }
        if let Some(pvc) = volume.get("persistentVolumeClaim") {
            let claim = pvc.get("claimName").and_then(Yaml::as_str).unwrap_or("");
            if self.object("PersistentVolumeClaim", claim).is_none() {
                return Err(format!(
                    "PersistentVolumeClaim {claim} is not in the manifests"
                ));
            }
            return Ok((
                Source::Pvc {
                    writable: !read_only,
                },
                *read_only,
            ));
        }
        if volume.get("emptyDir").is_some() {
            return Ok((Source::EmptyDir, *read_only));
        }
        Err(format!(
            "the volume mounted at {mount_path} is of no known kind"
        ))
    }

    /// The text of a TOML file the config names, which must come from a ConfigMap.
    fn config_text(&self, p: &str) -> Result<String, String> {
        match self.resolve(p)? {
            (Source::ConfigMap { text, .. }, _) => Ok(text),
            (other, _) => Err(format!("{p} is not a ConfigMap file but {other:?}")),
        }
    }

    /// Every mount whose volume is (or projects) a Secret.
    fn secret_mounts(&self) -> Vec<(&str, bool)> {
        self.mounts
            .iter()
            .filter(|(_, m, _)| {
                self.volume(m).is_some_and(|v| {
                    v.get("secret").is_some()
                        || seq(path(v, &["projected", "sources"]))
                            .iter()
                            .any(|s| s.get("secret").is_some())
                })
            })
            .map(|(p, m, ro)| {
                // Projected volumes are always mounted read-only.
                let projected = self.volume(m).is_some_and(|v| v.get("projected").is_some());
                (p.as_str(), *ro || projected)
            })
            .collect()
    }
}

/// The numeric container port a probe or Service `port` / `targetPort` names.
fn resolve_port(container: &Yaml, port: Option<&Yaml>) -> Option<u64> {
    let port = port?;
    if let Some(n) = port.as_u64() {
        return Some(n);
    }
    let wanted = port.as_str()?;
    seq(container.get("ports"))
        .iter()
        .find(|p| p.get("name").and_then(Yaml::as_str) == Some(wanted))
        .and_then(|p| p.get("containerPort").and_then(Yaml::as_u64))
}

/// What the checks learnt about one Deployment (for the cross checks).
#[derive(Debug)]
struct Server {
    deployment: String,
    subcommand: String,
    config: toml::Value,
    config_text: String,
    roles_text: Option<String>,
    listen_port: u64,
    metrics_port: u64,
}

/// Checks one Deployment; problems go to `out`, prefixed with its name.
fn check_deployment(all: &[Doc], doc: &Doc, out: &mut Vec<String>) -> Option<Server> {
    let d = &doc.value;
    let dname = name(d).to_string();
    let mut fail = |msg: String| out.push(format!("{} Deployment {dname}: {msg}", doc.file));

    if path(d, &["spec", "replicas"]).and_then(Yaml::as_u64) != Some(1) {
        fail("spec.replicas must be 1".into());
    }
    let pod = path(d, &["spec", "template", "spec"])?;
    let containers = seq(pod.get("containers"));
    let Some(c) = containers
        .iter()
        .find(|c| c.get("name").and_then(Yaml::as_str) == Some("halo"))
        .or_else(|| containers.first())
    else {
        fail("no container".into());
        return None;
    };
    let pod_ctx = Pod::new(all, pod, c);

    // halo SUBCOMMAND --config PATH, PATH a ConfigMap file.
    let args: Vec<&str> = seq(c.get("args")).iter().filter_map(Yaml::as_str).collect();
    let (sub, config_path) = match args.as_slice() {
        [sub @ ("kingdom" | "duchy"), "--config", p, ..] => (*sub, *p),
        other => {
            fail(format!(
                "args must start with kingdom|duchy --config PATH, not {other:?}"
            ));
            return None;
        }
    };
    let config_text = match pod_ctx.config_text(config_path) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("--config {config_path}: {e}"));
            return None;
        }
    };
    let config: toml::Value = match toml::from_str(&config_text) {
        Ok(v) => v,
        Err(e) => {
            fail(format!("{config_path} is not TOML: {e}"));
            return None;
        }
    };

    // Ports: gRPC = listen, probes and metrics = metrics_listen.
    let port_of = |key: &str| toml_str(&config, &[key]).and_then(listen_port);
    let (Some(listen), Some(metrics)) = (port_of("listen"), port_of("metrics_listen")) else {
        fail(format!(
            "{config_path} needs `listen` and `metrics_listen` as HOST:PORT"
        ));
        return None;
    };
    let container_ports: BTreeSet<u64> = seq(c.get("ports"))
        .iter()
        .filter_map(|p| p.get("containerPort").and_then(Yaml::as_u64))
        .collect();
    for (what, port) in [("listen", listen), ("metrics_listen", metrics)] {
        if !container_ports.contains(&port) {
            fail(format!(
                "no containerPort {port} (the config's {what} port)"
            ));
        }
    }
    for (probe, want) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = path(c, &[probe, "httpGet"]);
        let got_path = get.and_then(|g| g.get("path")).and_then(Yaml::as_str);
        if got_path != Some(want) {
            fail(format!("{probe} must GET {want}, not {got_path:?}"));
        }
        let got_port = resolve_port(c, get.and_then(|g| g.get("port")));
        if got_port != Some(metrics) {
            fail(format!(
                "{probe} must hit the metrics port {metrics}, not {got_port:?}"
            ));
        }
    }

    // A Service selecting these pods targets the gRPC and the metrics port.
    let labels = path(d, &["spec", "template", "metadata", "labels"]).and_then(Yaml::as_mapping);
    let services: Vec<&Yaml> = all
        .iter()
        .map(|x| &x.value)
        .filter(|v| kind(v) == "Service")
        .filter(|v| {
            path(v, &["spec", "selector"])
                .and_then(Yaml::as_mapping)
                .is_some_and(|sel| {
                    !sel.is_empty()
                        && sel
                            .iter()
                            .all(|(k, val)| labels.and_then(|l| l.get(k)) == Some(val))
                })
        })
        .collect();
    if services.is_empty() {
        fail("no Service selects its pods".into());
    }
    for s in &services {
        let targets: BTreeSet<u64> = seq(path(s, &["spec", "ports"]))
            .iter()
            .filter_map(|p| resolve_port(c, p.get("targetPort").or_else(|| p.get("port"))))
            .collect();
        for (what, port) in [("gRPC", listen), ("metrics", metrics)] {
            if !targets.contains(&port) {
                fail(format!(
                    "Service {} does not target the {what} port {port}",
                    name(s)
                ));
            }
        }
    }

    // Secrets read-only; every path of the config under a mount of the right kind.
    for (mount, read_only) in pod_ctx.secret_mounts() {
        if !read_only {
            fail(format!("the Secret mounted at {mount} must be readOnly"));
        }
    }
    let mut check_path = |keys: &[&str], required: bool, ok: &dyn Fn(&Source, bool) -> bool| {
        let Some(p) = toml_str(&config, keys) else {
            if required {
                fail(format!("{config_path} has no {}", keys.join(".")));
            }
            return;
        };
        match pod_ctx.resolve(p) {
            Ok((source, read_only)) if ok(&source, read_only) => {}
            Ok((source, read_only)) => fail(format!(
                "{} = {p:?} is provided by {source:?} (read-only: {read_only}), which will not do",
                keys.join(".")
            )),
            Err(e) => fail(format!("{} = {p:?}: {e}", keys.join("."))),
        }
    };
    let pvc_rw = |s: &Source, _: bool| matches!(s, Source::Pvc { writable: true });
    let config_file = |s: &Source, _: bool| matches!(s, Source::ConfigMap { .. });
    let secret_ro = |s: &Source, ro: bool| matches!(s, Source::Secret { .. }) && ro;
    check_path(&["data_dir"], true, &pvc_rw);
    check_path(&["roles_file"], true, &config_file);
    check_path(&["identity", "certificate"], true, &secret_ro);
    check_path(&["identity", "key"], true, &secret_ro);
    check_path(&["identity", "trust_bundle"], true, &config_file);
    if sub == "duchy" {
        // The plugin directory is a volume of its own, swapped by changing its contents.
        check_path(&["plugins", "dir"], true, &|s: &Source, _| {
            matches!(s, Source::Pvc { .. })
        });
        check_path(&["plugins", "cache_dir"], false, &|s: &Source, _| {
            matches!(s, Source::Pvc { writable: true } | Source::EmptyDir)
        });
        check_path(&["plugins", "trusted_keys"], false, &|s: &Source, _| {
            matches!(s, Source::ConfigDir)
        });
    }

    // The trust bundle's roots are files of the projection.
    let bundle_path = toml_str(&config, &["identity", "trust_bundle"]).unwrap_or_default();
    if let Ok(text) = pod_ctx.config_text(bundle_path) {
        match toml::from_str::<toml::Value>(&text) {
            Ok(bundle) => {
                let roots = bundle.get("roots").and_then(toml::Value::as_table);
                if roots.is_none_or(|r| r.is_empty()) {
                    fail(format!("{bundle_path} has no [roots]"));
                }
                for (principal, p) in roots.into_iter().flatten() {
                    match p.as_str().map(|p| pod_ctx.resolve(p)) {
                        Some(Ok((Source::ConfigMap { .. }, _))) => {}
                        Some(Ok((other, _))) => {
                            fail(format!("root of {principal} comes from {other:?}"))
                        }
                        Some(Err(e)) => fail(format!("root of {principal}: {e}")),
                        None => fail(format!("root of {principal} is not a path")),
                    }
                }
            }
            Err(e) => fail(format!("{bundle_path} is not TOML: {e}")),
        }
    }

    // Lifecycle: one process at a time; the duchy's grace period outlasts its own.
    if path(d, &["spec", "strategy", "type"]).and_then(Yaml::as_str) != Some("Recreate") {
        fail("spec.strategy.type must be Recreate (one process owns the data directory)".into());
    }
    let grace = pod
        .get("terminationGracePeriodSeconds")
        .and_then(Yaml::as_u64);
    let own_grace = config
        .get("shutdown_grace_secs")
        .and_then(toml::Value::as_integer);
    match (own_grace, grace) {
        (None, _) => fail(format!("{config_path} has no shutdown_grace_secs")),
        (Some(own), Some(g)) if i128::from(g) <= i128::from(own) => fail(format!(
            "terminationGracePeriodSeconds {g} must exceed shutdown_grace_secs {own}"
        )),
        (Some(_), None) => fail("no terminationGracePeriodSeconds".into()),
        _ => {}
    }

    // The Kingdom's copies of the duchies' and data providers' leaf certificates: one for
    // each it lists, each a ConfigMap file.
    if sub == "kingdom" {
        let certs = config.get("certificates").and_then(toml::Value::as_table);
        for (list, prefix) in [
            ("duchies", "duchies/"),
            ("data_providers", "dataProviders/"),
        ] {
            for id in config
                .get(list)
                .and_then(toml::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(toml::Value::as_str)
            {
                let principal = format!("{prefix}{id}");
                match certs
                    .and_then(|c| c.get(&principal))
                    .and_then(toml::Value::as_str)
                {
                    None => fail(format!("[certificates] has no {principal:?}")),
                    Some(p) => match pod_ctx.resolve(p) {
                        Ok((Source::ConfigMap { .. }, _)) => {}
                        Ok((other, _)) => {
                            fail(format!("certificate of {principal} comes from {other:?}"))
                        }
                        Err(e) => fail(format!("certificate of {principal}: {e}")),
                    },
                }
            }
        }
    }

    // Hardening.
    let flag = |keys: &[&str]| {
        path(c, &[&["securityContext"], keys].concat())
            .or_else(|| path(pod, &[&["securityContext"], keys].concat()))
            .and_then(Yaml::as_bool)
    };
    if flag(&["runAsNonRoot"]) != Some(true) {
        fail("runAsNonRoot must be true".into());
    }
    if path(c, &["securityContext", "readOnlyRootFilesystem"]).and_then(Yaml::as_bool) != Some(true)
    {
        fail("readOnlyRootFilesystem must be true".into());
    }
    if path(c, &["securityContext", "allowPrivilegeEscalation"]).and_then(Yaml::as_bool)
        != Some(false)
    {
        fail("allowPrivilegeEscalation must be false".into());
    }
    if !seq(path(c, &["securityContext", "capabilities", "drop"]))
        .iter()
        .any(|x| x.as_str() == Some("ALL"))
    {
        fail("capabilities.drop must contain ALL".into());
    }

    let roles_text = toml_str(&config, &["roles_file"]).and_then(|p| pod_ctx.config_text(p).ok());
    Some(Server {
        deployment: dname,
        subcommand: sub.to_string(),
        config,
        config_text,
        roles_text,
        listen_port: listen,
        metrics_port: metrics,
    })
}

/// The duchy ids the roles file names (each protocol: an aggregator and ≥ 2 non-aggregators).
fn roles_duchies(text: &str, out: &mut Vec<String>) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let roles: toml::Value = match toml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.push(format!("roles.toml is not TOML: {e}"));
            return ids;
        }
    };
    for (protocol, table) in roles.as_table().into_iter().flatten() {
        match table.get("aggregator").and_then(toml::Value::as_str) {
            Some(a) => {
                ids.insert(a.to_string());
            }
            None => out.push(format!("roles.toml [{protocol}] has no aggregator")),
        }
        let non: Vec<&str> = table
            .get("non_aggregators")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        if non.len() < 2 {
            out.push(format!(
                "roles.toml [{protocol}] needs at least two non_aggregators"
            ));
        }
        ids.extend(non.iter().map(|s| s.to_string()));
    }
    ids
}

/// Reads each server's ConfigMap TOML with the binary's own configuration code
/// (`halo_cli::settings`, which refuses unknown keys and wrong types) and checks that it
/// reads the same ports and grace period as the generic reading above.
fn check_with_settings(servers: &[Server], out: &mut Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    for s in servers {
        let file = dir.path().join(format!("{}.toml", s.deployment));
        std::fs::write(&file, &s.config_text).unwrap();
        let who = format!("{} ({} --config)", s.deployment, s.subcommand);
        let read = if s.subcommand == "duchy" {
            settings::load_file::<DuchySettings>(&file)
                .map(|d| (d.listen, d.metrics_listen, d.shutdown_grace_secs))
        } else {
            settings::load_file::<KingdomSettings>(&file)
                .map(|k| (k.listen, k.metrics_listen, k.shutdown_grace_secs))
        };
        match read {
            Err(e) => out.push(format!("{who}: halo refuses it: {e:#}")),
            Ok((listen, metrics, grace)) => {
                let port = |a: Option<std::net::SocketAddr>| a.map(|a| u64::from(a.port()));
                let want_grace = s
                    .config
                    .get("shutdown_grace_secs")
                    .and_then(toml::Value::as_integer)
                    .and_then(|g| u64::try_from(g).ok());
                if port(listen) != Some(s.listen_port)
                    || port(metrics) != Some(s.metrics_port)
                    || grace != want_grace
                {
                    out.push(format!(
                        "{who}: halo reads listen {listen:?}, metrics_listen {metrics:?}, \
                         shutdown_grace_secs {grace:?}, not what the checks read"
                    ));
                }
            }
        }
    }
}

/// `https://HOST:PORT` → (HOST, PORT).
fn url_host_port(url: &str) -> Option<(&str, u64)> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

/// Every check of the Kubernetes manifests; the problems found (empty: all good) and the
/// servers seen.
fn check_manifests(docs: &[Doc]) -> (Vec<String>, Vec<Server>) {
    let mut out = Vec::new();
    let mut servers = Vec::new();
    for doc in docs {
        if kind(&doc.value).is_empty() || name(&doc.value).is_empty() {
            out.push(format!(
                "{}: a document without kind or metadata.name",
                doc.file
            ));
        }
        if kind(&doc.value) == "Deployment"
            && let Some(s) = check_deployment(docs, doc, &mut out)
        {
            servers.push(s);
        }
    }

    let kingdoms: Vec<&Server> = servers
        .iter()
        .filter(|s| s.subcommand == "kingdom")
        .collect();
    let duchies: Vec<&Server> = servers.iter().filter(|s| s.subcommand == "duchy").collect();
    if kingdoms.len() != 1 || duchies.is_empty() {
        out.push(format!(
            "expected one Kingdom and at least one duchy Deployment, found {} and {}",
            kingdoms.len(),
            duchies.len()
        ));
        return (out, servers);
    }
    let kingdom = kingdoms[0];
    let listed = |key: &str| -> BTreeSet<String> {
        kingdom
            .config
            .get(key)
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(toml::Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let known = listed("duchies");
    for key in ["duchies", "data_providers", "measurement_consumers"] {
        if listed(key).is_empty() {
            out.push(format!("kingdom.toml lists no {key}"));
        }
    }
    for s in &servers {
        let Some(roles) = &s.roles_text else {
            continue;
        };
        for id in roles_duchies(roles, &mut out) {
            if !known.contains(&id) {
                out.push(format!(
                    "{}: roles.toml names duchy {id}, which the Kingdom does not list",
                    s.deployment
                ));
            }
        }
        // And as the binary reads it.
        let known: Vec<String> = known.iter().cloned().collect();
        if let Err(e) = RoleConfig::from_toml(roles, "roles.toml")
            .and_then(|r| r.validate(Some(&known)).map(|()| r))
        {
            out.push(format!("{}: halo refuses roles.toml: {e}", s.deployment));
        }
    }
    check_with_settings(&servers, &mut out);

    // A URL the config dials, when its host is a Service of the manifests, reaches `server`'s
    // gRPC port.
    let service_reaches = |url: &str, server: Option<&Server>, out: &mut Vec<String>, who: &str| {
        let Some((host, port)) = url_host_port(url) else {
            out.push(format!("{who}: {url} is not https://HOST:PORT"));
            return;
        };
        let Some(svc) = docs
            .iter()
            .map(|d| &d.value)
            .find(|v| kind(v) == "Service" && name(v) == host)
        else {
            if server.is_some() {
                out.push(format!("{who}: no Service {host} for {url}"));
            }
            return;
        };
        let Some(server) = server else {
            return;
        };
        let container = docs
            .iter()
            .find(|d| kind(&d.value) == "Deployment" && name(&d.value) == server.deployment)
            .and_then(|d| seq(path(&d.value, &["spec", "template", "spec", "containers"])).first());
        let ok = seq(path(svc, &["spec", "ports"])).iter().any(|p| {
            p.get("port").and_then(Yaml::as_u64) == Some(port)
                && container.is_some_and(|c| {
                    resolve_port(c, p.get("targetPort").or_else(|| p.get("port")))
                        == Some(server.listen_port)
                })
        });
        if !ok {
            out.push(format!(
                "{who}: Service {host} port {port} does not reach {}'s gRPC port {}",
                server.deployment, server.listen_port
            ));
        }
    };
    for d in &duchies {
        let who = format!("duchy Deployment {}", d.deployment);
        let id = toml_str(&d.config, &["id"]).unwrap_or_default();
        if !known.contains(id) {
            out.push(format!("{who}: id {id:?} is not in the Kingdom's duchies"));
        }
        match toml_str(&d.config, &["kingdom"]) {
            Some(url) => service_reaches(url, Some(kingdom), &mut out, &who),
            None => out.push(format!("{who}: no kingdom URL")),
        }
        for (peer, url) in d
            .config
            .get("peers")
            .and_then(toml::Value::as_table)
            .into_iter()
            .flatten()
        {
            if peer == id || !known.contains(peer) {
                out.push(format!(
                    "{who}: peer {peer} is itself or unknown to the Kingdom"
                ));
            }
            let served_by = duchies
                .iter()
                .find(|o| toml_str(&o.config, &["id"]) == Some(peer.as_str()))
                .copied();
            service_reaches(url.as_str().unwrap_or(""), served_by, &mut out, &who);
        }
    }
    (out, servers)
}

/// Instructions of a Dockerfile, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, rest) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// Checks the Dockerfile (`text`) against the repository at `root`: COPY sources exist and are
/// not ignored, the builder builds halo-cli and the wasm plugins, the runtime stage installs the
/// binary and the plugins, runs as non-root, exposes `ports` and runs `halo`.
fn check_dockerfile(text: &str, root: &Path, dockerignore: &str, ports: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    let ignored: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in ["target/", "plugins/target/"] {
        if !ignored.contains(&must) {
            out.push(format!(".dockerignore must exclude {must}"));
        }
    }
    let instructions = dockerfile_instructions(text);
    let froms: Vec<&str> = instructions
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    if !froms.iter().any(|f| f.starts_with("rust:1.95")) {
        out.push("no builder stage FROM rust:1.95".into());
    }
    if froms.len() < 2 {
        out.push("not a multi-stage build".into());
    }
    let runs: String = instructions
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for must in [
        "wasm32-unknown-unknown",
        "cargo build --release",
        "-p halo-cli",
    ] {
        if !runs.contains(must) {
            out.push(format!("no RUN mentions `{must}`"));
        }
    }
    // The runtime stage: everything after the last FROM.
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap_or(0);
    let runtime = &instructions[last_from..];
    let mut installed = Vec::new();
    for (op, args) in &instructions {
        if op != "COPY" && op != "ADD" {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        let from_stage = words.iter().any(|w| w.starts_with("--from="));
        let operands: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let Some((dest, sources)) = operands.split_last() else {
            out.push(format!("{op} {args}: no operands"));
            continue;
        };
        if sources.is_empty() {
            out.push(format!("{op} {args}: no source"));
        }
        if from_stage {
            installed.push(dest.to_string());
            continue;
        }
        for src in sources {
            let clean = src.trim_end_matches('/');
            if clean.contains('*') || !root.join(clean).exists() {
                out.push(format!(
                    "COPY source {src} does not exist in the repository"
                ));
            }
            if ignored
                .iter()
                .any(|i| clean == i.trim_end_matches('/') || clean.starts_with(i))
            {
                out.push(format!("COPY source {src} is excluded by .dockerignore"));
            }
        }
    }
    for want in ["/usr/local/bin/halo", "/usr/local/lib/halo/plugins"] {
        if !installed.iter().any(|d| d.trim_end_matches('/') == want) {
            out.push(format!("the runtime stage does not install {want}"));
        }
    }
    let last = |op: &str| {
        runtime
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
    };
    if last("ENTRYPOINT") != Some(r#"["halo"]"#) {
        out.push(format!(
            "the runtime ENTRYPOINT must be [\"halo\"], not {:?}",
            last("ENTRYPOINT")
        ));
    }
    match last("USER") {
        Some(u) if !u.is_empty() && !u.starts_with("root") && !u.starts_with("0:") && u != "0" => {}
        other => out.push(format!(
            "the runtime stage must run as non-root, not {other:?}"
        )),
    }
    let exposed: BTreeSet<u64> = runtime
        .iter()
        .filter(|(o, _)| o == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    for p in ports {
        if !exposed.contains(p) {
            out.push(format!("port {p} of the manifests is not EXPOSEd"));
        }
    }
    out
}

fn manifests() -> Vec<Doc> {
    let docs = load_yaml_dir(&repo().join("deploy/k8s"));
    assert!(!docs.is_empty(), "no YAML documents under deploy/k8s");
    docs
}

fn problems(docs: &[Doc]) -> Vec<String> {
    check_manifests(docs).0
}

#[test]
fn manifests_agree_with_the_config_they_carry() {
    let docs = manifests();
    let (problems, servers) = check_manifests(&docs);
    assert!(
        problems.is_empty(),
        "problems:\n  {}",
        problems.join("\n  ")
    );
    // The checks saw what they were meant to see.
    let subs: BTreeSet<&str> = servers.iter().map(|s| s.subcommand.as_str()).collect();
    assert_eq!(subs, BTreeSet::from(["duchy", "kingdom"]));
    for s in &servers {
        assert!(s.roles_text.is_some(), "{} has no roles file", s.deployment);
        assert!(!s.config_text.is_empty());
    }
    let kinds: BTreeSet<&str> = docs.iter().map(|d| kind(&d.value)).collect();
    for k in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
    ] {
        assert!(kinds.contains(k), "no {k} in deploy/k8s");
    }
}

#[test]
fn dockerfile_builds_halo_and_the_plugins_from_the_repository() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let (_, servers) = check_manifests(&manifests());
    let mut ports: Vec<u64> = servers
        .iter()
        .flat_map(|s| [s.listen_port, s.metrics_port])
        .collect();
    ports.dedup();
    assert!(!ports.is_empty());
    let problems = check_dockerfile(&text, &root, &ignore, &ports);
    assert!(
        problems.is_empty(),
        "problems:\n  {}",
        problems.join("\n  ")
    );
}

// ---- negative tests: each check refuses a manifest broken on purpose ----

fn deployment_mut<'a>(docs: &'a mut [Doc], sub: &str) -> &'a mut Yaml {
    let doc = docs
        .iter_mut()
        .find(|d| {
            kind(&d.value) == "Deployment"
                && seq(path(&d.value, &["spec", "template", "spec", "containers"]))
                    .first()
                    .and_then(|c| c.get("args"))
                    .and_then(Yaml::as_sequence)
                    .and_then(|a| a.first())
                    .and_then(Yaml::as_str)
                    == Some(sub)
        })
        .unwrap_or_else(|| panic!("no {sub} Deployment"));
    &mut doc.value
}

fn container_mut<'a>(docs: &'a mut [Doc], sub: &str) -> &'a mut Yaml {
    &mut deployment_mut(docs, sub)["spec"]["template"]["spec"]["containers"][0]
}

/// Edits the text of one ConfigMap key with `edit`.
fn edit_config_map(docs: &mut [Doc], cm: &str, key: &str, edit: impl Fn(&str) -> String) {
    let doc = docs
        .iter_mut()
        .find(|d| kind(&d.value) == "ConfigMap" && name(&d.value) == cm)
        .unwrap_or_else(|| panic!("no ConfigMap {cm}"));
    let old = doc.value["data"][key].as_str().unwrap().to_string();
    let new = edit(&old);
    assert_ne!(old, new, "the edit of {cm}/{key} changed nothing");
    doc.value["data"][key] = Yaml::String(new);
}

/// Breaks the manifests with `break_`, and asserts that a problem mentioning `expect` is found
/// (and that the unbroken manifests had none).
fn refused(break_: impl FnOnce(&mut Vec<Doc>), expect: &str) {
    let mut docs = manifests();
    assert!(problems(&docs).is_empty());
    break_(&mut docs);
    let found = problems(&docs);
    assert!(
        found.iter().any(|p| p.contains(expect)),
        "expected a problem mentioning {expect:?}, got {found:#?}"
    );
}

#[test]
fn a_probe_on_the_wrong_path_is_refused() {
    refused(
        |d| {
            container_mut(d, "duchy")["readinessProbe"]["httpGet"]["path"] =
                Yaml::String("/healthz".into())
        },
        "readinessProbe must GET /readyz",
    );
    refused(
        |d| {
            container_mut(d, "kingdom")["livenessProbe"]["httpGet"]["path"] =
                Yaml::String("/metrics".into())
        },
        "livenessProbe must GET /healthz",
    );
}

#[test]
fn a_probe_on_the_wrong_port_is_refused() {
    // The gRPC port by name, and by number.
    refused(
        |d| {
            container_mut(d, "duchy")["livenessProbe"]["httpGet"]["port"] =
                Yaml::String("grpc".into())
        },
        "livenessProbe must hit the metrics port 9090",
    );
    refused(
        |d| {
            container_mut(d, "kingdom")["readinessProbe"]["httpGet"]["port"] =
                Yaml::Number(8443.into())
        },
        "readinessProbe must hit the metrics port 9090",
    );
    // The config's metrics port moves, the probes stay.
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace(
                    "metrics_listen = \"0.0.0.0:9090\"",
                    "metrics_listen = \"0.0.0.0:9191\"",
                )
            })
        },
        "no containerPort 9191 (the config's metrics_listen port)",
    );
}

#[test]
fn a_grpc_port_that_is_not_the_listen_port_is_refused() {
    refused(
        |d| {
            edit_config_map(d, "halo-kingdom", "kingdom.toml", |t| {
                t.replace("listen = \"0.0.0.0:8443\"", "listen = \"0.0.0.0:7000\"")
            })
        },
        "does not target the gRPC port 7000",
    );
    refused(
        |d| {
            let svc = d
                .iter_mut()
                .find(|x| kind(&x.value) == "Service" && name(&x.value) == "halo-duchy-agg")
                .unwrap();
            svc.value["spec"]["ports"][0]["targetPort"] = Yaml::String("metrics".into());
        },
        "does not target the gRPC port 8443",
    );
}

#[test]
fn a_config_path_outside_the_config_map_is_refused() {
    refused(
        |d| container_mut(d, "duchy")["args"][2] = Yaml::String("/var/lib/halo/duchy.toml".into()),
        "--config /var/lib/halo/duchy.toml: /var/lib/halo/duchy.toml is not a ConfigMap file",
    );
    refused(
        |d| container_mut(d, "kingdom")["args"][0] = Yaml::String("duchy-please".into()),
        "args must start with kingdom|duchy --config PATH",
    );
}

#[test]
fn a_config_path_outside_every_mount_is_refused() {
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace(
                    "data_dir = \"/var/lib/halo/duchy\"",
                    "data_dir = \"/srv/duchy\"",
                )
            })
        },
        "data_dir = \"/srv/duchy\": /srv/duchy lies under no volume mount",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace(
                    "dir = \"/var/lib/halo-plugins\"",
                    "dir = \"/etc/halo/plugins\"",
                )
            })
        },
        "plugins.dir = \"/etc/halo/plugins\": nothing in the volume mounted at /etc/halo",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-kingdom", "kingdom.toml", |t| {
                t.replace("/etc/halo-tls/tls.key", "/etc/halo-tls/key.pem")
            })
        },
        "identity.key = \"/etc/halo-tls/key.pem\": nothing in the volume",
    );
    // A root the trust bundle names but the projection does not provide.
    refused(
        |d| {
            edit_config_map(d, "halo-trust-bundle", "trust-bundle.toml", |t| {
                t.replace("/etc/halo/roots/mc1.pem", "/etc/halo/roots/mc9.pem")
            })
        },
        "root of measurementConsumers/mc1",
    );
    // The key given from a ConfigMap instead of the Secret.
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace(
                    "key = \"/etc/halo-tls/tls.key\"",
                    "key = \"/etc/halo/roles.toml\"",
                )
            })
        },
        "identity.key = \"/etc/halo/roles.toml\" is provided by ConfigMap",
    );
}

#[test]
fn a_writable_secret_mount_is_refused() {
    refused(
        |d| {
            let mounts = &mut container_mut(d, "duchy")["volumeMounts"];
            let tls = mounts
                .as_sequence_mut()
                .unwrap()
                .iter_mut()
                .find(|m| m["name"].as_str() == Some("tls"))
                .unwrap();
            tls["readOnly"] = Yaml::Bool(false);
        },
        "the Secret mounted at /etc/halo-tls must be readOnly",
    );
}

#[test]
fn a_short_grace_period_and_a_rolling_update_are_refused() {
    refused(
        |d| {
            deployment_mut(d, "duchy")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                Yaml::Number(60.into())
        },
        "terminationGracePeriodSeconds 60 must exceed shutdown_grace_secs 60",
    );
    refused(
        |d| {
            deployment_mut(d, "duchy")["spec"]["strategy"]["type"] =
                Yaml::String("RollingUpdate".into())
        },
        "spec.strategy.type must be Recreate",
    );
    refused(
        |d| deployment_mut(d, "duchy")["spec"]["replicas"] = Yaml::Number(2.into()),
        "spec.replicas must be 1",
    );
}

#[test]
fn weakened_security_contexts_are_refused() {
    refused(
        |d| {
            container_mut(d, "duchy")["securityContext"]["readOnlyRootFilesystem"] =
                Yaml::Bool(false)
        },
        "readOnlyRootFilesystem must be true",
    );
    refused(
        |d| {
            container_mut(d, "kingdom")["securityContext"]["capabilities"]["drop"] =
                Yaml::Sequence(vec![Yaml::String("NET_RAW".into())])
        },
        "capabilities.drop must contain ALL",
    );
    refused(
        |d| {
            deployment_mut(d, "kingdom")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] =
                Yaml::Bool(false)
        },
        "runAsNonRoot must be true",
    );
}

#[test]
fn names_the_kingdom_does_not_know_are_refused() {
    refused(
        |d| {
            edit_config_map(d, "halo-roles", "roles.toml", |t| {
                t.replacen("aggregator = \"agg\"", "aggregator = \"ghost\"", 1)
            })
        },
        "roles.toml names duchy ghost, which the Kingdom does not list",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace("https://halo-kingdom:8443", "https://halo-kingdom:9443")
            })
        },
        "Service halo-kingdom port 9443 does not reach",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-roles", "roles.toml", |t| {
                t.replace(
                    "non_aggregators = [\"eu-west\", \"us-east.2\"]",
                    "non_aggregators = [\"eu-west\"]",
                )
            })
        },
        "needs at least two non_aggregators",
    );
}

#[test]
fn a_key_the_binary_does_not_know_is_refused() {
    // Keys the generic checks do not look at, misspelt: `shutdown_grace` in [mill] (it is the
    // top-level `shutdown_grace_secs`), `stream_poll_ms` (`stream_poll_interval_ms`), a
    // protocol table that does not exist.
    refused(
        |d| {
            edit_config_map(d, "halo-duchy-agg", "duchy.toml", |t| {
                t.replace(
                    "chunk_bytes = 1048576",
                    "chunk_bytes = 1048576\nshutdown_grace = 60",
                )
            })
        },
        "halo-duchy-agg (duchy --config): halo refuses it",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-kingdom", "kingdom.toml", |t| {
                t.replace(
                    "shutdown_grace_secs = 20",
                    "shutdown_grace_secs = 20\nstream_poll_ms = 100",
                )
            })
        },
        "halo-kingdom (kingdom --config): halo refuses it",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-roles", "roles.toml", |t| {
                t.replace("[liquid_legions_v2]", "[liquid_legions_v3]")
            })
        },
        "halo refuses roles.toml",
    );
}

#[test]
fn a_kingdom_without_a_listed_duchy_certificate_is_refused() {
    refused(
        |d| {
            edit_config_map(d, "halo-kingdom", "kingdom.toml", |t| {
                t.replace(
                    "\"duchies/us-east.2\" = \"/etc/halo/certificates/duchy-us-east-2.pem\"\n",
                    "",
                )
            })
        },
        "[certificates] has no \"duchies/us-east.2\"",
    );
    refused(
        |d| {
            edit_config_map(d, "halo-kingdom", "kingdom.toml", |t| {
                t.replace("certificates/edp2.pem", "certificates/edp3.pem")
            })
        },
        "certificate of dataProviders/edp2: nothing in the volume mounted at /etc/halo",
    );
}

#[test]
fn a_dockerfile_with_a_missing_source_or_no_plugin_build_is_refused() {
    let root = repo();
    let text = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let ports = [8443, 9090];
    assert!(check_dockerfile(&text, &root, &ignore, &ports).is_empty());

    let missing = text.replace("COPY wit wit", "COPY wit-does-not-exist wit");
    assert_ne!(missing, text);
    let p = check_dockerfile(&missing, &root, &ignore, &ports);
    assert!(
        p.iter()
            .any(|x| x.contains("COPY source wit-does-not-exist does not exist")),
        "{p:#?}"
    );

    let no_wasm = text.replace("wasm32-unknown-unknown", "x86_64-unknown-linux-gnu");
    let p = check_dockerfile(&no_wasm, &root, &ignore, &ports);
    assert!(
        p.iter()
            .any(|x| x.contains("no RUN mentions `wasm32-unknown-unknown`")),
        "{p:#?}"
    );

    let other_crate = text.replace("-p halo-cli", "-p halo-kingdom");
    let p = check_dockerfile(&other_crate, &root, &ignore, &ports);
    assert!(p.iter().any(|x| x.contains("`-p halo-cli`")), "{p:#?}");

    let ignored = format!("{text}\nCOPY target/release/halo /usr/local/bin/halo\n");
    let p = check_dockerfile(&ignored, &root, &ignore, &ports);
    assert!(
        p.iter().any(|x| x.contains("excluded by .dockerignore")),
        "{p:#?}"
    );

    let p = check_dockerfile(&text, &root, "", &[8443, 9090, 7777]);
    assert!(
        p.iter()
            .any(|x| x.contains(".dockerignore must exclude target/")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|x| x.contains("port 7777 of the manifests")),
        "{p:#?}"
    );

    let root_user = text.replace("USER 10001:10001", "USER root");
    let p = check_dockerfile(&root_user, &root, &ignore, &ports);
    assert!(p.iter().any(|x| x.contains("non-root")), "{p:#?}");
}
