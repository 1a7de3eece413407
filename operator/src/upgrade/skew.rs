//! The version skew guard, pure: a target control plane version is refused when it would leave
//! running proxies more than one minor version behind it, or put it behind the proxies (the
//! skew Istio supports: the data plane may lag the control plane by one minor, never lead it).
//!
//! Returning to a version an installed revision already runs is always allowed: that is a
//! rollback, and the proxies of the newer revision are moved back, not served across the skew.

use semver::Version;

/// A running proxy: the workload it belongs to (`namespace/pod`) and its version (from its
/// image tag; proxies of a non-release tag such as `dev` are not judged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningProxy {
    /// `namespace/pod`.
    pub pod: String,
    /// Its version.
    pub version: Version,
}

/// The version of a proxy image (`.../skein-proxy:1.0.2`, optionally `v`-prefixed).
pub fn image_version(image: &str) -> Option<Version> {
    let tag = image.rsplit_once(':').filter(|(repo, _)| !repo.ends_with('/'))?.1;
    let tag = tag.split('@').next()?;
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Why `target` is refused, naming (up to five of) the pods that block it.
pub fn check(target: &Version, proxies: &[RunningProxy], installed: &[Version]) -> Option<String> {
    if installed.iter().any(|v| (v.major, v.minor) == (target.major, target.minor)) {
        return None;
    }
    let behind: Vec<&RunningProxy> =
        proxies.iter().filter(|p| p.version.major != target.major || p.version.minor + 1 < target.minor).collect();
    let ahead: Vec<&RunningProxy> =
        proxies.iter().filter(|p| p.version.major == target.major && p.version.minor > target.minor).collect();
    let names = |ps: &[&RunningProxy]| {
        let mut s: Vec<String> = ps.iter().take(5).map(|p| format!("{} ({})", p.pod, p.version)).collect();
        if ps.len() > 5 {
            s.push(format!("{} more", ps.len() - 5));
        }
        s.join(", ")
    };
    if !behind.is_empty() {
        return Some(format!(
            "version {target} would leave {} running proxies more than one minor version behind the control plane: {}; upgrade one minor version at a time",
            behind.len(),
            names(&behind)
        ));
    }
    if !ahead.is_empty() {
        return Some(format!(
            "version {target} would put the control plane behind {} running proxies: {}",
            ahead.len(),
            names(&ahead)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn p(pod: &str, version: &str) -> RunningProxy {
        RunningProxy { pod: pod.into(), version: v(version) }
    }

    #[test]
    fn proxy_versions_come_from_release_tags_only() {
        assert_eq!(image_version("skein.local/skein/skein-proxy:1.0.2"), Some(v("1.0.2")));
        assert_eq!(image_version("registry:5000/skein-proxy:v1.2.0-rc.1"), Some(v("1.2.0-rc.1")));
        assert_eq!(image_version("skein.local/skein/skein-proxy:dev"), None);
        assert_eq!(image_version("registry:5000/skein-proxy"), None);
    }

    #[test]
    fn one_minor_ahead_is_allowed_two_are_refused_naming_the_pods() {
        let proxies = [p("bookinfo/a", "1.0.2"), p("bookinfo/b", "1.1.0")];
        assert_eq!(check(&v("1.1.0"), &proxies, &[v("1.0.2")]), None);
        let why = check(&v("1.2.0-rc.1"), &proxies, &[v("1.0.2"), v("1.1.0")]).unwrap();
        assert!(why.contains("more than one minor version behind"), "{why}");
        assert!(why.contains("bookinfo/a (1.0.2)") && !why.contains("bookinfo/b"), "{why}");
    }

    #[test]
    fn the_control_plane_never_goes_behind_the_proxies_unless_returning_to_an_installed_revision() {
        let proxies = [p("bookinfo/a", "1.1.0")];
        let why = check(&v("1.0.2"), &proxies, &[v("1.1.0")]).unwrap();
        assert!(why.contains("behind 1 running proxies: bookinfo/a (1.1.0)"), "{why}");
        // A rollback onto the still-installed 1.0.2 revision is not skew.
        assert_eq!(check(&v("1.0.2"), &proxies, &[v("1.0.2"), v("1.1.0")]), None);
    }
}
