//! The release catalog compiled into the operator (`config/versions.yaml`): which releases exist,
//! which channel each was published to, and the images each one runs.

use semver::Version;
use serde::Deserialize;
use skein_api::{Channel, Track};

/// The catalog shipped with this operator build.
const CATALOG_YAML: &str = include_str!("../../../config/versions.yaml");

/// Why a spec's `version`/`channel` cannot be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// The catalog file itself is malformed (a build defect, caught by unit tests).
    #[error("release catalog is invalid: {0}")]
    Invalid(String),
    /// `spec.version` names no release in the catalog.
    #[error("spec.version {0:?} is not a known release (known: {1})")]
    UnknownVersion(String, String),
    /// The channel has no release yet.
    #[error("spec.channel {0:?} has no release in this operator's catalog")]
    EmptyChannel(String),
}

#[derive(Debug, Deserialize)]
struct CatalogFile {
    registry: String,
    releases: Vec<ReleaseEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReleaseEntry {
    version: String,
    channel: Track,
    #[serde(default)]
    control_plane_image: Option<String>,
    #[serde(default)]
    proxy_image: Option<String>,
    #[serde(default)]
    end_of_life: bool,
}

/// One installable release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// Semantic version, without a `v` prefix.
    pub version: Version,
    /// Track it was published to.
    pub channel: Track,
    /// Image of `skein-controlplane`.
    pub control_plane_image: String,
    /// Image of `skein-proxy` (sidecars and gateways).
    pub proxy_image: String,
    /// Registry the images above come from (the catalog's, or the operator's override).
    pub registry: String,
    /// No longer installable (no channel resolves to it; a pinned version is refused unless
    /// it already runs, where it keeps running with a warning).
    pub end_of_life: bool,
}

impl Release {
    /// The release with its images taken from `hub` and/or tagged `tag` (a MeshControlPlane's
    /// `spec.hub`/`spec.tag`, Istio's values of the same names). Neither: unchanged.
    pub fn with_image_overrides(mut self, hub: Option<&str>, tag: Option<&str>) -> Self {
        if hub.is_none() && tag.is_none() {
            return self;
        }
        let hub = hub.unwrap_or(&self.registry).trim_end_matches('/').to_string();
        let tag = tag.map_or_else(|| self.version.to_string(), str::to_string);
        self.control_plane_image = format!("{hub}/{CONTROL_PLANE_IMAGE}:{tag}");
        self.proxy_image = format!("{hub}/{PROXY_IMAGE}:{tag}");
        self.registry = hub;
        self
    }
}

/// Image names under a registry.
const CONTROL_PLANE_IMAGE: &str = "skein-controlplane";
const PROXY_IMAGE: &str = "skein-proxy";

/// All known releases, sorted oldest first.
#[derive(Debug, Clone)]
pub struct Catalog {
    releases: Vec<Release>,
}

