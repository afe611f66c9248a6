//! Where the host keeps its CNI binaries and configs, seen from inside the installer's
//! container, where the host's file system (or the parts of it that are mounted) sits under
//! a host root such as `/host`.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The kinds of hosts we know how to lay out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// kubeadm and most distributions: `/opt/cni/bin`, `/etc/cni/net.d`.
    Kubeadm,
    /// k3s since the October 2024 releases: `/var/lib/rancher/k3s/data/cni`.
    K3s,
    /// k3s before October 2024: `/var/lib/rancher/k3s/data/current/bin`.
    K3sLegacy,
    /// Both dirs given on the command line.
    Custom,
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Kubeadm => "kubeadm",
            Flavor::K3s => "k3s",
            Flavor::K3sLegacy => "k3s (pre-2024.10 layout)",
            Flavor::Custom => "custom",
        })
    }
}

pub use iotlan_ipam::paths::{K3S_BIN, K3S_CONF, K3S_LEGACY_BIN, KUBEADM_BIN, KUBEADM_CONF};

/// The host's CNI dirs, as host paths (what the plugin sees when kubelet runs it) and as
/// paths inside our container (under the host root, symlinks resolved within that root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub flavor: Flavor,
    pub host_bin_dir: PathBuf,
    pub host_conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "no CNI directories found under host root {root}: looked for k3s ({K3S_CONF} with {K3S_BIN} \
         or {K3S_LEGACY_BIN}) and kubeadm ({KUBEADM_BIN}, {KUBEADM_CONF}); mount them or pass \
         --bin-dir and --conf-dir"
    )]
    NotFound { root: PathBuf },
    #[error(
        "k3s config dir {conf} found under {root}, but neither {K3S_BIN} nor {K3S_LEGACY_BIN}"
    )]
    K3sWithoutBinDir { root: PathBuf, conf: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: more than 40 symbolic links while resolving it inside the host root")]
    SymlinkLoop { path: PathBuf },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{0}: must be an absolute host path")]
    Relative(PathBuf),
}

/// Overrides from the command line; `None` means detect.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub flavor: Option<Flavor>,
    pub bin_dir: Option<PathBuf>,
    pub conf_dir: Option<PathBuf>,
}

/// Detects the layout under `root`. k3s wins over kubeadm when its agent config dir exists,
/// because k3s hosts sometimes carry a stray `/opt/cni/bin` that k3s never reads.
pub fn detect(root: &Path, ov: &Overrides) -> Result<Layout, LayoutError> {
    let flavor = match ov.flavor {
        Some(f) => f,
        None if ov.bin_dir.is_some() && ov.conf_dir.is_some() => Flavor::Custom,
        None => detect_flavor(root)?,
    };
    let (bin, conf) = match flavor {
        Flavor::Kubeadm => (KUBEADM_BIN, KUBEADM_CONF),
        Flavor::K3s => (K3S_BIN, K3S_CONF),
        Flavor::K3sLegacy => (K3S_LEGACY_BIN, K3S_CONF),
        Flavor::Custom => ("", ""),
    };
    let host_bin_dir = ov.bin_dir.clone().unwrap_or_else(|| PathBuf::from(bin));
    let host_conf_dir = ov.conf_dir.clone().unwrap_or_else(|| PathBuf::from(conf));
    for p in [&host_bin_dir, &host_conf_dir] {
        if !p.is_absolute() {
            return Err(LayoutError::Relative(p.clone()));
        }
    }
    let bin_dir = resolve_in_root(root, &host_bin_dir)?;
    let conf_dir = resolve_in_root(root, &host_conf_dir)?;
    for p in [&bin_dir, &conf_dir] {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(LayoutError::NotADirectory { path: p.clone() }),
            Err(source) => {
                return Err(LayoutError::Io {
                    path: p.clone(),
                    source,
                })
            }
        }
    }
    Ok(Layout {
        flavor,
        host_bin_dir,
        host_conf_dir,
        bin_dir,
        conf_dir,
    })
}

fn detect_flavor(root: &Path) -> Result<Flavor, LayoutError> {
    let is_dir = |p: &str| {
        resolve_in_root(root, Path::new(p))
            .map(|p| p.is_dir())
            .unwrap_or(false)
    };
    if is_dir(K3S_CONF) {
        if is_dir(K3S_BIN) {
            return Ok(Flavor::K3s);
        }
        if is_dir(K3S_LEGACY_BIN) {
            return Ok(Flavor::K3sLegacy);
        }
        return Err(LayoutError::K3sWithoutBinDir {
            root: root.to_owned(),
            conf: K3S_CONF,
        });
    }
    if is_dir(KUBEADM_BIN) && is_dir(KUBEADM_CONF) {
        return Ok(Flavor::Kubeadm);
    }
    Err(LayoutError::NotFound {
        root: root.to_owned(),
    })
}

/// The plugin's state dir on the host ([`iotlan_ipam::paths::STATE_DIR`]: the file store's leases,
/// the kubernetes store's node-local records, the hostShim records) as seen under `root`.
pub fn state_dir(root: &Path) -> Result<PathBuf, LayoutError> {
    resolve_in_root(root, Path::new(iotlan_ipam::paths::STATE_DIR))
}

/// Maps the absolute host path `host` to a path under `root`, following symbolic links the
/// way the host would: an absolute link target starts again at `root`, never at our own `/`.
/// (k3s's `data/current` is such a link.) `..` never climbs above `root`.
pub fn resolve_in_root(root: &Path, host: &Path) -> Result<PathBuf, LayoutError> {
    let mut out = root.to_path_buf();
    let mut depth = 0usize; // components of `out` below root
    let mut pending: Vec<PathBuf> = host
        .components()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match Path::new(&comp).components().next() {
            None
            | Some(Component::RootDir)
            | Some(Component::CurDir)
            | Some(Component::Prefix(_)) => {}
            Some(Component::ParentDir) => {
                if depth > 0 {
                    out.pop();
                    depth -= 1;
                }
            }
            Some(Component::Normal(name)) => {
                let next = out.join(name);
                match std::fs::symlink_metadata(&next) {
                    Ok(m) if m.file_type().is_symlink() => {
                        hops += 1;
                        if hops > 40 {
                            return Err(LayoutError::SymlinkLoop {
                                path: host.to_owned(),
                            });
                        }
                        let target =
                            std::fs::read_link(&next).map_err(|source| LayoutError::Io {
                                path: next.clone(),
                                source,
                            })?;
                        if target.is_absolute() {
                            out = root.to_path_buf();
                            depth = 0;
                        }
                        pending.extend(
                            target
                                .components()
                                .rev()
                                .map(|c| PathBuf::from(c.as_os_str())),
                        );
                    }
                    // Missing components and plain files: keep walking lexically, so callers
                    // get a path they can report or create.
                    _ => {
                        out = next;
                        depth += 1;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("var/lib/rancher/k3s/data/abc123/bin")).unwrap();
        symlink(
            "/var/lib/rancher/k3s/data/abc123",
            root.join("var/lib/rancher/k3s/data/current"),
        )
        .unwrap();
        let got = resolve_in_root(root, Path::new(K3S_LEGACY_BIN)).unwrap();
        assert_eq!(got, root.join("var/lib/rancher/k3s/data/abc123/bin"));
    }

    #[test]
    fn relative_symlinks_and_dotdot_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("../../../../a", root.join("a/b/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/a/b/up/b")).unwrap(),
            root.join("a/b")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(matches!(
            resolve_in_root(root, Path::new("/loop")),
            Err(LayoutError::SymlinkLoop { .. })
        ));
    }
}
