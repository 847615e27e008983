//! The manifests directory as a source: every `*.yaml`, `*.yml` and
//! `*.json` file in it (not hidden, not in subdirectories), re-read when it
//! changes.
//!
//! A file that fails to parse as a whole keeps contributing what it held the
//! last time it parsed (a half-written file must not make Services vanish),
//! and the failure is reported; a document that fails inside a file is
//! reported and skipped while the file's other documents are used. A file
//! that is removed takes its objects with it.
//!
//! The view is kept up to date file by file: a changed file touches only
//! the objects whose content it changed, and the view it publishes says
//! which (a [`ViewDelta`]), as the API source's views do.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use crate::model::{ClusterState, KubeObject, ObjectKey};

use super::views::{Dirty, Touched, Views};

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

/// An object's kind and key: one file holds one object per kind and key
/// (a later document replacing an earlier one), and among files a later
/// one (by name) wins.
type ObjectId = (&'static str, ObjectKey);

struct FileState {
    stamp: Stamp,
    objects: BTreeMap<ObjectId, KubeObject>,
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
    files: BTreeMap<Arc<Path>, FileState>,
    /// The files defining each object, in name order (the last one wins).
    defined_in: BTreeMap<ObjectId, Vec<Arc<Path>>>,
    /// Every object as the winning file has it.
    state: ClusterState,
    views: Views,
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

/// What a directory entry named like a manifest is now.
enum Entry {
    File(Stamp),
    /// There, but cannot be read as a file (with why).
    Unusable(String),
    Gone,
}

fn look(path: &Path) -> Entry {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Entry::File(stamp(&m)),
        Ok(_) => Entry::Unusable("not a regular file".to_string()),
        // Neither it nor a link by that name: removed (or renamed away).
        Err(_) if std::fs::symlink_metadata(path).is_err() => Entry::Gone,
        Err(e) => Entry::Unusable(unreadable_reason(path, &e)),
    }
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
            defined_in: BTreeMap::new(),
            state: ClusterState::default(),
            views: Views::default(),
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
        let mut present: BTreeSet<PathBuf> = BTreeSet::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if is_manifest(&path) {
                self.refresh(&path, look(&path), &mut scan);
                present.insert(path);
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .map(|p| p.to_path_buf())
            .chain(self.unusable.keys().cloned())
            .filter(|p| !present.contains(p))
            .collect();
        for path in gone {
            self.refresh(&path, Entry::Gone, &mut scan);
        }
        // A new problem changes what the daemon reports, if not the objects.
        scan.changed |= self.problems() != problems_before;
        scan
    }

    /// Re-reads only `paths` (what file events named): a change costs its
    /// own files, not a stat of every file in the directory.
    pub fn rescan_paths<'a>(&mut self, paths: impl IntoIterator<Item = &'a Path>) -> Scan {
        let mut scan = Scan::default();
        let problems_before = self.problems();
        for path in paths {
            if path.parent() == Some(self.dir.as_path()) && is_manifest(path) {
                self.refresh(path, look(path), &mut scan);
            }
        }
        scan.changed |= self.problems() != problems_before;
        scan
    }

    /// Brings one directory entry up to date.
    fn refresh(&mut self, path: &Path, entry: Entry, scan: &mut Scan) {
        let st = match entry {
            Entry::File(st) => st,
            Entry::Unusable(reason) => {
                // Reported when it appears or its reason changes, not
                // every scan.
                if self.unusable.get(path) != Some(&reason) {
                    scan.problems.push(SourceProblem {
                        file: path.to_owned(),
                        reason: reason.clone(),
                    });
                    self.unusable.insert(path.to_owned(), reason);
                }
                self.forget(path, scan);
                return;
            }
            Entry::Gone => {
                self.unusable.remove(path);
                self.forget(path, scan);
                return;
            }
        };
        self.unusable.remove(path);
        if self.files.get(path).is_none_or(|f| f.stamp != st) {
            scan.changed = true;
            self.read_file(path, st, scan);
        }
    }

    /// A file that is gone (or unusable) takes its objects with it.
    fn forget(&mut self, path: &Path, scan: &mut Scan) {
        if let Some((key, old)) = self.files.remove_entry(path) {
            scan.changed = true;
            self.replace_objects(&key, old.objects, &BTreeMap::new());
        }
    }

    /// (Re)reads one changed file. One that cannot be read or parsed as a
    /// whole keeps what it held before; its stamp is remembered so the same
    /// broken content is not reported again on every scan.
    fn read_file(&mut self, path: &Path, st: Stamp, scan: &mut Scan) {
        let parsed = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| parse_manifest(path, &bytes).map_err(|e| e.to_string()));
        let (key, old) = match self.files.remove_entry(path) {
            Some((key, f)) => (key, Some(f)),
            None => (Arc::from(path), None),
        };
        let state = match parsed {
            Ok(parsed) => {
                let objects: BTreeMap<ObjectId, KubeObject> = parsed
                    .objects
                    .into_iter()
                    .filter_map(|p| match p {
                        ParsedObject::Object(o) => Some(((o.kind(), o.key()?), o)),
                        ParsedObject::Ignored { .. } => None,
                    })
                    .collect();
                let problems = parsed.errors.len();
                for problem in parsed.errors {
                    scan.problems.push(SourceProblem {
                        file: path.to_owned(),
                        reason: problem.to_string(),
                    });
                }
                let before = old.map(|f| f.objects).unwrap_or_default();
                self.replace_objects(&key, before, &objects);
                FileState {
                    stamp: st,
                    objects,
                    problems,
                }
            }
            Err(why) => {
                scan.problems.push(SourceProblem {
                    file: path.to_owned(),
                    reason: format!("{why} (keeping what the file held before)"),
                });
                FileState {
                    stamp: st,
                    objects: old.map(|f| f.objects).unwrap_or_default(),
                    problems: 1,
                }
            }
        };
        self.files.insert(key, state);
    }

    /// The file `path` held `before` and now holds `after` (not yet in
    /// `files`): the objects whose content changed are resolved again.
    fn replace_objects(
        &mut self,
        path: &Arc<Path>,
        before: BTreeMap<ObjectId, KubeObject>,
        after: &BTreeMap<ObjectId, KubeObject>,
    ) {
        let mut touched = Vec::new();
        for (id, old) in &before {
            match after.get(id) {
                Some(new) if new == old => {}
                Some(_) => touched.push(id.clone()),
                None => {
                    if let Some(files) = self.defined_in.get_mut(id) {
                        files.retain(|p| p != path);
                        if files.is_empty() {
                            self.defined_in.remove(id);
                        }
                    }
                    touched.push(id.clone());
                }
            }
        }
        for id in after.keys() {
            if !before.contains_key(id) {
                let files = self.defined_in.entry(id.clone()).or_default();
                if let Err(i) = files.binary_search(path) {
                    files.insert(i, path.clone());
                }
                touched.push(id.clone());
            }
        }
        for id in touched {
            let winner = self.defined_in.get(&id).and_then(|files| files.last());
            let object = winner.and_then(|p| {
                if p == path {
                    after.get(&id)
                } else {
                    self.files.get(p).and_then(|f| f.objects.get(&id))
                }
            });
            match object {
                Some(o) => {
                    self.state.insert(o.clone());
                }
                None => {
                    self.state.remove(id.0, &id.1);
                }
            }
            let (kind, key) = id;
            self.views.note(match kind {
                "Service" => Dirty::Service(Touched::Key(key)),
                "EndpointSlice" => Dirty::EndpointSlice(Touched::Key(key)),
                "Endpoints" => Dirty::Endpoints(Touched::Key(key)),
                _ => Dirty::Node(Touched::Key(key.name.to_string())),
            });
        }
    }

    /// Files and documents that cannot be used right now.
    pub fn problems(&self) -> usize {
        self.unusable.len() + self.files.values().map(|f| f.problems).sum::<usize>()
    }

    /// Every object from every file (a later file wins for the same object).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The state as an immutable view to publish, numbered and with what
    /// changed since the last one.
    pub fn view(&mut self) -> Arc<ClusterState> {
        self.views.publish(&self.state)
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

    fn web(ip: &str) -> String {
        SERVICE.replace("10.96.0.10", ip)
    }

    fn web_ip(m: &ManifestDir) -> Option<String> {
        m.state()
            .services
            .get(&ObjectKey::new("default", "web"))
            .and_then(|s| s.cluster_ip())
            .map(|ip| ip.to_string())
    }

    #[test]
    fn the_last_file_wins_and_each_view_lists_what_changed() {
        let dir = scratch("winner");
        let db = "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n  - port: 5432\n";
        std::fs::write(dir.join("a.yaml"), format!("{}---\n{db}", web("10.96.0.1"))).unwrap();
        let mut m = ManifestDir::new(&dir);
        m.rescan();
        let first = m.view();
        assert_eq!((first.id, &first.delta), (1, &None));
        assert_eq!(first.services.len(), 2);
        // A later file overrides web only.
        std::fs::write(dir.join("b.yaml"), web("10.96.0.2")).unwrap();
        assert!(m.rescan().changed);
        assert_eq!(web_ip(&m).as_deref(), Some("10.96.0.2"));
        let second = m.view();
        let d = second.delta.clone().unwrap();
        let only_web: BTreeSet<_> = [ObjectKey::new("default", "web")].into();
        assert_eq!((d.from, d.services.as_ref()), (1, Some(&only_web)));
        // The earlier file changes its web: the later one still wins, and
        // db, untouched, keeps its allocation.
        let db_before = second.services[&ObjectKey::new("default", "db")].clone();
        std::fs::write(dir.join("a.yaml"), format!("{}---\n{db}", web("10.96.0.3"))).unwrap();
        m.rescan();
        assert_eq!(web_ip(&m).as_deref(), Some("10.96.0.2"));
        let third = m.view();
        assert!(Arc::ptr_eq(
            &db_before,
            &third.services[&ObjectKey::new("default", "db")]
        ));
        // Removing the later file brings the earlier one's web back.
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        assert!(m.rescan().changed);
        assert_eq!(web_ip(&m).as_deref(), Some("10.96.0.3"));
        let fourth = m.view();
        assert_eq!(
            fourth.delta.as_ref().unwrap().services.as_ref(),
            Some(&only_web)
        );
        // The state always equals a rebuild from every file.
        let rebuilt =
            ClusterState::from_objects(m.files.values().flat_map(|f| f.objects.values().cloned()));
        assert_eq!(rebuilt.services, m.state().services);
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        m.rescan();
        assert!(m.state().services.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn named_paths_are_read_alone_and_others_wait_for_the_full_scan() {
        let dir = scratch("named");
        let mut m = ManifestDir::new(&dir);
        m.rescan();
        std::fs::write(dir.join("web.yaml"), web("10.96.0.1")).unwrap();
        std::fs::write(dir.join("db.yaml"), web("10.96.0.2").replace("web", "db")).unwrap();
        let outside = std::env::temp_dir().join("sluice-named-outside.yaml");
        std::fs::write(&outside, web("10.96.0.9")).unwrap();
        let scan = m.rescan_paths([dir.join("web.yaml").as_path(), outside.as_path()]);
        assert!(scan.changed);
        assert_eq!(web_ip(&m).as_deref(), Some("10.96.0.1"));
        assert_eq!(m.state().services.len(), 1, "db.yaml was not named");
        std::fs::remove_file(dir.join("web.yaml")).unwrap();
        assert!(m.rescan_paths([dir.join("web.yaml").as_path()]).changed);
        assert_eq!(web_ip(&m), None);
        assert!(m.rescan().changed);
        assert_eq!(m.state().services.len(), 1, "the full scan finds db.yaml");
        std::fs::remove_file(outside).unwrap();
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
