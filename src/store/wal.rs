//! The commit log: what makes a group commit durable, instead of a sled flush.
//!
//! Every write to a store tree (see `tree.rs`) is applied to sled in memory and appended, as
//! its after-image (tree, key, new value or removal), to this log's pending frames. A group
//! commit seals the pending frames into one *group*, writes it at the end of the current
//! segment file (`wal/<n>.log`) and `fdatasync`s it: one `write` and one sync per commit, where a
//! sled flush hands its write to sled's IO pool (waking all 7 of its idle threads with
//! `notify_all`) and syncs a larger file — 258–315 µs a commit on the development VM against
//! ~70–100 µs here (issue 16). sled still persists everything on its own (its flusher runs every
//! [`super::SLED_FLUSH_EVERY_MS`]); the log only has to cover what sled has not persisted yet.
//!
//! **Why recovery is exact.** sled recovers a prefix of its operations, but that prefix may
//! end before or after the log's durable end, and replaying after-images on top of a sled state
//! that is *ahead* of the log would revert the keys written after the log's end while keeping
//! the other writes made then: a state that never existed. So each group's end is marked in
//! sled itself: while the group is sealed, with every writer held off (all stripes, below),
//! the position after the group is inserted into `meta` (`commit_log_mark`). Every write in
//! the group came before that insert and every later write after it. On open:
//!
//! - sled's state holds the newest mark M it persisted, every write before M, and maybe some
//!   of the writes of the group after M (a prefix of them, by sled's own guarantee);
//! - the groups after M that the log holds whole (length and CRC check) are replayed in order;
//!   a torn last group (a crash mid-write; never acknowledged) ends the replay.
//!
//! If the log holds the group after M, replaying it (and any later one) overwrites every key
//! that group wrote, so the result is exactly the state at the end of the last whole group. If
//! it does not, sled's own prefix stands, and it holds every acknowledged write (they are all
//! before M). Either way the store opens in a state that existed, holding everything
//! acknowledged. Replay is idempotent; after it the store makes sled durable, marks the start
//! of a fresh segment and deletes the old ones, so a torn tail is never followed by more log.
//!
//! **Ordering.** Two writes to one key must reach sled and the log in the same order: each
//! write holds the stripe of its key (one of [`STRIPES`] mutexes) across the sled operation and
//! the append. A group is sealed under all stripes, which makes the mark a clean cut.
//!
//! **Space.** A segment is closed once it passes [`SEGMENT_BYTES`], and every
//! [`CHECKPOINT_EVERY`] if it holds anything; the next one starts with the next group. After
//! each rotation a checkpoint flushes sled (and `fdatasync`s its file: sled's flush alone ends
//! in `sync_file_range`), which makes the newest mark durable, then deletes every segment
//! before the mark's. So the log holds about a second of writes (at most a few segments).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Writers to different keys rarely wait on each other; sealing takes all of them.
pub const STRIPES: usize = 64;

/// A segment is closed once it holds this much; its space is freed at the next checkpoint.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// How often a segment that holds anything is closed (and deleted once sled holds it).
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The `meta` key of the newest group's end: segment number and offset, both u64 BE.
const MARK_KEY: &[u8] = b"commit_log_mark";

/// Each group starts with these 4 bytes, then the frames' length (u32 LE) and their CRC-32.
const GROUP_MAGIC: u32 = 0x5359_4c31;
const GROUP_HEADER: usize = 12;

const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_CLEAR: u8 = 3;

/// Where a group ends: the segment and the offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    segment: u64,
    offset: u64,
}

impl Position {
    fn encode(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.segment.to_be_bytes());
        out[8..].copy_from_slice(&self.offset.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Position> {
        let segment = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let offset = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Position { segment, offset })
    }
}

/// The segment groups are appended to (only the flusher writes; see [`CommitLog::commit`]).
struct Segment {
    number: u64,
    file: File,
    len: u64,
}

pub struct CommitLog {
    dir: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    /// sled's data file, `fdatasync`ed at checkpoints.
    sled_file: Option<File>,
    stripes: Box<[Mutex<()>]>,
    /// Frames appended since the last group, after room for the group's header.
    pending: Mutex<Vec<u8>>,
    segment: Mutex<Segment>,
    /// The oldest segment that may still exist on disk (checkpoints delete up to the mark's).
    oldest: AtomicU64,
    /// [`SEGMENT_BYTES`], smaller in tests.
    segment_bytes: u64,
    /// Set once a group's write failed: no later group is written.
    failed: std::sync::atomic::AtomicBool,
}

