//! What every CSI request is checked for before it changes anything: ids, paths that
//! must stay inside the plugin's folders, and capabilities. Each failure is the gRPC code
//! the CSI specification names for it.

use std::path::{Component, Path, PathBuf};

use meridian_proto::pb::csi::VolumeCapability;
use meridian_proto::pb::csi::volume_capability::AccessType;
use meridian_proto::pb::csi::volume_capability::access_mode::Mode;
use tonic::Status;

/// Whether `name` is a Meridian volume name: 1-63 of a-z 0-9 - _.
pub fn is_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The Meridian volume a CSI volume name becomes: the name itself when it is a valid
/// volume name (Kubernetes' `pvc-<uid>` is), otherwise `csi-` and a hash of it, so that
/// the same name always gives the same volume.
pub fn volume_name_for(csi_name: &str) -> String {
    if is_volume_name(csi_name) {
        csi_name.to_string()
    } else {
        let hash = blake3::hash(csi_name.as_bytes()).to_hex();
        format!("csi-{}", &hash[..32])
    }
}

/// A volume id: required, and a volume name (ids are the volumes' names).
pub fn volume_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if !is_volume_name(id) {
        return Err(Status::invalid_argument(format!(
            "volume_id {id:?} is not a Meridian volume (1-63 of a-z 0-9 - _)"
        )));
    }
    Ok(id)
}

/// An absolute path without `.`, `..` or empty components (a trailing `/` is dropped).
pub fn absolute_clean(path: &Path) -> Result<PathBuf, Status> {
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "path {} is not absolute",
            path.display()
        )));
    }
    let text = path.as_os_str().as_encoded_bytes();
    if text.contains(&0) {
        return Err(Status::invalid_argument("a path holds a NUL byte"));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(Status::invalid_argument(format!(
                    "path {} holds . or ..",
                    path.display()
                )));
            }
        }
    }
    // `components` hides "a/./b" and "a//b"; refuse the first (it is not what was meant).
    if path
        .as_os_str()
        .as_encoded_bytes()
        .split(|&b| b == b'/')
        .any(|part| part == b"." || part == b"..")
    {
        return Err(Status::invalid_argument(format!(
            "path {} holds . or ..",
            path.display()
        )));
    }
    Ok(out)
}

/// The folders a `--kubelet-dir` flag names, each absolute and clean.
pub fn roots(dirs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|d| absolute_clean(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|s| anyhow::anyhow!("--kubelet-dir: {}", s.message()))
}

/// A staging or target path: required, absolute and clean, inside one of `roots`, and
/// still inside it once the symlinks of its existing part are followed.
pub fn confined(path: &str, roots: &[PathBuf], what: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    let clean = absolute_clean(Path::new(path))?;
    let inside = |p: &Path| roots.iter().any(|r| p.starts_with(r) && p != r.as_path());
    if !inside(&clean) {
        return Err(Status::invalid_argument(format!(
            "{what} {path} is outside the plugin's folders"
        )));
    }
    // The longest part that exists, with its symlinks resolved, must stay inside too. The
    // path itself is not looked at: it may be a mount whose server is restarting, and a
    // look would wait on it (the kubelet, not a tenant, makes these last folders).
    let mut existing = clean.parent().unwrap_or(Path::new("/"));
    let mut rest = vec![clean.file_name().unwrap_or_default().to_owned()];
    while std::fs::symlink_metadata(existing).is_err() {
        match existing.parent() {
            Some(p) => {
                rest.push(existing.file_name().unwrap_or_default().to_owned());
                existing = p;
            }
            None => break,
        }
    }
    let Ok(mut real) = existing.canonicalize() else {
        return Err(Status::invalid_argument(format!(
            "{what} {path}: its existing part cannot be resolved"
        )));
    };
    {
        for part in rest.iter().rev() {
            real.push(part);
        }
        let real_roots: Vec<PathBuf> = roots
            .iter()
            .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone()))
            .collect();
        if !real_roots.iter().any(|r| real.starts_with(r) && real != *r) {
            return Err(Status::invalid_argument(format!(
                "{what} {path} leads outside the plugin's folders"
            )));
        }
    }
    Ok(clean)
}

/// A path inside a volume (a subdirectory a volume context names): relative, clean.
pub fn sub_path(sub: &str) -> Result<PathBuf, Status> {
    if sub.is_empty() {
        return Ok(PathBuf::new());
    }
    let p = Path::new(sub);
    if p.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "subdirectory {sub:?} must be relative to the volume"
        )));
    }
    let mut out = PathBuf::new();
    for part in sub.split('/') {
        match part {
            "" => {}
            "." | ".." => {
                return Err(Status::invalid_argument(format!(
                    "subdirectory {sub:?} holds . or .."
                )));
            }
            p if p.contains('\0') => {
                return Err(Status::invalid_argument("a subdirectory holds a NUL byte"));
            }
            p => out.push(p),
        }
    }
    Ok(out)
}

