//! The spool's journal: the per-process file of the tasks that process runs.
//!
//! The spool's fast path: each process appends the tasks it accepts to its own journal,
//! an append-only file of checksummed records in `SPOOL_DIR/journal/`, fsyncs it once
//! per group of submissions, and runs those tasks itself from memory. A task that
//! finishes gets a `done` record (not fsynced: a lost one means a second run, never a
//! lost task). SQLite holds everything else: tasks delayed for long, retries, the
//! dead-letter area, and the tasks of journals whose process died.
//!
//! # Files
//! A journal file (segment) is named after its owner's token (boot id, pid, process
//! start time, see [`super::owner::owner_token`]) and a sequence number. Segments are
//! filled with zeros ahead of the writes, a megabyte at a time: overwriting blocks that
//! exist lets `fdatasync` flush just the data, where appending would also commit the
//! file system's metadata (about 40% longer per sync on ext4 here). A process starts a
//! new segment when the current one passes [`SEGMENT_MAX`]; a segment whose tasks have
//! all finished (and all older ones) is emptied (a fresh salt in its header) and kept as
//! the next segment, or deleted.
//!
//! The runner of any process imports the segments of a process that is gone into
//! SQLite (`super::recovery`): the tasks without a `done` record (in any of its segments)
//! become ordinary spool rows, in one transaction that also records the segments'
//! names, so none is imported twice; then the files are deleted. A stopping process
//! imports its own unfinished tasks the same way.
//!
//! # Records
//! A segment starts with a header: magic (8), salt (4), zero (4). Then records:
//! `MARK (4) | body length (4) | CRC-32 of salt and body (4) | body`, little-endian. The
//! body is a kind byte, then for a task: id (8), due time in Unix ms (8), name length
//! (2), name, payload; for `done`: ids (8 each). The log ends at zeros, or at a record
//! that does not check out with no good record after it (the tail of a write cut short,
//! never acknowledged, or an older use of the file). A damaged record followed by good
//! ones is reported and skipped.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::offload::task::{MAX_NAME, MAX_PAYLOAD};

/// The journal directory inside the spool directory.
pub const DIR: &str = "journal";

/// A segment is closed for new records past this size.
pub const SEGMENT_MAX: u64 = 8 << 20;

const FILE_MAGIC: &[u8; 8] = b"FKJRNL02";
/// Magic, salt, zero.
const FILE_HEADER: usize = 16;
const MARK: u32 = 0x4B4A_4C46;
const HEADER: usize = 12;
/// Zeros are written this far ahead of the records.
const PREPARE: u64 = 1 << 20;
const KIND_TASK: u8 = 1;
const KIND_DONE: u8 = 2;
/// The largest body a valid record can have.
const MAX_BODY: usize = 1 + 8 + 8 + 2 + MAX_NAME + MAX_PAYLOAD;

