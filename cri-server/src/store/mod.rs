//! hulld's persistent state: one JSON record per pod sandbox and per container
//! under the state directory, written atomically and reloaded at start.
//!
//! As in containerd's CRI stores, a record splits what never changes
//! (metadata) from what does (status), and status changes only through
//! [`RecordStore::update`], which persists the new record before it becomes
//! visible: a failed write leaves the old record in place, on disk and in
//! memory.

pub mod atomic;
pub mod container;
pub mod filter;
pub mod sandbox;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A record kept by a [`RecordStore`].
pub trait Record: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What the record is, for messages ("pod sandbox", "container").
    const KIND: &'static str;
    /// The record's full id (64 lowercase hex digits).
    fn id(&self) -> &str;
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read state directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write state record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove state record {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode {kind} record {id}")]
    Encode {
        kind: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("id prefix {prefix:?} matches more than one {kind}")]
    Ambiguous { kind: &'static str, prefix: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
}

/// Records of one kind, in memory and on disk (`<dir>/<id>.json`).
pub struct RecordStore<R: Record> {
    dir: PathBuf,
    records: RwLock<HashMap<String, R>>,
}

impl<R: Record> RecordStore<R> {
    /// Opens (creating if needed) the store in `dir` and loads every record.
    ///
    /// Leftover temporary files from an interrupted write are removed. A record
    /// that cannot be parsed is renamed to `<name>.corrupt` and logged, so one
    /// bad file neither stops hulld nor disappears silently.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let read_dir_error = |source| StoreError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut records = HashMap::new();
        for entry in fs::read_dir(dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(atomic::TMP_SUFFIX) {
                tracing::info!(path = %path.display(), "removing leftover of an interrupted state write");
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<R>(&bytes).map_err(|e| e.to_string()))
            {
                Ok(record) if format!("{}.json", record.id()) == name => {
                    records.insert(record.id().to_string(), record);
                }
                Ok(record) => {
                    tracing::error!(path = %path.display(), id = record.id(), kind = R::KIND, "state record file name does not match its id; ignoring it");
                }
                Err(error) => {
                    let mut aside = path.clone().into_os_string();
                    aside.push(".corrupt");
                    tracing::error!(path = %path.display(), %error, kind = R::KIND, "cannot parse state record; moved aside");
                    let _ = fs::rename(&path, aside);
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            records: RwLock::new(records),
        })
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn persist(&self, record: &R) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StoreError::Encode {
            kind: R::KIND,
            id: record.id().to_string(),
            source,
        })?;
        let path = self.path_of(record.id());
        atomic::write_atomic(&path, &bytes).map_err(|source| StoreError::Write { path, source })
    }

    /// Adds a new record, on disk first.
    pub fn insert(&self, record: R) -> Result<(), StoreError> {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        if records.contains_key(record.id()) {
            return Err(StoreError::AlreadyExists {
                kind: R::KIND,
                id: record.id().to_string(),
            });
        }
        self.persist(&record)?;
        records.insert(record.id().to_string(), record);
        Ok(())
    }

    /// Changes a record with `change`, persists it, and only then publishes it.
    /// Returns the updated record.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut R)) -> Result<R, StoreError> {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        let current = records.get(id).ok_or_else(|| StoreError::NotFound {
            kind: R::KIND,
            id: id.to_string(),
        })?;
        let mut next = current.clone();
        change(&mut next);
        self.persist(&next)?;
        records.insert(id.to_string(), next.clone());
        Ok(next)
    }

    /// Removes a record (a missing one is not an error).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let mut records = self.records.write().unwrap_or_else(|e| e.into_inner());
        let path = self.path_of(id);
        atomic::remove_durable(&path).map_err(|source| StoreError::Remove { path, source })?;
        records.remove(id);
        Ok(())
    }

    /// The record whose id is exactly `id`.
    pub fn get(&self, id: &str) -> Option<R> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        records.get(id).cloned()
    }

    /// Resolves a full id or a unique id prefix (as crictl and containerd
    /// accept) to the full id.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<String, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: R::KIND,
            id: id_or_prefix.to_string(),
        };
        if id_or_prefix.is_empty() {
            return Err(not_found());
        }
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        if records.contains_key(id_or_prefix) {
            return Ok(id_or_prefix.to_string());
        }
        let mut matches = records.keys().filter(|id| id.starts_with(id_or_prefix));
        match (matches.next(), matches.next()) {
            (Some(id), None) => Ok(id.clone()),
            (None, _) => Err(not_found()),
            (Some(_), Some(_)) => Err(StoreError::Ambiguous {
                kind: R::KIND,
                prefix: id_or_prefix.to_string(),
            }),
        }
    }

    /// Resolves `id_or_prefix` and returns the record.
    pub fn lookup(&self, id_or_prefix: &str) -> Result<R, StoreError> {
        let id = self.resolve(id_or_prefix)?;
        self.get(&id)
            .ok_or(StoreError::NotFound { kind: R::KIND, id })
    }

    /// Every record, in no particular order.
    pub fn list(&self) -> Vec<R> {
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        records.values().cloned().collect()
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.records.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        id: String,
        text: String,
    }

    impl Record for Note {
        const KIND: &'static str = "note";
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn note(id: &str, text: &str) -> Note {
        Note {
            id: id.to_string(),
            text: text.to_string(),
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        store.insert(note("aaa1", "one")).unwrap();
        store.insert(note("bbb2", "two")).unwrap();
        store.update("aaa1", |n| n.text = "changed".into()).unwrap();
        store.remove("bbb2").unwrap();
        drop(store);

        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        assert_eq!(store.list(), vec![note("aaa1", "changed")]);
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        store.insert(note("abc123", "x")).unwrap();
        store.insert(note("abd456", "y")).unwrap();
        assert_eq!(store.resolve("abc").unwrap(), "abc123");
        assert_eq!(store.resolve("abd456").unwrap(), "abd456");
        assert!(matches!(
            store.resolve("ab"),
            Err(StoreError::Ambiguous { .. })
        ));
        assert!(matches!(
            store.resolve("zz"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.resolve(""),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn duplicate_insert_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        store.insert(note("a", "1")).unwrap();
        assert!(matches!(
            store.insert(note("a", "2")),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(store.get("a").unwrap().text, "1");
    }

    #[test]
    fn failed_persist_keeps_the_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        store.insert(note("a", "old")).unwrap();
        // Replace the state directory by a file: every later write fails.
        let moved = dir.path().with_extension("moved");
        fs::rename(dir.path(), &moved).unwrap();
        fs::write(dir.path(), b"not a directory").unwrap();
        assert!(store.update("a", |n| n.text = "new".into()).is_err());
        assert_eq!(store.get("a").unwrap().text, "old");
        fs::remove_file(dir.path()).unwrap();
        fs::rename(&moved, dir.path()).unwrap();
    }

    #[test]
    fn corrupt_and_temporary_files_are_set_aside_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("good.json"),
            br#"{"id":"good","text":"ok"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("bad.json"), b"{ truncated").unwrap();
        fs::write(dir.path().join("good.json.77.tmp"), b"partial").unwrap();
        let store = RecordStore::<Note>::open(dir.path()).unwrap();
        assert_eq!(store.list(), vec![note("good", "ok")]);
        assert!(dir.path().join("bad.json.corrupt").exists());
        assert!(!dir.path().join("good.json.77.tmp").exists());
    }
}