/// What opening replayed, for the start-up log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub groups: usize,
    pub writes: usize,
}

impl CommitLog {
    /// Opens the log in `dir` for `db`: replays what sled has not persisted (see the module
    /// doc), makes sled durable, and starts a fresh segment.
    pub fn open(
        dir: &Path,
        db: &sled::Db,
        sled_file: Option<File>,
    ) -> anyhow::Result<(Arc<CommitLog>, Replayed)> {
        Self::open_with(dir, db, sled_file, SEGMENT_BYTES)
    }

    fn open_with(
        dir: &Path,
        db: &sled::Db,
        sled_file: Option<File>,
        segment_bytes: u64,
    ) -> anyhow::Result<(Arc<CommitLog>, Replayed)> {
        std::fs::create_dir_all(dir)?;
        let meta = db.open_tree("meta")?;
        let mark = meta.get(MARK_KEY)?.and_then(|v| Position::decode(&v));
        let segments = list_segments(dir)?;
        let mut replayed = Replayed::default();
        let mut trees = HashMap::new();
        if let Some(mark) = mark {
            for &number in segments.iter().filter(|&&n| n >= mark.segment) {
                let bytes = std::fs::read(segment_path(dir, number))?;
                let from = if number == mark.segment {
                    mark.offset
                } else {
                    0
                };
                let whole = replay(db, &mut trees, &bytes, from as usize, &mut replayed)?;
                if !whole {
                    // A torn group ends the log: nothing after it was acknowledged.
                    break;
                }
            }
        }
        // The replayed writes (and the fresh segment's mark) durable in sled before any
        // segment goes: then nothing older is needed again.
        let next = segments
            .iter()
            .copied()
            .chain(mark.map(|m| m.segment))
            .max()
            .map_or(1, |n| n + 1);
        meta.insert(
            MARK_KEY,
            &Position {
                segment: next,
                offset: 0,
            }
            .encode(),
        )?;
        db.flush()?;
        if let Some(file) = &sled_file {
            file.sync_data()?;
        }
        for number in segments {
            remove_segment(dir, number)?;
        }
        let file = create_segment(dir, next)?;
        let log = CommitLog {
            dir: dir.to_owned(),
            db: db.clone(),
            meta,
            sled_file,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            pending: Mutex::new(new_buffer(0)),
            segment: Mutex::new(Segment {
                number: next,
                file,
                len: 0,
            }),
            oldest: AtomicU64::new(next),
            segment_bytes,
            failed: Default::default(),
        };
        let log = Arc::new(log);
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("sy-wal-timer".into())
            .spawn(move || CommitLog::checkpoint_timer(weak))?;
        Ok((log, replayed))
    }