fn crc(salt: u32, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn push_record(buf: &mut Vec<u8>, salt: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    body(buf);
    let len = buf.len() - start - HEADER;
    let crc = crc(salt, &buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&MARK.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a task record for a segment salted `salt` to `buf`.
pub fn encode_task(buf: &mut Vec<u8>, salt: u32, id: u64, run_at: i64, name: &str, payload: &[u8]) {
    push_record(buf, salt, |b| {
        b.push(KIND_TASK);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&run_at.to_le_bytes());
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(payload);
    });
}

/// Appends a `done` record for `ids` to `buf`.
pub fn encode_done(buf: &mut Vec<u8>, salt: u32, ids: &[u64]) {
    push_record(buf, salt, |b| {
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

/// The file header for `salt`.
fn file_header(salt: u32) -> [u8; FILE_HEADER] {
    let mut h = [0u8; FILE_HEADER];
    h[..8].copy_from_slice(FILE_MAGIC);
    h[8..12].copy_from_slice(&salt.to_le_bytes());
    h
}

/// A good record at `at`: its body.
fn record_at(data: &[u8], at: usize, salt: u32) -> Option<&[u8]> {
    let rest = data.get(at..)?;
    if rest.len() < HEADER {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().expect("4 bytes"));
    let (mark, len, sum) = (word(0), word(4) as usize, word(8));
    if mark != MARK || len > MAX_BODY || rest.len() < HEADER + len {
        return None;
    }
    let body = &rest[HEADER..HEADER + len];
    (crc(salt, body) == sum).then_some(body)
}

/// Where the next good record after `from` starts, if any.
fn next_good(data: &[u8], from: usize, salt: u32) -> Option<usize> {
    let mark = MARK.to_le_bytes();
    let mut at = from;
    while let Some(p) = data.get(at..)?.windows(4).position(|w| w == mark) {
        if record_at(data, at + p, salt).is_some() {
            return Some(at + p);
        }
        at += p + 1;
    }
    None
}

/// Reads segments' bytes (all the segments of one process: a `done` record may be in a
/// later segment than its task).
pub fn parse<'a>(segments: impl IntoIterator<Item = &'a [u8]>) -> Parsed {
    let mut out = Parsed::default();
    let mut tasks: BTreeMap<u64, JournalTask> = BTreeMap::new();
    let mut done: Vec<u64> = Vec::new();
    for data in segments {
        if data.len() < FILE_HEADER || &data[..8] != FILE_MAGIC {
            if data.iter().any(|&b| b != 0) {
                out.corrupt
                    .push("not a journal (bad header); skipped".into());
            }
            continue;
        }
        let salt = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        let mut at = FILE_HEADER;
        while at + HEADER <= data.len() {
            if data[at..at + HEADER].iter().all(|&b| b == 0) {
                break; // The end: zeros written ahead.
            }
            let Some(body) = record_at(data, at, salt) else {
                match next_good(data, at + 1, salt) {
                    Some(next) => {
                        out.corrupt
                            .push(format!("damaged record at byte {at}; skipped"));
                        at = next;
                        continue;
                    }
                    // Nothing good after: a write cut short, or an earlier use.
                    None => break,
                }
            };
            match decode_body(body) {
                Ok(Body::Task(t)) => {
                    tasks.insert(t.id, t);
                }
                Ok(Body::Done(ids)) => done.extend(ids),
                Err(e) => out
                    .corrupt
                    .push(format!("record at byte {at}: {e}; skipped")),
            }
            at += HEADER + body.len();
        }
    }
    for id in done {
        if tasks.remove(&id).is_some() {
            out.done += 1;
        }
    }
    out.open = tasks.into_values().collect();
    out
}

fn random_salt() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

/// The file name of segment `seq` of `owner`.
fn segment_name(owner: &str, seq: u64) -> String {
    format!("{}.{seq:08}.log", owner.replace('/', "_"))
}

/// The owner token and sequence number in a segment's file name.
pub fn parse_segment_name(name: &str) -> Option<(String, u64)> {
    let stem = name.strip_suffix(".log")?;
    let (owner, seq) = stem.rsplit_once('.')?;
    Some((owner.replace('_', "/"), seq.parse().ok()?))
}

/// Syncs a directory, so a file created or deleted in it stays so after a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One process's journal, as its writer thread keeps it.
pub struct Journal {
    dir: PathBuf,
    owner: String,
    file: File,
    seq: u64,
    salt: u32,
    /// Where the next record goes.
    offset: u64,
    /// Zeros are written up to here.
    prepared: u64,
    /// Every segment of this journal on disk, with its unfinished tasks; and the
    /// segment of each unfinished task.
    open_in: BTreeMap<u64, usize>,
    segment_of: HashMap<u64, u64>,
    /// An emptied segment kept for reuse.
    spare: Option<PathBuf>,
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
        let salt = random_salt();
        let (file, prepared) = Self::create(&dir, &dir.join(segment_name(owner, seq)), salt, None)?;
        Ok(Journal {
            dir,
            owner: owner.to_string(),
            file,
            seq,
            salt,
            offset: FILE_HEADER as u64,
            prepared,
            open_in: BTreeMap::from([(seq, 0)]),
            segment_of: HashMap::new(),
            spare: None,
            done: Vec::new(),
        })
    }

    /// Makes segment file `path` with an empty log salted `salt`: from `spare` (an
    /// emptied segment, renamed) if given, else a new file. Returns it and how far it
    /// is filled.
    fn create(
        dir: &Path,
        path: &Path,
        salt: u32,
        spare: Option<PathBuf>,
    ) -> std::io::Result<(File, u64)> {
        if let Some(spare) = spare {
            if std::fs::rename(&spare, path).is_ok() {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)?;
                file.write_all_at(&file_header(salt), 0)?;
                file.sync_data()?;
                sync_dir(dir)?;
                let len = file.metadata()?.len();
                return Ok((file, len));
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all_at(&file_header(salt), 0)?;
        let prepared = Self::prepare(&file, FILE_HEADER as u64, FILE_HEADER as u64 + PREPARE)?;
        file.sync_data()?;
        sync_dir(dir)?;
        Ok((file, prepared))
    }

    /// Writes zeros from `from` up to `to` (rounded up to whole megabytes).
    fn prepare(file: &File, from: u64, to: u64) -> std::io::Result<u64> {
        let end = to.div_ceil(PREPARE) * PREPARE;
        let zeros = vec![0u8; PREPARE as usize];
        let mut at = from;
        while at < end {
            let n = (end - at).min(PREPARE);
            file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        Ok(end)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(segment_name(&self.owner, seq))
    }

    /// Tasks accepted and not finished.
    pub fn open_tasks(&self) -> usize {
        self.segment_of.len()
    }

    /// Writes task records (id, due time, name, payload), after any pending `done`
    /// records, and syncs them to disk: when this returns `Ok` the tasks survive a
    /// crash of this process or of the machine.
    pub fn append(&mut self, tasks: &[(u64, i64, &str, &[u8])]) -> std::io::Result<()> {
        if self.offset >= SEGMENT_MAX {
            self.rotate()?;
        }
        let mut buf = self.take_done();
        for &(id, run_at, name, payload) in tasks {
            encode_task(&mut buf, self.salt, id, run_at, name, payload);
        }
        self.write(&buf)?;
        self.file.sync_data()?;
        *self.open_in.entry(self.seq).or_default() += tasks.len();
        for t in tasks {
            self.segment_of.insert(t.0, self.seq);
        }
        Ok(())
    }

    /// Writes at the end of the log, zero-filling ahead first when needed.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let end = self.offset + buf.len() as u64;
        if end + HEADER as u64 > self.prepared {
            self.prepared = Self::prepare(&self.file, self.prepared, end + PREPARE)?;
        }
        self.file.write_all_at(buf, self.offset)?;
        self.offset = end;
        Ok(())
    }

    fn take_done(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        if !self.done.is_empty() {
            encode_done(&mut buf, self.salt, &self.done);
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

    /// Empties closed segments whose tasks all finished, oldest first, stopping at the
    /// first that still has one (a segment holds `done` records for older ones, so it
    /// must outlive them). One is kept as the next segment, the others deleted.
    fn sweep(&mut self) {
        while let Some((&seq, &n)) = self.open_in.first_key_value() {
            if n > 0 || seq == self.seq {
                break;
            }
            self.open_in.remove(&seq);
            let path = self.path_of(seq);
            // A fresh salt hides every record in it, at once and for good.
            let emptied = self.spare.is_none()
                && std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.write_all_at(&file_header(random_salt()), 0)?;
                        f.sync_data()
                    })
                    .is_ok();
            if emptied {
                self.spare = Some(path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Writes pending `done` records (without a sync: losing them costs a second run).
    pub fn flush(&mut self) -> std::io::Result<()> {
        let buf = self.take_done();
        if !buf.is_empty() {
            self.write(&buf)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.flush()?;
        let seq = self.seq + 1;
        let salt = random_salt();
        let (file, prepared) =
            Self::create(&self.dir, &self.path_of(seq), salt, self.spare.take())?;
        self.file = file;
        self.prepared = prepared;
        self.seq = seq;
        self.salt = salt;
        self.offset = FILE_HEADER as u64;
        self.open_in.insert(seq, 0);
        self.sweep();
        Ok(())
    }

    /// Stops writing (a stopping process): writes what is pending, deletes the spare
    /// segment, and returns the segments still on disk, for `super::recovery` to
    /// move their unfinished tasks into SQLite.
    pub fn close(mut self) -> std::io::Result<Vec<PathBuf>> {
        self.flush()?;
        if let Some(spare) = self.spare.take() {
            let _ = std::fs::remove_file(spare);
        }
        Ok(self.open_in.keys().map(|&s| self.path_of(s)).collect())
    }
}

/// The segment files in `spool_dir`'s journal directory whose owner `keep` accepts,
/// by owner (a process's files are read together: a `done` record may be in a later
/// file than its task).
pub fn segments_by_owner(
    spool_dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut by_owner: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(spool_dir.join(DIR)) else {
        return by_owner;
    };
    for e in entries.flatten() {
        if let Some((owner, _)) = parse_segment_name(&e.file_name().to_string_lossy()) {
            if keep(&owner) {
                by_owner.entry(owner).or_default().push(e.path());
            }
        }
    }
    by_owner
}

/// Counts the unfinished tasks in every journal in `spool_dir`.
pub fn count_open(spool_dir: &Path) -> u64 {
    segments_by_owner(spool_dir, |_| true)
        .values()
        .map(|paths| {
            let files: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
            parse(files.iter().map(Vec::as_slice)).open.len() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u32 = 0x1234_5678;

    fn task(id: u64) -> JournalTask {
        JournalTask {
            id,
            run_at: 1000 + id as i64,
            name: "t".into(),
            payload: Bytes::from(format!("payload {id}")),
        }
    }

    fn encode(tasks: &[JournalTask]) -> Vec<u8> {
        let mut b = file_header(SALT).to_vec();
        for t in tasks {
            encode_task(&mut b, SALT, t.id, t.run_at, &t.name, &t.payload);
        }
        b
    }

    fn one(data: &[u8]) -> Parsed {
        parse([data])
    }

    #[test]
    fn records_round_trip_and_done_closes_tasks_across_segments() {
        let mut a = encode(&[task(1), task(2), task(3)]);
        encode_done(&mut a, SALT, &[2, 99]);
        a.extend_from_slice(&[0u8; 4096]);
        let p = one(&a);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!(p.done, 1);
        assert!(p.corrupt.is_empty(), "{:?}", p.corrupt);
        // A later segment (another salt) closes a task of the first.
        let mut b = file_header(7).to_vec();
        encode_done(&mut b, 7, &[3]);
        let p = parse([&a[..], &b[..]]);
        assert_eq!(p.open, vec![task(1)]);
    }

    #[test]
    fn a_cut_write_ends_the_log_and_damage_is_skipped() {
        let whole = encode(&[task(1), task(2), task(3)]);
        // Cut inside the last record, then zeros: the first two survive, silently.
        let mut cut = whole[..whole.len() - 3].to_vec();
        cut.extend_from_slice(&[0u8; 64]);
        let p = one(&cut);
        assert_eq!(p.open, vec![task(1), task(2)]);
        assert!(p.corrupt.is_empty());
        // A flipped payload byte in the middle record: it is reported and skipped.
        let mut bad = whole.clone();
        let at = bad
            .windows(9)
            .position(|w| w == b"payload 2")
            .expect("payload");
        bad[at] ^= 0xff;
        let p = one(&bad);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!(p.corrupt.len(), 1, "{:?}", p.corrupt);
        // A damaged length: found again at the next record.
        let mut bad = whole.clone();
        let second = FILE_HEADER + HEADER + 1 + 8 + 8 + 2 + 1 + "payload 1".len();
        bad[second + 7] = 0x7f;
        let p = one(&bad);
        assert_eq!(p.open, vec![task(1), task(3)]);
        assert_eq!(p.corrupt.len(), 1, "{:?}", p.corrupt);
        // Records of an earlier use of the file (another salt) are not read.
        let mut reused = file_header(SALT ^ 1).to_vec();
        reused.extend_from_slice(&whole[FILE_HEADER..]);
        let p = one(&reused);
        assert!(p.open.is_empty() && p.corrupt.is_empty());
        // Garbage is reported, not a crash.
        let p = one(&[0x5a; 100]);
        assert!(p.open.is_empty() && !p.corrupt.is_empty());
    }

    #[test]
    fn segment_names_carry_the_owner() {
        let owner = "8f1e-22/1234/99887";
        let name = segment_name(owner, 7);
        assert_eq!(parse_segment_name(&name), Some((owner.to_string(), 7)));
        assert_eq!(parse_segment_name("spool.db"), None);
    }

    #[test]
    fn a_journal_rotates_and_reuses_segments() {
        let dir = std::env::temp_dir().join(format!("forklift-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let owner = "boot/1/2";
        let mut j = Journal::open(&dir, owner).unwrap();
        let big = vec![b'x'; 60_000];
        let mut id = 0;
        let mut first_open = None;
        // Enough tasks to fill several segments; all but one finish.
        while j.seq < 3 {
            id += 1;
            j.append(&[(id, 0, "t", &big[..])]).unwrap();
            if id == 1 {
                first_open = Some(id);
            } else {
                j.finished(id);
            }
        }
        let files = |d: &Path| std::fs::read_dir(d.join(DIR)).unwrap().count();
        // Segment 0 holds the open task, so it and every later one stay.
        assert_eq!(files(&dir), 4);
        j.finished(first_open.unwrap());
        j.flush().unwrap();
        // Now all closed segments go: one kept as a spare, the others deleted.
        assert_eq!(files(&dir), 2);
        id += 1;
        j.append(&[(id, 0, "t", b"left")]).unwrap();
        j.flush().unwrap();
        assert_eq!(count_open(&dir), 1);
        // Closing deletes the spare and names the segment still holding a task.
        let left = j.close().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(files(&dir), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
