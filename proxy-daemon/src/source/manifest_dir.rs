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
    /// Documents (or the whole file) that could not be used.
    problems: usize,
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
    /// Entries that look like manifests but cannot be read at all (a
    /// dangling symbolic link, a link loop, a directory), with the reason
    /// last reported.
    unusable: BTreeMap<PathBuf, String>,
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// Why a directory entry named like a manifest cannot be opened.
fn unreadable_reason(path: &Path, e: &std::io::Error) -> String {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match (is_link, e.raw_os_error()) {
        (true, Some(libc::ELOOP)) => "symbolic link loop".to_string(),
        (true, Some(libc::ENOENT)) => {
            "dangling symbolic link (its target does not exist)".to_string()
        }
        (true, _) => format!("cannot follow symbolic link: {e}"),
        (false, _) => format!("cannot stat: {e}"),
    }
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            unusable: BTreeMap::new(),
        }
    }

    /// Re-reads the files that changed since the last scan.
    pub fn rescan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let problems_before = self.problems();
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
        let mut unusable = BTreeMap::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => {
                    unusable.insert(path, "not a regular file".to_string());
                    continue;
                }
                Err(e) => {
                    unusable.insert(path.clone(), unreadable_reason(&path, &e));
                    continue;
                }
            };
            present.push(path.clone());
            let st = stamp(&meta);
            if self.files.get(&path).is_none_or(|f| f.stamp != st) {
                scan.changed = true;
                self.read_file(path, st, &mut scan);
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| present.contains(p));
        scan.changed |= self.files.len() != before;
        // Reported when they appear or their reason changes, not every scan.
        for (path, reason) in &unusable {
            if self.unusable.get(path) != Some(reason) {
                scan.problems.push(SourceProblem {
                    file: path.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.unusable = unusable;
        // A new problem changes what the daemon reports, if not the objects.
        scan.changed |= self.problems() != problems_before;
        scan
    }

    /// (Re)reads one changed file. One that cannot be read or parsed as a
    /// whole keeps what it held before; its stamp is remembered so the same
    /// broken content is not reported again on every scan.
    fn read_file(&mut self, path: PathBuf, st: Stamp, scan: &mut Scan) {
        let parsed = std::fs::read(&path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| parse_manifest(&path, &bytes).map_err(|e| e.to_string()));
        let state = match parsed {
            Ok(parsed) => {
                let objects = parsed
                    .objects
                    .into_iter()
                    .filter_map(|p| match p {
                        ParsedObject::Object(o) => Some(o),
                        ParsedObject::Ignored { .. } => None,
                    })
                    .collect();
                let problems = parsed.errors.len();
                for problem in parsed.errors {
                    scan.problems.push(SourceProblem {
                        file: path.clone(),
                        reason: problem.to_string(),
                    });
                }
                FileState {
                    stamp: st,
                    objects,
                    problems,
                }
            }
            Err(why) => {
                scan.problems.push(SourceProblem {
                    file: path.clone(),
                    reason: format!("{why} (keeping what the file held before)"),
                });
                let objects = self
                    .files
                    .remove(&path)
                    .map(|f| f.objects)
                    .unwrap_or_default();
                FileState {
                    stamp: st,
                    objects,
                    problems: 1,
                }
            }
        };
        self.files.insert(path, state);
    }

    /// Files and documents that cannot be used right now.
    pub fn problems(&self) -> usize {
        self.unusable.len() + self.files.values().map(|f| f.problems).sum::<usize>()
    }

    /// Every object from every file (a later file wins for the same object).
    pub fn state(&self) -> ClusterState {
        ClusterState::from_objects(self.files.values().flat_map(|f| f.objects.iter().cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary directory.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

    #[test]
    fn link_loops_and_dangling_links_are_reported_once_and_counted() {
        let dir = scratch("links");
        std::fs::write(dir.join("web.yaml"), SERVICE).unwrap();
        std::os::unix::fs::symlink("loop-b.yaml", dir.join("loop-a.yaml")).unwrap();
        std::os::unix::fs::symlink("loop-a.yaml", dir.join("loop-b.yaml")).unwrap();
        std::os::unix::fs::symlink("gone.yaml", dir.join("dangling.yaml")).unwrap();
        let mut m = ManifestDir::new(&dir);
        let scan = m.rescan();
        let mut reasons: Vec<String> = scan
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{} {}",
                    p.file.file_name().unwrap().to_string_lossy(),
                    p.reason
                )
            })
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "dangling.yaml dangling symbolic link (its target does not exist)",
                "loop-a.yaml symbolic link loop",
                "loop-b.yaml symbolic link loop",
            ]
        );
        assert_eq!(m.problems(), 3);
        assert_eq!(m.state().services.len(), 1, "the good file still counts");
        // Not reported again while nothing changes; still counted.
        let again = m.rescan();
        assert!(
            again.problems.is_empty() && !again.changed,
            "{:?}",
            again.problems
        );
        assert_eq!(m.problems(), 3);
        // Fixed: the count drops and the change is published.
        std::fs::remove_file(dir.join("dangling.yaml")).unwrap();
        std::fs::remove_file(dir.join("loop-a.yaml")).unwrap();
        std::fs::remove_file(dir.join("loop-b.yaml")).unwrap();
        let fixed = m.rescan();
        assert!(fixed.changed);
        assert_eq!(m.problems(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broken_documents_count_until_the_file_is_fixed() {
        let dir = scratch("docs");
        std::fs::write(dir.join("two.yaml"), format!("{SERVICE}---\nkind: [oops\n")).unwrap();
        let mut m = ManifestDir::new(&dir);
        let scan = m.rescan();
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(m.problems(), 1);
        assert_eq!(m.state().services.len(), 1);
        std::fs::write(dir.join("two.yaml"), SERVICE).unwrap();
        m.rescan();
        assert_eq!(m.problems(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
