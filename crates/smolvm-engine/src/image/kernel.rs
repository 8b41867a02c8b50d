//! The guest kernel: Debian's cloud kernel of the 6.1 series, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x`, indexed with `depmod`.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use super::ImageError;
use super::fingerprint::Fingerprint;
use super::host::{APT_CACHE, APT_GET, DEPMOD, DPKG_DEB};

/// Debian metapackage whose dependency names the current cloud kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// Kernel series the guest is built for. Backports may offer newer series
/// under the same metapackage; the initramfs module list is checked on 6.1.
const SERIES: &str = "6.1";

/// Version of the unpacking steps below; bump it to rebuild every kernel.
const KERNEL_RECIPE_VERSION: &str = "1";

/// A versioned kernel package, such as `linux-image-6.1.0-57-cloud-amd64`
/// at version `6.1.192-3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelPackage {
    pub(crate) name: String,
    pub(crate) version: String,
}

/// A kernel package unpacked with its module index built.
#[derive(Debug)]
pub(crate) struct UnpackedKernel {
    /// Kernel release, such as `6.1.0-57-cloud-amd64`.
    pub(crate) release: String,
    pub(crate) vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the unpacked tree.
    pub(crate) modules_dir: PathBuf,
}

impl KernelPackage {
    pub(crate) fn fingerprint(&self) -> String {
        Fingerprint::new("kernel")
            .field("recipe", KERNEL_RECIPE_VERSION)
            .field("package", &self.name)
            .field("version", &self.version)
            .finish()
    }

    /// Returns the file name `apt-get download` gives the package.
    fn deb_file_name(&self) -> String {
        let version = self.version.replace(':', "%3a");
        format!("{}_{version}_amd64.deb", self.name)
    }
}

/// Finds the newest 6.1 cloud kernel package in the apt package lists.
pub(crate) fn resolve_package() -> Result<KernelPackage, ImageError> {
    let not_found = || ImageError::KernelPackageNotFound {
        metapackage: METAPACKAGE,
        series: SERIES,
    };

    let mut cmd = APT_CACHE.command();
    cmd.args(["show", METAPACKAGE]);
    let output = match APT_CACHE.output(&mut cmd) {
        Ok(output) => output,
        Err(ImageError::CommandFailed { .. }) => return Err(not_found()),
        Err(err) => return Err(err),
    };

    pick_package(&String::from_utf8_lossy(&output)).ok_or_else(not_found)
}

/// Picks, from `apt-cache show` output for the metapackage, the highest
/// version whose dependency is a kernel of [`SERIES`].
fn pick_package(show_output: &str) -> Option<KernelPackage> {
    let prefix = format!("linux-image-{SERIES}.");
    let depends = show_output
        .lines()
        .filter_map(|line| line.strip_prefix("Depends:"));
    let relations = depends.flat_map(|d| d.split([',', '|']));

    relations
        .filter_map(parse_exact_relation)
        .filter(|package| package.name.starts_with(&prefix))
        .max_by(|a, b| compare_versions(&a.version, &b.version))
}

