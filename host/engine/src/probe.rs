//! Which WIT world a component targets, read from its own import and export names (not from
//! any manifest): STYLE 7.

use std::collections::BTreeSet;

use semver::Version;

use crate::error::LoadError;
use crate::{SUPPORTED_WIT, v1};

/// The bindings module that serves a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Major {
    V1,
}

/// What probing a component found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub major: Major,
    /// The package version of the protocol export, e.g. `halo:mpc@1.0.0`.
    pub wit_package: String,
    /// Imports or exports of a newer minor than the host implements (they load only if they
    /// use nothing the host lacks).
    pub newer: Vec<String>,
}

/// A parsed interface name `ns:pkg/iface@version`.
#[derive(Debug, PartialEq, Eq)]
struct InterfaceName<'a> {
    package: &'a str,
    interface: &'a str,
    version: Option<Version>,
}

fn parse(name: &str) -> Option<InterfaceName<'_>> {
    let (path, version) = match name.split_once('@') {
        Some((path, v)) => (path, Some(Version::parse(v).ok()?)),
        None => (name, None),
    };
    let (package, interface) = path.split_once('/')?;
    package.contains(':').then_some(InterfaceName {
        package,
        interface,
        version,
    })
}

/// How a name is reported when the host does not serve it: the versioned package for our own
/// package (`halo:mpc@2.0.0`), the full name for anything else (`wasi:io/poll@0.2.6`).
fn report(name: &str, parsed: Option<&InterfaceName<'_>>) -> String {
    match parsed {
        Some(n) if n.package == v1::PACKAGE => match &n.version {
            Some(v) => format!("{}@{v}", n.package),
            None => format!("{} (unversioned)", n.package),
        },
        _ => name.to_owned(),
    }
}

fn served(n: &InterfaceName<'_>) -> Option<Major> {
    match &n.version {
        Some(v)
            if n.package == v1::PACKAGE
                && v.major == v1::MAJOR
                && *v >= v1::MIN_VERSION
                && v.pre.is_empty() =>
        {
            Some(Major::V1)
        }
        _ => None,
    }
}

/// Picks the bindings for a component from its import and export names, or refuses it with
/// an error naming what it found and [`SUPPORTED_WIT`].
pub(crate) fn probe(imports: &[String], exports: &[String]) -> Result<Probe, LoadError> {
    let mut unsupported = BTreeSet::new();
    let mut newer = BTreeSet::new();
    let mut protocols = Vec::new();

    for name in imports {
        let parsed = parse(name);
        match parsed.as_ref().and_then(served) {
            Some(_) => {}
            None => {
                unsupported.insert(report(name, parsed.as_ref()));
            }
        }
    }
    for name in exports {
        let parsed = parse(name);
        let Some(n) = parsed.as_ref().filter(|n| n.package == v1::PACKAGE) else {
            // Exports outside our package are the component's own business.
            continue;
        };
        match served(n) {
            Some(major) if n.interface == "protocol" => protocols.push((major, n.version.clone())),
            Some(_) => {}
            None => {
                unsupported.insert(report(name, parsed.as_ref()));
            }
        }
    }
    for name in imports.iter().chain(exports) {
        if let Some(n) = parse(name)
            && served(&n) == Some(Major::V1)
            && n.version.as_ref().is_some_and(|v| *v > v1::MAX_VERSION)
        {
            newer.insert(report(name, Some(&n)));
        }
    }

    if !unsupported.is_empty() {
        return Err(LoadError::UnsupportedWit {
            found: unsupported.into_iter().collect(),
            supported: SUPPORTED_WIT.to_owned(),
        });
    }
    match protocols.as_slice() {
        [(major, Some(version))] => Ok(Probe {
            major: *major,
            wit_package: format!("{}@{version}", v1::PACKAGE),
            newer: newer.into_iter().collect(),
        }),
        [] => Err(LoadError::UnsupportedWit {
            found: vec![if exports.is_empty() {
                "no exports".to_owned()
            } else {
                format!(
                    "no {}/protocol export (exports: {})",
                    v1::PACKAGE,
                    exports.join(", ")
                )
            }],
            supported: SUPPORTED_WIT.to_owned(),
        }),
        _ => Err(LoadError::Invalid(format!(
            "the component exports {} protocol interfaces ({}); exactly one is required",
            protocols.len(),
            exports.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const V1_IMPORTS: &[&str] = &[
        "halo:mpc/types@1.0.0",
        "halo:mpc/log@1.0.0",
        "halo:mpc/random@1.0.0",
        "halo:mpc/crypto@1.0.0",
    ];

    #[test]
    fn v1_component() {
        let p = probe(&names(V1_IMPORTS), &names(&["halo:mpc/protocol@1.0.0"])).unwrap();
        assert_eq!(p.major, Major::V1);
        assert_eq!(p.wit_package, "halo:mpc@1.0.0");
        assert!(p.newer.is_empty());
    }

    #[test]
    fn newer_minor_is_served_by_v1() {
        let p = probe(
            &names(&["halo:mpc/log@1.4.0"]),
            &names(&["halo:mpc/protocol@1.4.0", "other:thing/x@0.1.0"]),
        )
        .unwrap();
        assert_eq!(p.major, Major::V1);
        assert_eq!(p.wit_package, "halo:mpc@1.4.0");
        assert_eq!(p.newer, vec!["halo:mpc@1.4.0".to_string()]);
    }

    #[test]
    fn wrong_major_is_named() {
        let e = probe(
            &names(&["halo:mpc/log@2.0.0", "halo:mpc/types@2.0.0"]),
            &names(&["halo:mpc/protocol@2.0.0"]),
        )
        .unwrap_err();
        let msg = e.to_string();
        match e {
            LoadError::UnsupportedWit { found, supported } => {
                assert_eq!(found, vec!["halo:mpc@2.0.0".to_string()]);
                assert_eq!(supported, SUPPORTED_WIT);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            msg.contains("halo:mpc@2.0.0") && msg.contains(SUPPORTED_WIT),
            "{msg}"
        );
    }

    #[test]
    fn wasi_imports_are_refused() {
        let mut imports = names(V1_IMPORTS);
        imports.push("wasi:io/poll@0.2.6".into());
        let e = probe(&imports, &names(&["halo:mpc/protocol@1.0.0"])).unwrap_err();
        assert!(e.to_string().contains("wasi:io/poll@0.2.6"), "{e}");
    }

    #[test]
    fn no_protocol_export() {
        let e = probe(&[], &names(&["foo:bar/baz@1.0.0"])).unwrap_err();
        assert!(matches!(e, LoadError::UnsupportedWit { .. }), "{e:?}");
        assert!(e.to_string().contains("foo:bar/baz@1.0.0"), "{e}");
        let e = probe(&[], &[]).unwrap_err();
        assert!(e.to_string().contains("no exports"), "{e}");
    }

    #[test]
    fn supported_range_matches_the_bindings() {
        assert_eq!(
            SUPPORTED_WIT,
            format!(
                "{}@{}..<{}.0.0",
                v1::PACKAGE,
                v1::MIN_VERSION,
                v1::MAJOR + 1
            )
        );
    }

    #[test]
    fn unversioned_or_prerelease_is_refused() {
        assert!(probe(&[], &names(&["halo:mpc/protocol"])).is_err());
        assert!(probe(&[], &names(&["halo:mpc/protocol@1.0.0-rc1"])).is_err());
    }
}
