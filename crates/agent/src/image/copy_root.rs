//! A container's root filesystem made by copying its layers, for hosts that refuse overlayfs
//! (a kernel without it, or a state directory on a file system it cannot stack on): each
//! unpacked layer, bottom first, is copied over the ones below, its whiteouts applied as
//! overlayfs would show them — a `0:0` character device removes what the layers below have at
//! its path, a directory with the `trusted.overlay.opaque` attribute hides what they have
//! inside it. Files keep their mode and owner; hard links become copies. Blocking.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The attribute that marks a directory opaque (see [`super::unpack`]).
const OPAQUE: &str = "trusted.overlay.opaque";

/// Makes `root` (an empty directory) hold `layers` (unpacked, bottom first) as one tree.
pub fn copy_layers(layers: &[impl AsRef<Path>], root: &Path) -> io::Result<()> {
    for layer in layers {
        apply(layer.as_ref(), root)?;
    }
    Ok(())
}

/// Copies directory `from` (a layer's) over `to`.
fn apply(from: &Path, to: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            remove(&target)?;
            continue;
        }
        if kind.is_dir() {
            let keep = std::fs::symlink_metadata(&target).is_ok_and(|t| t.is_dir());
            if !keep || opaque(&source) {
                remove(&target)?;
                std::fs::create_dir(&target)?;
            }
            apply(&source, &target)?;
            std::fs::set_permissions(&target, meta.permissions())?;
            std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
            continue;
        }
        remove(&target)?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target)?;
        } else {
            // Devices, sockets and pipes are not carried (runc makes the devices a container
            // may use).
            continue;
        }
        std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// Whether directory `dir` hides what the layers below have in it.
fn opaque(dir: &Path) -> bool {
    let mut value = [0u8; 1];
    rustix::fs::lgetxattr(dir, OPAQUE, &mut value).is_ok_and(|n| n == 1 && value[0] == b'y')
}

/// Removes `path` whatever it is; nothing there is fine.
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `0:0` character device at `path` (needs root).
    fn whiteout(path: &Path) -> bool {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(0, 0),
        )
        .is_ok()
    }

    #[test]
    fn upper_layers_replace_whiteouts_remove_and_opaque_directories_hide() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper, root) = (
            dir.path().join("l"),
            dir.path().join("u"),
            dir.path().join("r"),
        );
        for d in [&lower, &upper, &root] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir_all(lower.join("etc/conf.d")).unwrap();
        std::fs::write(lower.join("etc/motd"), "lower").unwrap();
        std::fs::write(lower.join("etc/gone"), "lower").unwrap();
        std::fs::write(lower.join("etc/conf.d/old"), "lower").unwrap();
        std::os::unix::fs::symlink("motd", lower.join("etc/link")).unwrap();
        std::fs::create_dir_all(upper.join("etc/conf.d")).unwrap();
        std::fs::write(upper.join("etc/motd"), "upper").unwrap();
        std::fs::write(upper.join("etc/conf.d/new"), "upper").unwrap();
        let privileged = whiteout(&upper.join("etc/gone"))
            && rustix::fs::lsetxattr(
                upper.join("etc/conf.d"),
                OPAQUE,
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .is_ok();

        copy_layers(&[&lower, &upper], &root).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
        assert_eq!(read("etc/motd").as_deref(), Some("upper"));
        assert_eq!(read("etc/conf.d/new").as_deref(), Some("upper"));
        assert_eq!(
            std::fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("motd")
        );
        if privileged {
            assert_eq!(read("etc/gone"), None, "the whiteout removed it");
            assert_eq!(read("etc/conf.d/old"), None, "the opaque directory hid it");
        } else {
            assert_ne!(
                std::env::var("MERIDIAN_TEST_STRICT").as_deref(),
                Ok("1"),
                "whiteouts need root"
            );
        }
    }
}