    /// The stripe a write to `key` of `tree` holds across its sled operation and its append.
    pub fn stripe(&self, tree: &[u8], key: &[u8]) -> MutexGuard<'_, ()> {
        let index = (fnv1a(tree, key) % STRIPES as u64) as usize;
        lock(&self.stripes[index])
    }

    /// Every stripe, in order: no write is in flight while they are held.
    pub fn all_stripes(&self) -> Vec<MutexGuard<'_, ()>> {
        self.stripes.iter().map(lock).collect()
    }

    /// The stripes of several keys of one tree (a batch), in order, each once.
    pub fn stripes_of<'a>(
        &self,
        tree: &[u8],
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut indexes: Vec<usize> = keys
            .map(|k| (fnv1a(tree, k) % STRIPES as u64) as usize)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|i| lock(&self.stripes[i]))
            .collect()
    }

    /// Appends a write's after-image (`None`: removed). The caller holds the key's stripe.
    pub fn put(&self, tree: &[u8], key: &[u8], value: Option<&[u8]>) {
        let mut pending = lock(&self.pending);
        match value {
            Some(value) => {
                encode_frame(&mut pending, OP_PUT, tree, key, value);
            }
            None => encode_frame(&mut pending, OP_REMOVE, tree, key, &[]),
        }
    }

    /// Appends a whole tree's clearing. The caller holds every stripe.
    pub fn clear(&self, tree: &[u8]) {
        encode_frame(&mut lock(&self.pending), OP_CLEAR, tree, &[], &[]);
    }

    /// Makes every write appended so far durable: seals them into a group, marks its end in
    /// sled, writes the group and `fdatasync`s it. Called by one flusher at a time (and by the
    /// checkpoint timer; the segment's lock orders them).
    pub fn commit(self: &Arc<Self>) -> std::io::Result<()> {
        if let Some(rotated_to) = self.commit_group(false)? {
            let log = self.clone();
            std::thread::Builder::new()
                .name("sy-checkpoint".into())
                .spawn(move || log.checkpoint(rotated_to))?;
        }
        Ok(())
    }

    /// A commit that starts a new segment if `rotate` (and the current one holds anything) or
    /// the current one is full; answers the new segment's number if it did. After a failed
    /// write the log refuses every later group: one after a torn group would never be read.
    fn commit_group(&self, rotate: bool) -> std::io::Result<Option<u64>> {
        if self.failed.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "the commit log failed a write earlier",
            ));
        }
        let result = self.write_group(rotate);
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    fn write_group(&self, rotate: bool) -> std::io::Result<Option<u64>> {
        let mut segment = lock(&self.segment);
        let (mut group, rotated) = {
            let _all = self.all_stripes();
            let mut pending = lock(&self.pending);
            let empty = pending.len() == GROUP_HEADER;
            let rotated = (rotate && segment.len > 0) || segment.len >= self.segment_bytes;
            if empty && !rotated {
                return Ok(None);
            }
            let capacity = pending.capacity();
            let group = std::mem::replace(&mut *pending, new_buffer(capacity));
            drop(pending);
            if rotated {
                let number = segment.number + 1;
                *segment = Segment {
                    number,
                    file: create_segment(&self.dir, number)?,
                    len: 0,
                };
            }
            // A group's end is the mark (an empty one is not written: the mark is then the
            // new segment's start, where no write is pending either).
            let len = if empty { 0 } else { group.len() as u64 };
            let end = Position {
                segment: segment.number,
                offset: segment.len + len,
            };
            self.meta
                .insert(MARK_KEY, &end.encode())
                .map_err(std::io::Error::other)?;
            (if empty { None } else { Some(group) }, rotated)
        };
        if let Some(group) = &mut group {
            seal(group);
            segment.file.write_all(group)?;
            segment.file.sync_data()?;
            segment.len += group.len() as u64;
        }
        Ok(rotated.then_some(segment.number))
    }

    /// Every [`CHECKPOINT_EVERY`]: closes a segment that holds anything, so an idle store's log
    /// shrinks to nothing once sled holds it; ends with the log.
    fn checkpoint_timer(log: std::sync::Weak<CommitLog>) {
        loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            let Some(log) = log.upgrade() else {
                return;
            };
            match log.commit_group(true) {
                Ok(Some(rotated_to)) => log.checkpoint(rotated_to),
                Ok(None) => {}
                // The flusher reports the failure to the store's health when it meets it.
                Err(_) => return,
            }
        }
    }

    /// Deletes the segments before `current` once sled holds a mark in it durably; what fails
    /// here only leaves old segments for the next checkpoint.
    fn checkpoint(&self, current: u64) {
        if let Err(err) = self.delete_before(current) {
            tracing::warn!(error = %err, "commit log checkpoint failed; old segments stay until the next one");
        }
    }

    fn delete_before(&self, current: u64) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        if let Some(file) = &self.sled_file {
            file.sync_data()?;
        }
        let oldest = self.oldest.fetch_max(current, Ordering::AcqRel);
        for number in oldest..current {
            remove_segment(&self.dir, number)?;
        }
        sync_dir(&self.dir)
    }

    /// Bytes the log holds on disk now.
    pub fn size_on_disk(&self) -> u64 {
        list_segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| std::fs::metadata(segment_path(&self.dir, n)).ok())
            .map(|m| m.len())
            .sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these (a sled error is returned, an append cannot fail).
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty group with room for its header, sized like the last one (up to 1 MiB, so one
/// large group does not keep its buffer for good).
fn new_buffer(capacity: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(capacity.clamp(4096, 1 << 20));
    buffer.resize(GROUP_HEADER, 0);
    buffer
}

/// Fills in the group's header: magic, the frames' length, their CRC-32.
fn seal(group: &mut [u8]) {
    let frames = &group[GROUP_HEADER..];
    let len = frames.len() as u32;
    let crc = crc32fast::hash(frames);
    group[..4].copy_from_slice(&GROUP_MAGIC.to_le_bytes());
    group[4..8].copy_from_slice(&len.to_le_bytes());
    group[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// A frame: op, tree name (u8 length), key (u32 LE length), value (u32 LE length).
fn encode_frame(out: &mut Vec<u8>, op: u8, tree: &[u8], key: &[u8], value: &[u8]) {
    out.push(op);
    out.push(tree.len() as u8);
    out.extend_from_slice(tree);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// One decoded frame.
struct Frame<'a> {
    op: u8,
    tree: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
}

fn decode_frame<'a>(bytes: &mut &'a [u8]) -> Option<Frame<'a>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let op = take(bytes, 1)?[0];
    let tree_len = take(bytes, 1)?[0] as usize;
    let tree = take(bytes, tree_len)?;
    let key_len = len(bytes)?;
    let key = take(bytes, key_len)?;
    let value_len = len(bytes)?;
    let value = take(bytes, value_len)?;
    Some(Frame {
        op,
        tree,
        key,
        value,
    })
}

/// Applies the whole groups of `bytes` from `from` on; false when it stopped at a torn one.
fn replay(
    db: &sled::Db,
    trees: &mut HashMap<Vec<u8>, sled::Tree>,
    bytes: &[u8],
    from: usize,
    replayed: &mut Replayed,
) -> anyhow::Result<bool> {
    let mut at = from;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + GROUP_HEADER) else {
            return Ok(false);
        };
        let magic = u32::from_le_bytes(header[..4].try_into()?);
        let len = u32::from_le_bytes(header[4..8].try_into()?) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into()?);
        let start = at + GROUP_HEADER;
        let Some(mut frames) = bytes.get(start..start + len) else {
            return Ok(false);
        };
        if magic != GROUP_MAGIC || crc32fast::hash(frames) != crc {
            return Ok(false);
        }
        while !frames.is_empty() {
            let frame = decode_frame(&mut frames).ok_or_else(|| {
                anyhow::anyhow!("a commit log group passed its CRC but holds a malformed frame")
            })?;
            let tree = match trees.get(frame.tree) {
                Some(tree) => tree.clone(),
                None => {
                    let tree = db.open_tree(frame.tree)?;
                    trees.insert(frame.tree.to_vec(), tree.clone());
                    tree
                }
            };
            match frame.op {
                OP_PUT => {
                    tree.insert(frame.key, frame.value)?;
                }
                OP_REMOVE => {
                    tree.remove(frame.key)?;
                }
                OP_CLEAR => tree.clear()?,
                other => anyhow::bail!("a commit log frame has an unknown operation {other}"),
            }
            replayed.writes += 1;
        }
        replayed.groups += 1;
        at = start + len;
    }
    Ok(true)
}

