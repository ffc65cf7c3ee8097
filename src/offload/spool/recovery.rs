//! Recovery: imports the unfinished tasks of journals into SQLite.
//!
//! A runner imports the journals of processes that are gone ([`import_dead`]); a
//! stopping process moves its own ([`close_into`]). Each import records the segments'
//! names in the same transaction as the tasks, so none is imported twice, then deletes
//! the files; any runner then claims the tasks.

use std::path::{Path, PathBuf};

use super::journal::{self, Journal};
use super::owner::owner_alive;
use super::store::Spool;
use crate::offload::error::SpoolError;

/// Moves `journal`'s unfinished tasks into SQLite and deletes its segments (a stopping
/// process). Returns how many tasks moved.
pub fn close_into(journal: Journal, spool: &mut Spool) -> Result<ImportReport, SpoolError> {
    let paths = journal.close().map_err(io_err)?;
    import_files(spool, &paths)
}

/// Imports the journals of processes that are gone (not `me`) in `spool_dir`, through
/// a connection of its own with full sync (the files are deleted after).
pub fn import_dead(spool_dir: &Path, me: &str) -> Result<ImportReport, SpoolError> {
    let mut report = ImportReport::default();
    let dead = journal::segments_by_owner(spool_dir, |owner| owner != me && !owner_alive(owner));
    if dead.is_empty() {
        return Ok(report);
    }
    let mut spool = Spool::open(spool_dir)?;
    for mut paths in dead.into_values() {
        paths.sort();
        report.add(import_files(&mut spool, &paths)?);
    }
    Ok(report)
}

fn io_err(e: std::io::Error) -> SpoolError {
    SpoolError::Dir {
        path: PathBuf::from(journal::DIR),
        source: e,
    }
}

/// What importing journals did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub segments: u64,
    /// Unfinished tasks moved into SQLite.
    pub tasks: u64,
    /// Damaged records skipped, with why.
    pub corrupt: Vec<String>,
}

impl ImportReport {
    fn add(&mut self, o: ImportReport) {
        self.segments += o.segments;
        self.tasks += o.tasks;
        self.corrupt.extend(o.corrupt);
    }
}

/// Imports the segment files of one process into SQLite (once: their names are
/// recorded in the same transaction), then deletes them.
fn import_files(spool: &mut Spool, paths: &[PathBuf]) -> Result<ImportReport, SpoolError> {
    let mut names = Vec::new();
    let mut data = Vec::new();
    for path in paths {
        match std::fs::read(path) {
            Ok(d) => {
                names.push(
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
                data.push(d);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    if names.is_empty() {
        return Ok(ImportReport::default());
    }
    let parsed = journal::parse(data.iter().map(Vec::as_slice));
    let imported = spool.adopt_segments(&names, &parsed.open)?;
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = paths[0].parent() {
        let _ = journal::sync_dir(dir);
    }
    Ok(ImportReport {
        segments: names.len() as u64,
        tasks: imported,
        corrupt: parsed
            .corrupt
            .into_iter()
            .map(|c| format!("of {}: {c}", names.join(", ")))
            .collect(),
    })
}

pub fn report_import(r: ImportReport) {
    for c in &r.corrupt {
        eprintln!("forklift: spool journal {c}");
    }
    if r.tasks > 0 {
        eprintln!(
            "forklift: spool: resumed {} unfinished task(s) from {} journal(s) of stopped processes",
            r.tasks, r.segments
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_a_journal_moves_what_is_left_into_sqlite() {
        let dir = std::env::temp_dir().join(format!("forklift-recovery-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spool = Spool::open(&dir).unwrap();
        let mut j = Journal::open(&dir, "boot/1/2").unwrap();
        j.append(&[(1, 0, "t", b"done"), (2, 0, "t", b"left")])
            .unwrap();
        j.finished(1);
        j.flush().unwrap();
        assert_eq!(journal::count_open(&dir), 1);
        let report = close_into(j, &mut spool).unwrap();
        assert_eq!(report.tasks, 1);
        let files = |d: &Path| std::fs::read_dir(d.join(journal::DIR)).unwrap().count();
        assert_eq!(files(&dir), 0);
        assert_eq!(spool.pending().unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
