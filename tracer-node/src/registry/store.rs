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
    /// The directory is not ours alone.
    #[error("state directory refused: {0}")]
    Unsafe(#[from] super::files::DirError),
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

/// Why a stored file is not a record of ours.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// Its name is not UTF-8 (or holds control characters).
    #[error("the file name is not plain text")]
    Name,
    /// It could not be opened or read as a private regular file.
    #[error(transparent)]
    File(#[from] super::files::FileError),
    /// It is not a container record.
    #[error("not a container record: {0}")]
    Json(#[from] serde_json::Error),
    /// Its record is another container's.
    #[error("it holds container {found:?}, not {stem:?}")]
    OtherId {
        /// The id in the record.
        found: String,
        /// The id in the file's name.
        stem: String,
    },
}

/// A stored file and its record, or why it could not be read.
pub type Loaded = (PathBuf, Result<ContainerCreated, BadRecord>);

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
        super::files::check_private_dir(&dir)?;
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
    /// logged and removed by the caller. Only regular files of ours named `<id>.json` whose
    /// record holds that same id are taken: a record under another name would be reloaded at
    /// every start and never removed (removal goes by id).
    pub fn load_all(&self) -> Result<Vec<Loaded>, StoreError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|source| StoreError::Io { op: "list", path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let raw = entry.file_name();
            let Some(name) = super::files::plain_name(&raw) else {
                out.push((path, Err(BadRecord::Name)));
                continue;
            };
            if name.starts_with('.') {
                // A temp file of a write interrupted by a crash.
                super::files::remove_entry(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".json") else { continue };
            let parsed = super::files::read_private_file(&path, tracer_api::hook::MAX_MESSAGE_BYTES as u64)
                .map_err(BadRecord::from)
                .and_then(|b| Ok(serde_json::from_slice::<ContainerCreated>(&b)?))
                .and_then(|rec| {
                    if rec.id == stem {
                        Ok(rec)
                    } else {
                        Err(BadRecord::OtherId { found: rec.id, stem: stem.to_owned() })
                    }
                });
            out.push((path, parsed));
        }
        Ok(out)
    }

    /// Removes a file found by [`Store::load_all`] (a directory is left in place).
    pub fn discard(&self, path: &Path) {
        super::files::remove_entry(path);
    }
}
