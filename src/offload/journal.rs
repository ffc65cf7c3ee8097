//! The spool's fast path: each process appends the tasks it accepts to its own journal,
//! an append-only file of checksummed records in `SPOOL_DIR/journal/`, fsyncs it once
//! per group of submissions, and runs those tasks itself from memory. A task that
//! finishes gets a `done` record (not fsynced: a lost one means a second run, never a
//! lost task). SQLite holds everything else: tasks delayed for long, retries, the
//! dead-letter area, and the tasks of journals whose process died.
//!
//! # Files
//! A journal file (segment) is named after its owner's token (boot id, pid, process
//! start time, see [`super::spool::owner_token`]) and a sequence number. A process
//! starts a new segment when the current one passes [`SEGMENT_MAX`] and deletes a full
//! one when every task in it has finished. The runner of any process imports a
//! segment whose owner is gone into SQLite ([`import_dead`]): the tasks without a
//! `done` record become ordinary spool rows, in one transaction that also records the
//! segment's name, so a segment is never imported twice; then the file is deleted. A
//! stopping process imports its own unfinished tasks the same way.
//!
//! # Records
//! `MARK (4) | body length (4) | CRC-32 of the body (4) | body`, little-endian. The body
//! is a kind byte, then for a task: id (8), due time in Unix ms (8), name length (2),
//! name, payload; for `done`: ids (8 each). A record that fails its checksum is
//! reported and skipped (the reader looks for the next mark); a torn record at the end
//! is the tail of a write that never completed (its submissions were never
//! acknowledged) and is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::spool::{owner_alive, Spool, SpoolError};
use super::{MAX_NAME, MAX_PAYLOAD};

/// The journal directory inside the spool directory.
pub const DIR: &str = "journal";

/// A segment is closed for new records past this size.
pub const SEGMENT_MAX: u64 = 8 << 20;

const FILE_MAGIC: &[u8; 8] = b"FKJRNL01";
const MARK: u32 = 0x4B4A_4C46;
const HEADER: usize = 12;
const KIND_TASK: u8 = 1;
const KIND_DONE: u8 = 2;
/// The largest body a valid record can have.
const MAX_BODY: usize = 1 + 8 + 8 + 2 + MAX_NAME + MAX_PAYLOAD;

fn push_record(buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    body(buf);
    let len = buf.len() - start - HEADER;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&MARK.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a task record to `buf`.
pub fn encode_task(buf: &mut Vec<u8>, id: u64, run_at: i64, name: &str, payload: &[u8]) {
    push_record(buf, |b| {
        b.push(KIND_TASK);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&run_at.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(payload);
    });
}

/// Appends a `done` record for `ids` to `buf`.
pub fn encode_done(buf: &mut Vec<u8>, ids: &[u64]) {
    push_record(buf, |b| {
        b.push(KIND_DONE);
        for id in ids {
            b.extend_from_slice(&id.to_le_bytes());
        }
    });
}

/// A task read back from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalTask {
    pub id: u64,
    pub run_at: i64,
    pub name: String,
    pub payload: Bytes,
}

/// What a journal holds.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Tasks without a `done` record, in id order.
    pub open: Vec<JournalTask>,
    /// Tasks with one.
    pub done: u64,
    /// Damaged records that were skipped, with why.
    pub corrupt: Vec<String>,
    /// Bytes of an incomplete record at the end (a write cut short).
    pub torn: usize,
}

enum Body {
    Task(JournalTask),
    Done(Vec<u64>),
}

