//! Settings files: one reader for the gateway's and the federator's YAML.

use std::path::{Path, PathBuf};

/// A settings file that cannot be read or does not parse; names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
}

/// Reads a YAML file into `T` (absent fields take `T`'s serde defaults).
pub fn from_yaml_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|e| FileError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Settings {
        name: String,
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn reads_yaml_and_names_the_file_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.yaml");
        std::fs::write(&good, "name: east\n").unwrap();
        let s: Settings = from_yaml_file(&good).unwrap();
        assert_eq!((s.name.as_str(), s.port), ("east", 0));

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "port: [1\n").unwrap();
        let e = from_yaml_file::<Settings>(&bad).unwrap_err();
        assert!(matches!(e, FileError::Parse { .. }), "{e:?}");
        assert!(e.to_string().contains("bad.yaml"), "{e}");

        let missing = dir.path().join("missing.yaml");
        let e = from_yaml_file::<Settings>(&missing).unwrap_err();
        assert!(matches!(e, FileError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.yaml"), "{e}");
    }
}
