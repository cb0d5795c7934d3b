//! Persists the registry as one small file per container (`<state-dir>/<id>.json`), written
//! atomically, so that a restarted daemon knows the containers created before it stopped.
//! Liveness is checked again at load: the files may describe containers that died meanwhile.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use tracer_api::ContainerCreated;

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, writing or removing a file failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A stored file and its record, or why it could not be read.
pub type Loaded = (PathBuf, Result<ContainerCreated, String>);

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record of a container (ids are checked to hold no `/` before they get here).
    pub fn save(&self, record: &ContainerCreated) -> Result<(), StoreError> {
        let path = self.path(&record.id);
        let tmp = self.dir.join(format!(".{}.tmp", record.id));
        let body = serde_json::to_vec(record).map_err(|e| StoreError::Io {
            op: "encode",
            path: path.clone(),
            source: e.into(),
        })?;
        let write = || -> io::Result<()> {
            use io::Write;
            let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&body)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StoreError::Io { op: "write", path: path.clone(), source }
        })
    }

    /// Removes a container's record; a missing one is fine.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { op: "remove", path, source: e }),
            _ => Ok(()),
        }
    }

    /// Every stored record; unreadable files are returned as errors with their path, to be
    /// logged and removed by the caller.
    pub fn load_all(&self) -> Result<Vec<Loaded>, StoreError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|source| StoreError::Io { op: "list", path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                // A temp file of a write interrupted by a crash.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = read_bounded(&path).and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            out.push((path, parsed));
        }
        Ok(out)
    }

    /// Removes a file found by [`Store::load_all`].
    pub fn discard(&self, path: &Path) {
        let _ = fs::remove_file(path);
    }
}

/// Reads a file of at most [`tracer_api::hook::MAX_MESSAGE_BYTES`].
pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use io::Read;
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    let limit = tracer_api::hook::MAX_MESSAGE_BYTES as u64;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    Ok(buf)
}