fn decode_body(body: &[u8]) -> Result<Body, String> {
    let (&kind, rest) = body.split_first().ok_or("empty record")?;
    let u64_at = |b: &[u8], at: usize| -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    };
    match kind {
        KIND_TASK => {
            if rest.len() < 18 {
                return Err("task record too short".into());
            }
            let id = u64_at(rest, 0);
            let run_at = u64_at(rest, 8) as i64;
            let name_len = u16::from_le_bytes([rest[16], rest[17]]) as usize;
            let rest = &rest[18..];
            if name_len == 0 || name_len > MAX_NAME || rest.len() < name_len {
                return Err(format!("task {id}: bad name length {name_len}"));
            }
            let name = std::str::from_utf8(&rest[..name_len])
                .map_err(|_| format!("task {id}: name is not UTF-8"))?;
            Ok(Body::Task(JournalTask {
                id,
                run_at,
                name: name.to_string(),
                payload: Bytes::copy_from_slice(&rest[name_len..]),
            }))
        }
        KIND_DONE if rest.len() % 8 == 0 => Ok(Body::Done(
            (0..rest.len() / 8).map(|i| u64_at(rest, i * 8)).collect(),
        )),
        KIND_DONE => Err("done record of a partial id".into()),
        k => Err(format!("unknown record kind {k}")),
    }
}

/// Reads a journal's bytes.
pub fn parse(data: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut tasks: BTreeMap<u64, JournalTask> = BTreeMap::new();
    let mut done: Vec<u64> = Vec::new();
    let mut at = 0;
    if data.len() >= FILE_MAGIC.len() && &data[..FILE_MAGIC.len()] == FILE_MAGIC {
        at = FILE_MAGIC.len();
    } else if !data.is_empty() {
        out.corrupt.push("missing journal header".into());
    }
    // After damage, look for the next mark.
    let resync = |from: usize| -> usize {
        data[from..]
            .windows(4)
            .position(|w| w == MARK.to_le_bytes())
            .map_or(data.len(), |p| from + p)
    };
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < HEADER {
            out.torn = rest.len();
            break;
        }
        let mark = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if mark != MARK || len > MAX_BODY {
            out.corrupt
                .push(format!("damaged record header at byte {at}; skipped"));
            at = resync(at + 1);
            continue;
        }
        if rest.len() < HEADER + len {
            out.torn = rest.len();
            break;
        }
        let body = &rest[HEADER..HEADER + len];
        if crc32fast::hash(body) != crc {
            out.corrupt
                .push(format!("checksum mismatch in record at byte {at}; skipped"));
            at = resync(at + 1);
            continue;
        }
        match decode_body(body) {
            Ok(Body::Task(t)) => {
                tasks.insert(t.id, t);
            }
            Ok(Body::Done(ids)) => done.extend(ids),
            Err(e) => out
                .corrupt
                .push(format!("record at byte {at}: {e}; skipped")),
        }
        at += HEADER + len;
    }
    for id in done {
        if tasks.remove(&id).is_some() {
            out.done += 1;
        }
    }
    out.open = tasks.into_values().collect();
    out
}

/// The file name of segment `seq` of `owner`.
fn segment_name(owner: &str, seq: u64) -> String {
    format!("{}.{seq:08}.log", owner.replace('/', "_"))
}

/// The owner token and sequence number in a segment's file name.
fn parse_segment_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(".log")?;
    let (owner, seq) = stem.rsplit_once('.')?;
    Some((owner.replace('_', "/"), seq.parse().ok()?))
}

/// Syncs a directory, so a file created or deleted in it stays so after a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One process's journal, as its writer thread keeps it.
pub struct Journal {
    dir: PathBuf,
    owner: String,
    file: File,
    seq: u64,
    size: u64,
    /// Every segment of this journal on disk, with its unfinished tasks; and the
    /// segment of each unfinished task.
    open_in: BTreeMap<u64, usize>,
    segment_of: HashMap<u64, u64>,
    /// `done` records not written yet.
    done: Vec<u64>,
}

/// The first sequence number free for `owner` in `dir` (a process that reopens its
/// journal after a clean stop, or a second engine in one process, starts past the
/// segments that exist).
fn next_seq(dir: &Path, owner: &str) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
        .filter(|(o, _)| o == owner)
        .map(|(_, s)| s + 1)
        .max()
        .unwrap_or(0)
}

