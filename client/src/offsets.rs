//! Offset stores: where a consumer remembers, per namespace, where to resume.
//!
//! A [`Resume`] is the next offset the consumer wants and the epoch of the log it came
//! from; handing both to the broker on `open` resumes with no gap and no duplicate, and
//! tells the consumer when the log was re-created.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where to resume a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The next offset wanted (last processed + 1).
    pub next: u64,
    /// The epoch of the log `next` belongs to.
    pub epoch: String,
}

/// Why an offset store failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsetStoreError {
    /// Reading or writing the file failed.
    #[error("offset store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not an offset store.
    #[error("offset store {path} is damaged at line {line}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
    },
}

/// Remembers where to resume each namespace. Calls may block on disk (the file store syncs
/// on every save): in async code that saves often, call them from `spawn_blocking`, or
/// save every N events.
pub trait OffsetStore: Send + Sync {
    /// Where `ns` resumes, if it was ever saved.
    fn load(&self, ns: &str) -> Result<Option<Resume>, OffsetStoreError>;
    /// Records where `ns` resumes.
    fn save(&self, ns: &str, resume: &Resume) -> Result<(), OffsetStoreError>;
}

/// Offsets in memory: gone when the process ends.
#[derive(Debug, Default)]
pub struct MemoryOffsetStore {
    map: Mutex<HashMap<String, Resume>>,
}

impl OffsetStore for MemoryOffsetStore {
    fn load(&self, ns: &str) -> Result<Option<Resume>, OffsetStoreError> {
        Ok(self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ns)
            .cloned())
    }

    fn save(&self, ns: &str, resume: &Resume) -> Result<(), OffsetStoreError> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.to_owned(), resume.clone());
        Ok(())
    }
}

/// Offsets in a text file, one `namespace next epoch` line each. Every save rewrites a
/// temporary file, syncs it and renames it over the old one, so a crash leaves either the
/// old or the new file, never half of one.
#[derive(Debug)]
pub struct FileOffsetStore {
    path: PathBuf,
    /// What the file holds; saves update it under its lock, then rewrite the file.
    cache: MemoryOffsetStore,
}

impl FileOffsetStore {
    /// Opens the store at `path`; a missing file is an empty store.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileOffsetStore, OffsetStoreError> {
        let path = path.into();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(OffsetStoreError::Io { path, source }),
        };
        let mut map = HashMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut parts = line.split(' ');
            let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(ns), Some(next), Some(epoch), None) => next.parse().ok().map(|next| {
                    (
                        ns.to_owned(),
                        Resume {
                            next,
                            epoch: epoch.to_owned(),
                        },
                    )
                }),
                _ => None,
            };
            let (ns, resume) = parsed.ok_or(OffsetStoreError::Corrupt {
                path: path.clone(),
                line: i + 1,
            })?;
            map.insert(ns, resume);
        }
        Ok(FileOffsetStore {
            path,
            cache: MemoryOffsetStore {
                map: Mutex::new(map),
            },
        })
    }

    fn write(&self, map: &HashMap<String, Resume>) -> Result<(), OffsetStoreError> {
        let io = |source| OffsetStoreError::Io {
            path: self.path.clone(),
            source,
        };
        let mut lines: Vec<String> = map
            .iter()
            .map(|(ns, r)| format!("{ns} {} {}\n", r.next, r.epoch))
            .collect();
        lines.sort();
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(lines.concat().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

impl OffsetStore for FileOffsetStore {
    fn load(&self, ns: &str) -> Result<Option<Resume>, OffsetStoreError> {
        self.cache.load(ns)
    }

    fn save(&self, ns: &str, resume: &Resume) -> Result<(), OffsetStoreError> {
        let mut map = self.cache.map.lock().unwrap_or_else(|p| p.into_inner());
        let old = map.insert(ns.to_owned(), resume.clone());
        if let Err(e) = self.write(&map) {
            match old {
                Some(old) => map.insert(ns.to_owned(), old),
                None => map.remove(ns),
            };
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resume(next: u64, epoch: &str) -> Resume {
        Resume {
            next,
            epoch: epoch.into(),
        }
    }

    fn contract(store: &dyn OffsetStore) {
        assert_eq!(store.load("a").unwrap(), None);
        store.save("a", &resume(5, "e1")).unwrap();
        store.save("b.c", &resume(0, "e2")).unwrap();
        store.save("a", &resume(6, "e1")).unwrap();
        assert_eq!(store.load("a").unwrap(), Some(resume(6, "e1")));
        assert_eq!(store.load("b.c").unwrap(), Some(resume(0, "e2")));
    }

    #[test]
    fn memory_store_keeps_the_last_save() {
        contract(&MemoryOffsetStore::default());
    }

    #[test]
    fn file_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets");
        contract(&FileOffsetStore::open(&path).unwrap());
        let again = FileOffsetStore::open(&path).unwrap();
        assert_eq!(again.load("a").unwrap(), Some(resume(6, "e1")));
        assert_eq!(again.load("b.c").unwrap(), Some(resume(0, "e2")));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_silent_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsets");
        std::fs::write(&path, "a 5 e1\nb notanumber e2\n").unwrap();
        match FileOffsetStore::open(&path) {
            Err(OffsetStoreError::Corrupt { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_save_keeps_the_previous_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("offsets");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let store = FileOffsetStore::open(&path).unwrap();
        store.save("a", &resume(1, "e")).unwrap();
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        assert!(store.save("a", &resume(2, "e")).is_err());
        assert_eq!(store.load("a").unwrap(), Some(resume(1, "e")));
    }
}