fn fnv1a(tree: &[u8], key: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in tree.iter().chain(key) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016}.log"))
}

fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            name.to_str()?.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A new, empty segment whose directory entry is durable before any group in it is.
fn create_segment(dir: &Path, number: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(segment_path(dir, number))?;
    sync_dir(dir)?;
    Ok(file)
}

fn remove_segment(dir: &Path, number: u64) -> std::io::Result<()> {
    match std::fs::remove_file(segment_path(dir, number)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::tree::Tree;
    use super::*;

    /// A store's sled and log, with sled persisting nothing on its own (the tests say when).
    struct Open {
        db: sled::Db,
        log: Arc<CommitLog>,
        tree: Tree,
        replayed: Replayed,
    }

    fn open(dir: &Path, segment_bytes: u64) -> Open {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let (log, replayed) =
            CommitLog::open_with(&dir.join("wal"), &db, None, segment_bytes).unwrap();
        let tree = Tree::open(&db, &log, "t").unwrap();
        Open {
            db,
            log,
            tree,
            replayed,
        }
    }

    /// The data dir as a SIGKILL would leave it: its files as they are now, copied while the
    /// store is open.
    fn crash_image(dir: &Path) -> tempfile::TempDir {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), target).unwrap();
                }
            }
        }
        let image = tempfile::tempdir().unwrap();
        copy(dir, image.path());
        image
    }

    fn get(tree: &Tree, key: &str) -> Option<String> {
        tree.get(key)
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    #[test]
    fn acknowledged_writes_sled_had_not_persisted_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path(), SEGMENT_BYTES);
        live.tree.insert("a", "1").unwrap();
        live.tree.insert("b", "2").unwrap();
        live.tree.remove("b").unwrap();
        live.tree
            .update_and_fetch("c", |_| Some(b"3".to_vec()))
            .unwrap();
        live.log.commit().unwrap();
        let image = crash_image(dir.path());
        drop(live);

        let back = open(image.path(), SEGMENT_BYTES);
        assert_eq!(
            back.replayed,
            Replayed {
                groups: 1,
                writes: 4
            }
        );
        assert_eq!(get(&back.tree, "a").as_deref(), Some("1"));
        assert_eq!(get(&back.tree, "b"), None);
        assert_eq!(get(&back.tree, "c").as_deref(), Some("3"));
    }

    /// Replaying the log's after-images over a sled state that is ahead of it would put `k`
    /// back to `v1` while keeping `other`: a state that never existed. The mark says where
    /// sled's state stands in the log.
    #[test]
    fn a_sled_state_ahead_of_the_log_is_not_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path(), SEGMENT_BYTES);
        live.tree.insert("k", "v1").unwrap();
        live.log.commit().unwrap();
        live.tree.insert("k", "v2").unwrap();
        live.tree.insert("other", "x").unwrap();
        live.db.flush().unwrap();
        let image = crash_image(dir.path());
        drop(live);

        let back = open(image.path(), SEGMENT_BYTES);
        assert_eq!(back.replayed, Replayed::default());
        assert_eq!(get(&back.tree, "k").as_deref(), Some("v2"));
        assert_eq!(get(&back.tree, "other").as_deref(), Some("x"));
    }

    #[test]
    fn a_torn_last_group_ends_the_replay_and_the_log_goes_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path(), SEGMENT_BYTES);
        live.tree.insert("a", "1").unwrap();
        live.log.commit().unwrap();
        live.tree.insert("a", "2").unwrap();
        live.tree.insert("c", "3").unwrap();
        live.log.commit().unwrap();
        let image = crash_image(dir.path());
        drop(live);
        // The second group's last bytes never reached the disk.
        let segment = segment_path(&image.path().join("wal"), 1);
        let len = std::fs::metadata(&segment).unwrap().len();
        let file = OpenOptions::new().write(true).open(&segment).unwrap();
        file.set_len(len - 3).unwrap();

        let back = open(image.path(), SEGMENT_BYTES);
        assert_eq!(
            back.replayed,
            Replayed {
                groups: 1,
                writes: 1
            }
        );
        assert_eq!(get(&back.tree, "a").as_deref(), Some("1"));
        assert_eq!(get(&back.tree, "c"), None);
        // Later groups go to a fresh segment, and come back after another crash.
        back.tree.insert("d", "4").unwrap();
        back.log.commit().unwrap();
        let second = crash_image(image.path());
        drop(back);
        let again = open(second.path(), SEGMENT_BYTES);
        assert_eq!(
            again.replayed,
            Replayed {
                groups: 1,
                writes: 1
            }
        );
        assert_eq!(get(&again.tree, "a").as_deref(), Some("1"));
        assert_eq!(get(&again.tree, "d").as_deref(), Some("4"));
    }

    /// Segments rotate as they fill; a checkpoint deletes the old ones once sled holds what
    /// they covered, and a crash then still loses nothing.
    #[test]
    fn old_segments_go_once_sled_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path(), 1024);
        let value = "x".repeat(300);
        for i in 0..40 {
            live.tree
                .insert(format!("k{i:02}"), value.as_str())
                .unwrap();
            live.log.commit().unwrap();
        }
        let wal = dir.path().join("wal");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while list_segments(&wal).unwrap().len() > 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "old segments were never deleted: {:?}",
                list_segments(&wal).unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let image = crash_image(dir.path());
        drop(live);
        let back = open(image.path(), 1024);
        for i in 0..40 {
            assert_eq!(
                get(&back.tree, &format!("k{i:02}")).as_deref(),
                Some(value.as_str())
            );
        }
    }

    /// The stripes keep sled and the log in one order per key under racing writers: after a
    /// crash image, every key holds the value sled held.
    #[test]
    fn racing_writers_leave_the_log_in_sleds_order() {
        let dir = tempfile::tempdir().unwrap();
        let live = open(dir.path(), SEGMENT_BYTES);
        std::thread::scope(|s| {
            for w in 0..4 {
                let tree = &live.tree;
                s.spawn(move || {
                    for i in 0..500 {
                        tree.insert(format!("k{}", i % 7), format!("{w}-{i}").as_bytes())
                            .unwrap();
                    }
                });
            }
        });
        live.log.commit().unwrap();
        let expected: Vec<_> = (0..7).map(|k| get(&live.tree, &format!("k{k}"))).collect();
        let image = crash_image(dir.path());
        drop(live);
        let back = open(image.path(), SEGMENT_BYTES);
        assert_eq!(back.replayed.writes, 2000);
        let got: Vec<_> = (0..7).map(|k| get(&back.tree, &format!("k{k}"))).collect();
        assert_eq!(got, expected);
    }
}