/// How stable a channel is: a channel accepts releases at least as stable as itself.
pub fn stability(c: Track) -> u8 {
    match c {
        Track::Stable => 2,
        Track::Fast => 1,
        Track::Candidate => 0,
    }
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::parse(CATALOG_YAML)
    }

    /// The catalog compiled into this binary, its default registry replaced by `registry`
    /// (the operator's `--image-registry`) when given.
    pub fn builtin_with_registry(registry: Option<&str>) -> Result<Self, CatalogError> {
        Self::parse_with_registry(CATALOG_YAML, registry)
    }

    /// Parses a catalog document.
    pub fn parse(yaml: &str) -> Result<Self, CatalogError> {
        Self::parse_with_registry(yaml, None)
    }

    /// A catalog document given to the operator (`--catalog`) instead of the built-in one,
    /// its registry replaced by `registry` when given.
    pub fn from_file(path: &std::path::Path, registry: Option<&str>) -> Result<Self, CatalogError> {
        let at = |e: &dyn std::fmt::Display| CatalogError::Invalid(format!("--catalog {}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
        Self::parse_with_registry(&text, registry).map_err(|e| match e {
            CatalogError::Invalid(why) => at(&why),
            other => other,
        })
    }

    pub(crate) fn parse_with_registry(yaml: &str, registry: Option<&str>) -> Result<Self, CatalogError> {
        if yaml.trim().is_empty() {
            return Err(CatalogError::Invalid("the document is empty".into()));
        }
        let mut file: CatalogFile = serde_yaml::from_str(yaml).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        if let Some(r) = registry {
            file.registry = r.trim_end_matches('/').to_string();
        }
        let mut releases = Vec::with_capacity(file.releases.len());
        for r in file.releases {
            let version = Version::parse(&r.version)
                .map_err(|e| CatalogError::Invalid(format!("release {:?}: {e}", r.version)))?;
            let image = |name: &str| format!("{}/{name}:{version}", file.registry);
            releases.push(Release {
                control_plane_image: r.control_plane_image.unwrap_or_else(|| image(CONTROL_PLANE_IMAGE)),
                proxy_image: r.proxy_image.unwrap_or_else(|| image(PROXY_IMAGE)),
                registry: file.registry.clone(),
                version,
                channel: r.channel,
                end_of_life: r.end_of_life,
            });
        }
        releases.sort_by(|a, b| a.version.cmp(&b.version));
        if releases.windows(2).any(|w| w[0].version == w[1].version) {
            return Err(CatalogError::Invalid("a release is listed twice".into()));
        }
        Ok(Self { releases })
    }

    /// Every release, oldest first.
    pub fn releases(&self) -> &[Release] {
        &self.releases
    }

    /// Resolves a spec's `version` (which wins) or else its `channel` to a release.
    pub fn resolve(&self, version: Option<&str>, channel: Channel) -> Result<&Release, CatalogError> {
        match version {
            Some(v) => self.resolve_version(v),
            None => self
                .releases
                .iter()
                .rev()
                .find(|r| {
                    stability(r.channel) >= stability(channel.track)
                        && channel.takes_minor(r.version.major, r.version.minor)
                        && !r.end_of_life
                })
                .ok_or_else(|| CatalogError::EmptyChannel(channel.to_string())),
        }
    }

    fn resolve_version(&self, spec: &str) -> Result<&Release, CatalogError> {
        let unknown = || {
            let known: Vec<String> = self.releases.iter().map(|r| r.version.to_string()).collect();
            CatalogError::UnknownVersion(spec.to_string(), known.join(", "))
        };
        let bare = spec.strip_prefix('v').unwrap_or(spec);
        if let Some(minor) = bare.strip_suffix("-latest") {
            let (major, minor) = minor.split_once('.').ok_or_else(unknown)?;
            let (major, minor): (u64, u64) =
                (major.parse().map_err(|_| unknown())?, minor.parse().map_err(|_| unknown())?);
            return self
                .releases
                .iter()
                .rev()
                .find(|r| r.version.major == major && r.version.minor == minor && r.version.pre.is_empty())
                .ok_or_else(unknown);
        }
        let wanted = Version::parse(bare).map_err(|_| unknown())?;
        self.releases.iter().find(|r| r.version == wanted).ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::builtin().expect("the shipped catalog parses")
    }

    #[test]
    fn pinned_version_wins_over_channel() {
        let c = catalog();
        let r = c.resolve(Some("1.0.1"), Channel::CANDIDATE).unwrap();
        assert_eq!(r.version.to_string(), "1.0.1");
        assert_eq!(r.control_plane_image, "registry.skein.dev/skein/skein-controlplane:1.0.1");
        assert_eq!(r.proxy_image, "registry.skein.dev/skein/skein-proxy:1.0.1");
    }

    #[test]
    fn v_prefix_is_accepted() {
        assert_eq!(catalog().resolve(Some("v1.0.2"), Channel::STABLE).unwrap().version.to_string(), "1.0.2");
    }

    #[test]
    fn minor_alias_resolves_to_newest_patch() {
        let c = catalog();
        assert_eq!(c.resolve(Some("v1.0-latest"), Channel::STABLE).unwrap().version.to_string(), "1.0.2");
        assert_eq!(c.resolve(Some("v1.1-latest"), Channel::STABLE).unwrap().version.to_string(), "1.1.0");
        // 1.2 has only a release candidate: an alias never resolves to a pre-release.
        assert!(matches!(c.resolve(Some("v1.2-latest"), Channel::STABLE), Err(CatalogError::UnknownVersion(..))));
    }

    #[test]
    fn channels_take_releases_at_least_as_stable_as_themselves() {
        let c = catalog();
        assert_eq!(c.resolve(None, Channel::STABLE).unwrap().version.to_string(), "1.0.2");
        assert_eq!(c.resolve(None, Channel::FAST).unwrap().version.to_string(), "1.1.0");
        assert_eq!(c.resolve(None, Channel::CANDIDATE).unwrap().version.to_string(), "1.2.0-rc.1");
    }

    #[test]
    fn minor_channels_follow_one_minor_line_of_their_track() {
        let c = catalog();
        let ch = |s: &str| s.parse::<Channel>().unwrap();
        assert_eq!(c.resolve(None, ch("stable-1.0")).unwrap().version.to_string(), "1.0.2");
        assert_eq!(c.resolve(None, ch("fast-1.1")).unwrap().version.to_string(), "1.1.0");
        // 1.1.0 was published to fast: stable-1.1 has nothing yet.
        assert_eq!(c.resolve(None, ch("stable-1.1")), Err(CatalogError::EmptyChannel("stable-1.1".into())));
        assert_eq!(c.resolve(None, ch("candidate-1.2")).unwrap().version.to_string(), "1.2.0-rc.1");
        assert_eq!(ch("fast-1.1").to_string(), "fast-1.1");
        for bad in ["beta", "stable-1", "stable-x.y", "stable-1.0.0", ""] {
            assert!(bad.parse::<Channel>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn unknown_version_names_the_field_and_the_known_releases() {
        let err = catalog().resolve(Some("9.9.9"), Channel::STABLE).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("spec.version \"9.9.9\" is not a known release"), "{msg}");
        assert!(msg.contains("1.0.2"), "{msg}");
    }

    #[test]
    fn empty_channel_is_an_error() {
        let c = Catalog::parse("registry: r\nreleases:\n  - {version: 2.0.0-rc.1, channel: candidate}\n").unwrap();
        assert_eq!(c.resolve(None, Channel::STABLE), Err(CatalogError::EmptyChannel("stable".into())));
    }

    #[test]
    fn end_of_life_releases_are_never_a_channel_head_but_stay_resolvable_when_pinned() {
        let c = Catalog::parse(
            "registry: r\nreleases:\n  - {version: 1.0.0, channel: stable}\n  - {version: 1.0.1, channel: stable, endOfLife: true}\n",
        )
        .unwrap();
        assert_eq!(c.resolve(None, Channel::STABLE).unwrap().version.to_string(), "1.0.0");
        assert!(c.resolve(Some("1.0.1"), Channel::STABLE).unwrap().end_of_life);
        assert!(!catalog().releases().iter().any(|r| r.end_of_life), "the shipped catalog has no EOL release yet");
    }

    #[test]
    fn an_empty_or_truncated_catalog_file_is_rejected() {
        assert!(matches!(Catalog::parse(""), Err(CatalogError::Invalid(_))));
        assert!(matches!(Catalog::parse("registry: r\nreleases:\n  - {version: 1.0"), Err(CatalogError::Invalid(_))));
        let missing = Catalog::from_file(std::path::Path::new("/nonexistent/catalog.yaml"), None).unwrap_err();
        assert!(missing.to_string().contains("--catalog /nonexistent/catalog.yaml"), "{missing}");
    }

    #[test]
    fn duplicate_or_malformed_releases_are_rejected() {
        assert!(
            Catalog::parse(
                "registry: r\nreleases:\n  - {version: 1.0.0, channel: stable}\n  - {version: 1.0.0, channel: fast}\n"
            )
            .is_err()
        );
        assert!(Catalog::parse("registry: r\nreleases:\n  - {version: one, channel: stable}\n").is_err());
    }

    #[test]
    fn images_come_from_the_operators_registry_then_the_specs_hub_and_tag() {
        let shipped = catalog().resolve(Some("1.0.2"), Channel::STABLE).unwrap().clone();
        assert_eq!(shipped.proxy_image, "registry.skein.dev/skein/skein-proxy:1.0.2");
        // The operator's --image-registry replaces the catalog's registry.
        let local = Catalog::builtin_with_registry(Some("skein.local/skein/")).unwrap();
        let r = local.resolve(Some("1.0.2"), Channel::STABLE).unwrap().clone();
        assert_eq!(r.control_plane_image, "skein.local/skein/skein-controlplane:1.0.2");
        // spec.tag alone keeps the registry; spec.hub alone keeps the version as tag.
        let tagged = r.clone().with_image_overrides(None, Some("dev"));
        assert_eq!(tagged.proxy_image, "skein.local/skein/skein-proxy:dev");
        assert_eq!(tagged.control_plane_image, "skein.local/skein/skein-controlplane:dev");
        let hub = r.clone().with_image_overrides(Some("docker.io/me"), None);
        assert_eq!(hub.proxy_image, "docker.io/me/skein-proxy:1.0.2");
        assert_eq!(r.clone().with_image_overrides(None, None), r);
        // The version stays the release's: the tag changes images, not what is installed.
        assert_eq!(tagged.version, r.version);
    }
}
