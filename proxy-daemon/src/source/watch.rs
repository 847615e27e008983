//! The manifests directory as a source: every `*.yaml`, `*.yml` and
//! `*.json` file in it (not hidden, not in subdirectories), re-read when it
//! changes.
//!
//! A file that fails to parse as a whole keeps contributing what it held the
//! last time it parsed (a half-written file must not make Services vanish),
//! and the failure is reported; a document that fails inside a file is
//! reported and skipped while the file's other documents are used. A file
//! that is removed takes its objects with it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::model::{ClusterState, KubeObject};

use super::parse::{ParsedObject, parse_manifest};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    }
}

struct FileState {
    stamp: Stamp,
    objects: Vec<KubeObject>,
}

/// One problem found while reading the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceProblem {
    pub file: PathBuf,
    pub reason: String,
}

/// What a rescan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the set of objects may have changed.
    pub changed: bool,
    /// Files or documents that could not be used, newly found in this scan.
    pub problems: Vec<SourceProblem>,
}

pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the files that changed since the last scan.
    pub fn rescan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                scan.problems.push(SourceProblem {
                    file: self.dir.clone(),
                    reason: format!("cannot read the manifests directory: {e}"),
                });
                return scan;
            }
        };
        let mut present = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            present.push(path.clone());
            let st = stamp(&meta);
            if self.files.get(&path).is_some_and(|f| f.stamp == st) {
                continue;
            }
            scan.changed = true;
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    scan.problems.push(SourceProblem {
                        file: path,
                        reason: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            match parse_manifest(&path, &bytes) {
                Ok(parsed) => {
                    let mut objects = Vec::new();
                    for p in parsed.objects {
                        match p {
                            ParsedObject::Object(o) => objects.push(o),
                            ParsedObject::Ignored { .. } => {}
                        }
                    }
                    for problem in parsed.errors {
                        scan.problems.push(SourceProblem {
                            file: path.clone(),
                            reason: problem.to_string(),
                        });
                    }
                    self.files.insert(path, FileState { stamp: st, objects });
                }
                Err(e) => {
                    scan.problems.push(SourceProblem {
                        file: path.clone(),
                        reason: format!("{e} (keeping what the file held before)"),
                    });
                    // Remember the stamp so the same broken content is not
                    // re-reported on every scan; keep the old objects.
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|f| f.objects)
                        .unwrap_or_default();
                    self.files.insert(path, FileState { stamp: st, objects });
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        scan.changed |= self.files.len() != before;
        scan
    }

    /// Every object from every file (a later file wins for the same object).
    pub fn state(&self) -> ClusterState {
        ClusterState::from_objects(self.files.values().flat_map(|f| f.objects.iter().cloned()))
    }
}
