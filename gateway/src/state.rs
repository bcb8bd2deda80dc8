//! The last good config on disk (`<state-dir>/last-good.pb`, protobuf binary), so that a
//! gateway restarted while the federator is away serves what it served before.

use std::io;
use std::path::{Path, PathBuf};

use causeway_api::proto::ConfigSnapshot;
use prost::Message;

pub const LAST_GOOD: &str = "last-good.pb";

pub fn path(dir: &Path) -> PathBuf {
    dir.join(LAST_GOOD)
}

/// Writes atomically (temporary file, then rename), so a crash never leaves half a file.
pub fn save(dir: &Path, snapshot: &ConfigSnapshot) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{LAST_GOOD}.tmp"));
    std::fs::write(&tmp, snapshot.encode_to_vec())?;
    std::fs::rename(&tmp, path(dir))
}

/// Reads a snapshot file written by [`save`] (or by hand, for `--config-file`).
pub fn load(file: &Path) -> Result<ConfigSnapshot, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    ConfigSnapshot::decode(bytes.as_slice()).map_err(|e| format!("not a ConfigSnapshot: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConfigSnapshot {
            version: 3,
            cluster: "east".into(),
            ..Default::default()
        };
        save(dir.path(), &s).unwrap();
        assert_eq!(load(&path(dir.path())).unwrap(), s);
        std::fs::write(path(dir.path()), b"\xff\xff\xff").unwrap();
        assert!(load(&path(dir.path()))
            .unwrap_err()
            .contains("ConfigSnapshot"));
    }
}