impl Journal {
    /// Starts a new segment for `owner` in `spool_dir`'s journal directory.
    pub fn open(spool_dir: &Path, owner: &str) -> std::io::Result<Journal> {
        let dir = spool_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let seq = next_seq(&dir, owner);
        let file = Self::create(&dir, owner, seq)?;
        Ok(Journal {
            dir,
            owner: owner.to_string(),
            file,
            seq,
            size: FILE_MAGIC.len() as u64,
            open_in: BTreeMap::from([(seq, 0)]),
            segment_of: HashMap::new(),
            done: Vec::new(),
        })
    }

    fn create(dir: &Path, owner: &str, seq: u64) -> std::io::Result<File> {
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join(segment_name(owner, seq)))?;
        file.write_all(FILE_MAGIC)?;
        file.sync_data()?;
        sync_dir(dir)?;
        Ok(file)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(&self.owner, seq))
    }

    /// Tasks accepted and not finished.
    pub fn open_tasks(&self) -> usize {
        self.segment_of.len()
    }

    /// Writes `records` (task records for `ids`, from [`encode_task`]) after any
    /// pending `done` records, and syncs them to disk: when this returns `Ok` the tasks
    /// survive a crash of this process or of the machine.
    pub fn append(&mut self, records: &[u8], ids: &[u64]) -> std::io::Result<()> {
        if self.size >= SEGMENT_MAX {
            self.rotate()?;
        }
        let mut buf = self.take_done();
        buf.extend_from_slice(records);
        self.file.write_all(&buf)?;
        self.size += buf.len() as u64;
        self.file.sync_data()?;
        *self.open_in.entry(self.seq).or_default() += ids.len();
        for &id in ids {
            self.segment_of.insert(id, self.seq);
        }
        Ok(())
    }

    fn take_done(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        if !self.done.is_empty() {
            encode_done(&mut buf, &self.done);
            self.done.clear();
        }
        buf
    }

    /// Notes that task `id` finished (its outcome is recorded elsewhere if it failed).
    /// The record is written with the next append or [`Journal::flush`].
    pub fn finished(&mut self, id: u64) {
        let Some(seq) = self.segment_of.remove(&id) else {
            return;
        };
        self.done.push(id);
        if let Some(n) = self.open_in.get_mut(&seq) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sweep();
            }
        }
    }

    /// Deletes closed segments whose tasks all finished, oldest first, stopping at the
    /// first that still has one: a segment holds `done` records for older ones, so it
    /// must outlive them.
    fn sweep(&mut self) {
        while let Some((&seq, &n)) = self.open_in.first_key_value() {
            if n > 0 || seq == self.seq {
                break;
            }
            self.open_in.remove(&seq);
            let _ = std::fs::remove_file(self.path_of(seq));
        }
    }

    /// Writes pending `done` records (without a sync: losing them costs a second run).
    pub fn flush(&mut self) -> std::io::Result<()> {
        let buf = self.take_done();
        if !buf.is_empty() {
            self.file.write_all(&buf)?;
            self.size += buf.len() as u64;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush()?;
        let old = self.seq;
        self.file = Self::create(&self.dir, &self.owner, old + 1)?;
        self.seq = old + 1;
        self.size = FILE_MAGIC.len() as u64;
        self.open_in.insert(self.seq, 0);
        self.sweep();
        Ok(())
    }

    /// Moves this journal's unfinished tasks into SQLite and deletes its segments (a
    /// stopping process). Returns how many tasks moved.
    pub fn close_into(mut self, spool: &mut Spool) -> Result<ImportReport, SpoolError> {
        self.flush().map_err(io_err)?;
        let mut report = ImportReport::default();
        let segs: Vec<u64> = self.open_in.keys().copied().collect();
        for seq in segs {
            report.add(import_file(spool, &self.path_of(seq))?);
        }
        Ok(report)
    }
}

