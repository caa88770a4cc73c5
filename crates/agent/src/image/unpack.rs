//! Unpacks one layer (a tar, gzip-compressed or not) into a directory that overlayfs can use as
//! a lower layer: OCI whiteouts become overlayfs whiteouts (`.wh.NAME` a 0:0 character device
//! `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque` attribute on its directory). Runs
//! blocking: call it from `spawn_blocking`.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks the layer in `blob` into `dir` (which must not exist yet; it is made).
pub fn unpack_layer(blob: &Path, dir: &Path) -> io::Result<()> {
    let mut reader = BufReader::new(fs::File::open(blob)?);
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let Some(relative) = contained(&path) else {
            return Err(io::Error::other(format!(
                "the layer's entry `{}` leaves its root",
                path.display()
            )));
        };
        if relative.as_os_str().is_empty() {
            continue; // The root itself (`./`): the directory made above.
        }
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dir.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            fs::create_dir_all(&parent)?;
            rustix::fs::setxattr(
                &parent,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            fs::create_dir_all(&parent)?;
            let target = parent.join(hidden);
            let _ = fs::remove_file(&target);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                rustix::fs::makedev(0, 0),
            )?;
        } else {
            entry.unpack_in(dir)?;
        }
    }
    Ok(())
}

/// `path` without a leading `/` or `./` (empty for the root itself), if it stays inside its
/// root (no `..`).
fn contained(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
            }
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn unpacks_files_and_refuses_entries_outside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let blob = tmp.path().join("blob");
        fs::write(&blob, layer(&[("./", b""), ("etc/hello", b"hi")])).unwrap();
        unpack_layer(&blob, &tmp.path().join("out")).unwrap();
        assert_eq!(fs::read(tmp.path().join("out/etc/hello")).unwrap(), b"hi");
        assert_eq!(contained(Path::new("a/../../b")), None);
        assert_eq!(contained(Path::new("/./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(contained(Path::new("./")), Some(PathBuf::new()));
    }

    #[test]
    fn whiteouts_become_overlayfs_whiteouts_when_root() {
        if !rustix::process::geteuid().is_root() {
            return; // mknod and trusted.* attributes need root.
        }
        let tmp = tempfile::tempdir().unwrap();
        let blob = tmp.path().join("blob");
        fs::write(
            &blob,
            layer(&[("etc/.wh.gone", b""), ("var/.wh..wh..opq", b"")]),
        )
        .unwrap();
        let out = tmp.path().join("out");
        unpack_layer(&blob, &out).unwrap();
        let gone = fs::symlink_metadata(out.join("etc/gone")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &gone.file_type()
        ));
        let mut value = [0u8; 4];
        let n =
            rustix::fs::getxattr(out.join("var"), "trusted.overlay.opaque", &mut value).unwrap();
        assert_eq!(&value[..n], b"y");
    }
}