/// Why a capability cannot be served, if it cannot.
pub fn unsupported(cap: &VolumeCapability) -> Option<String> {
    match &cap.access_type {
        None => return Some("the capability names no access type".into()),
        Some(AccessType::Block(_)) => {
            return Some("block access is not offered: Meridian volumes are filesystems".into());
        }
        Some(AccessType::Mount(m)) => {
            if !matches!(m.fs_type.as_str(), "" | "meridian" | "fuse.meridian") {
                return Some(format!(
                    "file system type {:?}: Meridian volumes mount as \"meridian\"",
                    m.fs_type
                ));
            }
            if let Some(f) = m.mount_flags.iter().find(|f| !is_known_flag(f)) {
                return Some(format!("mount flag {f:?} is not understood"));
            }
        }
    }
    match cap.access_mode.as_ref().map(|a| a.mode()) {
        None | Some(Mode::Unknown) => Some("the capability names no access mode".into()),
        // Every mode is served, multi-node multi-writer included: one namespace, kept
        // consistent by the metaservers.
        Some(_) => None,
    }
}

/// Mount flags a capability may carry (they change nothing a FUSE mount of Meridian does
/// differently, or ask for read-only).
fn is_known_flag(f: &str) -> bool {
    matches!(
        f,
        "ro" | "rw" | "noatime" | "relatime" | "nodev" | "nosuid" | "noexec"
    )
}

/// A required capability, served.
pub fn capability(cap: Option<&VolumeCapability>) -> Result<&VolumeCapability, Status> {
    let cap = cap.ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    match unsupported(cap) {
        Some(why) => Err(Status::invalid_argument(why)),
        None => Ok(cap),
    }
}

/// Whether a capability's mount flags ask for read-only.
pub fn wants_read_only(cap: &VolumeCapability) -> bool {
    let ro_mode = matches!(
        cap.access_mode.as_ref().map(|a| a.mode()),
        Some(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
    );
    let ro_flag = matches!(&cap.access_type, Some(AccessType::Mount(m)) if m.mount_flags.iter().any(|f| f == "ro"));
    ro_mode || ro_flag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_dot_dot_or_outside_the_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let roots = vec![root.clone()];
        let ok = format!("{}/pods/a/vol", root.display());
        assert_eq!(confined(&ok, &roots, "t").unwrap(), PathBuf::from(&ok));
        for bad in [
            String::new(),
            "relative/path".into(),
            format!("{}/pods/../../etc", root.display()),
            format!("{}/./pods", root.display()),
            "/etc/passwd".into(),
            root.display().to_string(),
        ] {
            let e = confined(&bad, &roots, "t").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        // A symlink inside that leads outside is refused too.
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let e = confined(&format!("{}/escape/x", root.display()), &roots, "t").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: meridian_proto::mutate::cases(512),
            ..proptest::prelude::ProptestConfig::default()
        })]
        /// Fuzz target: the ids and paths of CSI requests as a hostile caller could send
        /// them (valid ones with edits): each is refused, or is what the checks promise
        /// (a path inside the plugin's folders with no `.` or `..`; a volume id that is a
        /// volume name; a relative, clean subdirectory).
        #[test]
        fn hostile_csi_ids_and_paths_are_refused_or_confined(
            which in 0usize..3,
            edits in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(),
                 proptest::prelude::prop_oneof![
                     proptest::prelude::Just(b'/'), proptest::prelude::Just(b'.'),
                     proptest::prelude::Just(0u8), proptest::prelude::any::<u8>()
                 ]),
                0..6,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            std::fs::create_dir_all(root.join("pods/a")).unwrap();
            let seed = match which {
                0 => format!("{}/pods/a/vol", root.display()),
                1 => "pvc-1234".to_string(),
                _ => "sub/dir".to_string(),
            };
            let damaged = meridian_proto::mutate::mutate(seed.as_bytes(), &edits);
            let Ok(text) = std::str::from_utf8(&damaged) else {
                return Ok(());
            };
            let clean = |p: &Path| {
                p.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
                    && !p.as_os_str().as_encoded_bytes().contains(&0)
            };
            match which {
                0 => {
                    if let Ok(p) = confined(text, std::slice::from_ref(&root), "t") {
                        proptest::prop_assert!(p.starts_with(&root) && p != root, "{p:?}");
                        proptest::prop_assert!(clean(&p) && p.is_absolute(), "{p:?}");
                    }
                }
                1 => {
                    if let Ok(id) = volume_id(text) {
                        proptest::prop_assert!(is_volume_name(id), "{id:?}");
                        proptest::prop_assert!(!id.contains('/') && !id.contains('.'), "{id:?}");
                    }
                }
                _ => {
                    if let Ok(p) = sub_path(text) {
                        proptest::prop_assert!(p.is_relative() && clean(&p), "{p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn volume_names_and_sub_paths() {
        assert_eq!(volume_name_for("pvc-1234"), "pvc-1234");
        let odd = volume_name_for("Sanity Volume/1");
        assert!(is_volume_name(&odd) && odd.starts_with("csi-"));
        assert_eq!(odd, volume_name_for("Sanity Volume/1"));
        assert!(volume_id("../x").is_err());
        assert!(volume_id("").is_err());
        assert_eq!(sub_path("a//b/").unwrap(), PathBuf::from("a/b"));
        assert!(sub_path("../a").is_err());
        assert!(sub_path("/a").is_err());
    }
}