fn io_err(e: std::io::Error) -> SpoolError {
    SpoolError::Dir {
        path: PathBuf::from(DIR),
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

/// Imports one segment file into SQLite (once: the segment's name is recorded in the
/// same transaction), then deletes it.
fn import_file(spool: &mut Spool, path: &Path) -> Result<ImportReport, SpoolError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ImportReport::default()),
        Err(e) => return Err(io_err(e)),
    };
    let parsed = parse(&data);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let imported = spool.adopt_segment(&name, &parsed.open)?;
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = sync_dir(dir);
    }
    let mut corrupt: Vec<String> = parsed
        .corrupt
        .into_iter()
        .map(|c| format!("{name}: {c}"))
        .collect();
    if parsed.torn > 0 {
        corrupt.push(format!(
            "{name}: {} byte(s) of an incomplete last record (a write cut short; never acknowledged); dropped",
            parsed.torn
        ));
    }
    Ok(ImportReport {
        segments: 1,
        tasks: if imported {
            parsed.open.len() as u64
        } else {
            0
        },
        corrupt,
    })
}

/// Imports the journals of processes that are gone (not `me`) in `spool_dir`, through
/// a connection of its own with full sync (the files are deleted after).
pub fn import_dead(spool_dir: &Path, me: &str) -> Result<ImportReport, SpoolError> {
    let dir = spool_dir.join(DIR);
    let mut report = ImportReport::default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(report);
    };
    let mut dead: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            parse_segment_name(&e.file_name().to_string_lossy())
                .is_some_and(|(owner, _)| owner != me && !owner_alive(&owner))
        })
        .map(|e| e.path())
        .collect();
    if dead.is_empty() {
        return Ok(report);
    }
    dead.sort();
    let mut spool = Spool::open(spool_dir)?;
    for path in dead {
        report.add(import_file(&mut spool, &path)?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: u64) -> JournalTask {
        JournalTask {
            id,
            run_at: 1000 + id as i64,
            name: "t".into(),
            payload: Bytes::from(format!("payload {id}")),
        }
    }

    fn encode(tasks: &[JournalTask]) -> Vec<u8> {
        let mut b = FILE_MAGIC.to_vec();
        for t in tasks {
            encode_task(&mut b, t.id, t.run_at, &t.name, &t.payload);
        }
        b
    }

    #[test]
    fn records_round_trip_and_done_closes_tasks() {
        let mut b = encode(&[task(1), task(2), task(3)]);
        encode_done(&mut b, &[2, 99]);
        let p = parse(&b);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!((p.done, p.torn), (1, 0));
        assert!(p.corrupt.is_empty());
    }

    #[test]
    fn a_torn_tail_is_dropped_and_damage_is_skipped() {
        let whole = encode(&[task(1), task(2), task(3)]);
        // Cut inside the last record: the first two survive.
        let cut = &whole[..whole.len() - 3];
        let p = parse(cut);
        assert_eq!(p.open, vec![task(1), task(2)]);
        assert!(p.torn > 0 && p.corrupt.is_empty());
        // A flipped payload byte in the middle record: it is skipped, the rest read.
        let mut bad = whole.clone();
        let at = bad
            .windows(9)
            .position(|w| w == b"payload 2")
            .expect("payload");
        bad[at] ^= 0xff;
        let p = parse(&bad);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!(p.corrupt.len(), 1, "{:?}", p.corrupt);
        // A damaged length: resynchronised at the next record.
        let mut bad = whole;
        let second = FILE_MAGIC.len() + HEADER + 1 + 8 + 8 + 2 + 1 + "payload 1".len();
        bad[second + 4] = 0xff;
        bad[second + 7] = 0x7f;
        let p = parse(&bad);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!(p.corrupt.len(), 1, "{:?}", p.corrupt);
        // Garbage is reported, not a crash.
        let p = parse(&[0x5a; 100]);
        assert!(p.open.is_empty() && !p.corrupt.is_empty());
    }

    #[test]
    fn segment_names_carry_the_owner() {
        let owner = "8f1e-22/1234/99887";
        let name = segment_name(owner, 7);
        assert_eq!(parse_segment_name(&name), Some((owner.to_string(), 7)));
        assert_eq!(parse_segment_name("spool.db"), None);
    }
}
