//! Reading input files without blocking: a FIFO, socket or device where a regular file is
//! expected (a frame, model.toml, model.onnx, a config) is refused at once, naming the file,
//! instead of blocking the reader forever.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::FramesError;

/// Opens `path` for reading (symbolic links are followed); it must be a regular file. The
/// file is opened with `O_NONBLOCK` and checked with `fstat` before anything is read, so a
/// FIFO without a writer or a device never blocks the caller.
pub fn open_regular(path: &Path) -> Result<File, FramesError> {
    use rustix::fs::{fstat, open, FileType, Mode, OFlags};
    let io = |source: std::io::Error| FramesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let fd = open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let st = fstat(&fd).map_err(|e| io(e.into()))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "not a regular file (a {}); refused without reading",
                match kind {
                    FileType::Fifo => "FIFO",
                    FileType::Directory => "folder",
                    FileType::Socket => "socket",
                    FileType::CharacterDevice | FileType::BlockDevice => "device",
                    _ => "special file",
                }
            ),
        )));
    }
    Ok(File::from(fd))
}

/// The bytes of the regular file `path` ([`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>, FramesError> {
    let mut f = open_regular(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|source| FramesError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes)
}

/// The text of the regular file `path` ([`open_regular`]); not UTF-8 is an error naming it.
pub fn read_regular_string(path: &Path) -> Result<String, FramesError> {
    String::from_utf8(read_regular(path)?).map_err(|_| FramesError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn fifos_folders_and_devices_are_refused_without_blocking() {
        let d = crate::testutil::TempDir::new("fsread");
        let fifo = d.path().join("frame.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let t0 = Instant::now();
        for (p, what) in [
            (fifo.as_path(), "FIFO"),
            (d.path(), "folder"),
            (Path::new("/dev/zero"), "device"),
        ] {
            let e = read_regular(p).unwrap_err().to_string();
            assert!(
                e.contains(&p.display().to_string()) && e.contains(what),
                "{e}"
            );
        }
        let e = crate::decode_image(&fifo).unwrap_err().to_string();
        assert!(e.contains("frame.png") && e.contains("FIFO"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let file = d.path().join("a.txt");
        std::fs::write(&file, "text").unwrap();
        assert_eq!(read_regular_string(&file).unwrap(), "text");
    }
}