/// Parses `name (= version)`.
fn parse_exact_relation(relation: &str) -> Option<KernelPackage> {
    let (name, rest) = relation.trim().split_once(' ')?;
    let version = rest.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
    Some(KernelPackage {
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

/// Orders version strings by comparing runs of digits as numbers and other
/// runs as text. This matches dpkg's order for kernel versions such as
/// `6.1.192-3`, which have no epoch or tilde.
fn compare_versions(a: &str, b: &str) -> Ordering {
    let chunks = |s: &str| -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((last_digit, text)) if *last_digit == digit => text.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    };

    for (x, y) in chunks(a).iter().zip(chunks(b).iter()) {
        let order = match (x.0, y.0) {
            (true, true) => {
                let (x, y) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            _ => x.1.cmp(&y.1),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    a.len().cmp(&b.len())
}

/// Downloads the package into `cache_dir` unless it is there already, and
/// returns the `.deb` path.
pub(crate) fn download(package: &KernelPackage, cache_dir: &Path) -> Result<PathBuf, ImageError> {
    let deb = cache_dir.join(package.deb_file_name());
    if deb.is_file() {
        return Ok(deb);
    }

    // Download into a scratch folder, so an interrupted download never
    // looks like a cached package.
    std::fs::create_dir_all(cache_dir).map_err(ImageError::io("create", cache_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(ImageError::io("create a folder in", cache_dir))?;
    let mut cmd = APT_GET.command();
    cmd.current_dir(scratch.path())
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .arg(format!("{}={}", package.name, package.version));
    APT_GET.output(&mut cmd)?;

    let downloaded = scratch.path().join(package.deb_file_name());
    std::fs::rename(&downloaded, &deb).map_err(ImageError::io("move", &downloaded))?;
    Ok(deb)
}

/// Unpacks `deb` into `into` and runs `depmod` on the result.
pub(crate) fn unpack(deb: &Path, into: &Path) -> Result<UnpackedKernel, ImageError> {
    let mut cmd = DPKG_DEB.command();
    cmd.arg("-x").arg(deb).arg(into);
    DPKG_DEB.output(&mut cmd)?;

    let not_in_package = || ImageError::KernelNotInPackage {
        deb: deb.to_owned(),
    };
    let (release, vmlinuz) = find_vmlinuz(&into.join("boot"))?.ok_or_else(not_in_package)?;

    // Packages from before the merged-/usr layout put modules in /lib.
    let base = [into.to_owned(), into.join("usr")]
        .into_iter()
        .find(|base| base.join("lib/modules").join(&release).is_dir())
        .ok_or_else(not_in_package)?;
    let mut cmd = DEPMOD.command();
    cmd.arg("-b").arg(&base).arg(&release);
    DEPMOD.output(&mut cmd)?;

    let modules_dir = base.join("lib/modules").join(&release);
    Ok(UnpackedKernel {
        release,
        vmlinuz,
        modules_dir,
    })
}

/// Returns the release and path of the one `vmlinuz-<release>` in `boot`.
fn find_vmlinuz(boot: &Path) -> Result<Option<(String, PathBuf)>, ImageError> {
    let entries = match std::fs::read_dir(boot) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(ImageError::io("read", boot)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(ImageError::io("read", boot))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            return Ok(Some((release.to_owned(), entry.path())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show linux-image-cloud-amd64` with bookworm, its security
    /// updates and bookworm-backports enabled (trimmed).
    const SHOW: &str = "\
Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.12.95+1~bpo12+1)
Version: 6.12.95-1~bpo12+1
Depends: linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1)

Package: linux-image-cloud-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)

Package: linux-image-cloud-amd64
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)
";

    #[test]
    fn picks_newest_kernel_of_series() {
        let package = pick_package(SHOW).unwrap();
        assert_eq!(package.name, "linux-image-6.1.0-57-cloud-amd64");
        assert_eq!(package.version, "6.1.192-3");
        assert_eq!(
            package.deb_file_name(),
            "linux-image-6.1.0-57-cloud-amd64_6.1.192-3_amd64.deb"
        );
    }

    #[test]
    fn no_kernel_of_series() {
        let show = "Version: 6.12.95-1\nDepends: linux-image-6.12.95-cloud-amd64 (= 6.12.95-1)\n";
        assert_eq!(pick_package(show), None);
        assert_eq!(pick_package(""), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("6.1.192-3", "6.1.99-9"), Ordering::Greater);
        assert_eq!(compare_versions("6.1.192-3", "6.1.192-10"), Ordering::Less);
        assert_eq!(compare_versions("6.1.192-3", "6.1.192-3"), Ordering::Equal);
        assert_eq!(compare_versions("6.1.192", "6.1.192-1"), Ordering::Less);
    }

    #[test]
    fn kernel_fingerprint_follows_version() {
        let a = KernelPackage {
            name: "linux-image-6.1.0-57-cloud-amd64".into(),
            version: "6.1.192-3".into(),
        };
        let b = KernelPackage {
            version: "6.1.192-4".into(),
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
