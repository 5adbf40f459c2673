//! The log on real O_DIRECT files: damage the file offline, reopen, check what survives.
//!
//! Method: append entries of assorted sizes through the io_uring backend, close the log,
//! then cut or corrupt the file with ordinary file IO (truncate mid-entry, zero a sector,
//! scribble garbage), reopen, and check that the intact prefix is all there, the torn
//! tail is cut, and damage in the middle is refused with its offset. Also: reading back
//! (values by offset and key, and a read for a key other than the one stored there),
//! walking backwards, suffix truncation, and a full filesystem (a small loop-mounted ext4
//! when running as root, which CI does).

use ocean_liner::ids::{LogIndex, Term};
use ocean_liner::storage::command::{self, CommandOp};
use ocean_liner::storage::engine::{Engine, EngineOptions};
use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::io::{Backend, BlockFile, FileReads, PAGE_SIZE};
use ocean_liner::storage::log::{
    HEADER_SIZE, HEADER_SLOT_SIZE, Log, LogError, LogOptions, LogReader, NewEntry, ValueCache,
    ValueRead, entry_size,
};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn options() -> LogOptions {
    LogOptions {
        prepare_chunk_bytes: 1 << 20,
        cache_bytes: 0,
        ..LogOptions::default()
    }
}

fn commands(i: u64, count: usize, value_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in 0..count {
        let key = format!("key-{i}-{c}");
        command::encode(
            &mut out,
            CommandOp::Set,
            i,
            c as u64,
            key.as_bytes(),
            &vec![i as u8; value_len],
        );
    }
    out
}

/// Writes `n` entries; returns each entry's (offset, size).
fn write_entries(path: &Path, n: u64) -> Vec<(u64, usize)> {
    write_entries_with(path, n, options())
}

/// Writes `n` entries into a log opened with `options`; returns each entry's (log
/// address, size).
fn write_entries_with(path: &Path, n: u64, options: LogOptions) -> Vec<(u64, usize)> {
    let (mut log, _) = Log::open(Arc::new(UringBackend), path, options).unwrap();
    let mut spans = Vec::new();
    for i in 1..=n {
        let count = 1 + (i as usize % 7) * 20;
        let cmds = commands(i, count, 100 + i as usize * 10);
        let offset = log.end_offset();
        log.append(&[NewEntry {
            term: Term(1 + i / 4),
            log_index: LogIndex(i),
            num_commands: count as u64,
            commands: &cmds,
        }])
        .unwrap();
        spans.push((offset, entry_size(cmds.len())));
    }
    spans
}

/// Walks the log backwards and checks it holds entries `n` down to 1.
fn check_walks_back(log: &mut Log, n: u64) {
    let back: Vec<u64> = log
        .walk_backward()
        .unwrap()
        .iter()
        .map(|h| h.log_index.get())
        .collect();
    assert_eq!(back, (1..=n).rev().collect::<Vec<_>>());
}

fn check_prefix(log: &mut Log, n: u64) {
    assert_eq!(log.last_index(), LogIndex(n));
    for i in 1..=n {
        let entry = log.read(LogIndex(i)).unwrap();
        assert_eq!(entry.header.log_index, LogIndex(i));
        assert_eq!(
            entry.commands(),
            &commands(i, 1 + (i as usize % 7) * 20, 100 + i as usize * 10)[..]
        );
    }
}

/// The first segment file of the log in `dir` (all these tests' entries fit in it).
fn seg0(dir: &Path) -> PathBuf {
    dir.join("00000000.log")
}

fn damage(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn entries_read_back_and_walk_both_ways() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    write_entries(&path, 12);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    assert_eq!(report.entries, 12);
    assert_eq!(report.torn_tail_at, None);
    check_prefix(&mut log, 12);
    check_walks_back(&mut log, 12);
    assert_eq!(log.term(LogIndex(12)), Some(Term(4)));
}

#[test]
fn truncated_mid_entry_keeps_the_prefix() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let spans = write_entries(&path, 10);
    let (last_off, last_size) = spans[9];
    let pristine = std::fs::read(seg0(&path)).unwrap();
    for cut in [
        last_off + 512,
        last_off + last_size as u64 / 2,
        last_off + last_size as u64 - 512,
    ] {
        std::fs::write(seg0(&path), &pristine).unwrap();
        let f = OpenOptions::new().write(true).open(seg0(&path)).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
        assert_eq!(report.torn_tail_at, Some(last_off), "cut at {cut}");
        check_prefix(&mut log, 9);
        // The log accepts new entries where the torn one was.
        let cmds = commands(10, 21, 200);
        log.append(&[NewEntry {
            term: Term(3),
            log_index: LogIndex(10),
            num_commands: 21,
            commands: &cmds,
        }])
        .unwrap();
        drop(log);
        let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
        assert_eq!(log.read(LogIndex(10)).unwrap().commands(), &cmds[..]);
    }
}

#[test]
fn a_zeroed_sector_anywhere_in_the_last_entry_is_a_torn_tail() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let spans = write_entries(&path, 6);
    let (last_off, last_size) = spans[5];
    let sectors = last_size / 512;
    assert!(sectors >= 8, "the last entry spans several sectors");
    let pristine = std::fs::read(seg0(&path)).unwrap();
    for sector in 0..sectors {
        std::fs::write(seg0(&path), &pristine).unwrap();
        damage(&seg0(&path), last_off + sector as u64 * 512, &[0u8; 512]);
        let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options())
            .unwrap_or_else(|e| panic!("sector {sector}: {e}"));
        // Zeroing padding (between commands and trailer) changes nothing that is checked.
        let cmd_len = commands(6, 1 + 6 * 20, 160).len();
        let (lo, hi) = (sector * 512, sector * 512 + 512);
        let overlaps = |a: usize, b: usize| lo < b && a < hi;
        let only_padding = !overlaps(0, 80)
            && !overlaps(96, 96 + cmd_len)
            && !overlaps(last_size - 96, last_size - 16);
        if report.torn_tail_at.is_none() {
            assert!(only_padding, "sector {sector}: damage went unnoticed");
            check_prefix(&mut log, 6);
        } else {
            assert_eq!(report.torn_tail_at, Some(last_off), "sector {sector}");
            check_prefix(&mut log, 5);
        }
    }
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let spans = write_entries(&path, 8);
    let (off, _) = spans[3];
    damage(&seg0(&path), off + 512, &[0xEE; 512]);
    match Log::open(Arc::new(UringBackend), &path, options()) {
        Err(LogError::Corrupt { offset, reason }) => {
            assert_eq!(offset, off, "{reason}");
            assert!(reason.contains("hash"), "{reason}");
        }
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok(_) => panic!("corruption in the middle of the log went unnoticed"),
    }
    // A destroyed header in the middle is caught too.
    damage(&seg0(&path), off, &[0u8; 512]);
    assert!(
        matches!(Log::open(Arc::new(UringBackend), &path, options()), Err(LogError::Corrupt { offset, .. }) if offset == off)
    );
}

/// A whole zeroed first page in the middle of the log (a lost block, not a torn tail) is
/// corruption: every later entry was acknowledged, so recovery must refuse to open rather
/// than cut the file there.
#[test]
fn a_zeroed_first_page_in_the_middle_is_corruption() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let spans = write_entries(&path, 10);
    let (off, _) = spans[4];
    damage(&seg0(&path), off, &[0u8; 4096]);
    match Log::open(Arc::new(UringBackend), &path, options()) {
        Err(LogError::Corrupt { offset, reason }) => assert_eq!(offset, off, "{reason}"),
        Err(e) => panic!("expected a corruption error, got {e}"),
        Ok((log, report)) => panic!(
            "the log opened with {} of 10 entries ({report:?}): acknowledged entries dropped",
            log.last_index()
        ),
    }
    // The same page zeroed in the last entry is a torn tail, cut as before.
    let path = dir.path().join("log2");
    let spans = write_entries(&path, 10);
    damage(&seg0(&path), spans[9].0, &[0u8; 4096]);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    check_prefix(&mut log, 9);
    assert_eq!(report.entries, 9);
}

/// An entry's command count is checked against its commands, never trusted: an entry
/// whose hashes are valid but whose header claims a huge count is reported as corruption
/// by offset (it used to size an allocation on every replay, aborting the node at each
/// restart), and the log refuses to append such an entry in the first place.
#[test]
fn an_entry_whose_command_count_lies_is_refused() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let data = dir.path().join("node");
    let options = EngineOptions {
        log: options(),
        ..EngineOptions::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(UringBackend);
    {
        let (mut engine, _) = Engine::open(backend.clone(), &data, options.clone(), None).unwrap();
        for i in 1..=4u64 {
            engine
                .commit_local(Term(1), 3, &commands(i, 3, 100))
                .unwrap();
        }
        // Appending a count that disagrees with the commands writes nothing.
        let err = engine.append(Term(1), 7, &commands(5, 3, 100)).unwrap_err();
        assert!(err.to_string().contains("claims 7 commands"), "{err}");
        assert_eq!(engine.last_index(), LogIndex(4));
        let err = engine.append(Term(1), 1, &[0xAB; 64]).unwrap_err();
        assert!(err.to_string().contains("do not decode"), "{err}");
        assert_eq!(engine.last_index(), LogIndex(4));
    }
    // Rewrite entry 3's header (and trailer) with a lying count and valid hashes, as a
    // faulty peer or a bit flip before hashing would leave it.
    let path = data.join("segments");
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options.log.clone()).unwrap();
    let entry = log.read(LogIndex(3)).unwrap();
    let (offset, mut header) = (entry.offset, entry.header);
    drop(log);
    header.num_commands = u64::MAX;
    let mut encoded = [0u8; HEADER_SIZE];
    header.encode(&mut encoded);
    damage(&seg0(&path), offset, &encoded);
    let trailer = offset + header.entry_size() as u64 - HEADER_SLOT_SIZE as u64;
    damage(&seg0(&path), trailer, &encoded);
    match Engine::open(backend, &data, options, None) {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&format!("offset {offset}")), "{text}");
        }
        Ok(_) => panic!("an entry with a lying command count was accepted"),
    }
}

#[test]
fn suffix_truncation_is_durable_and_leaves_no_stale_entries() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    write_entries(&path, 9);
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    log.truncate_from(LogIndex(5)).unwrap();
    // A new leader's shorter entry 5 must not resurrect the old 6..9 behind it.
    let cmds = commands(5, 1, 10);
    log.append(&[NewEntry {
        term: Term(9),
        log_index: LogIndex(5),
        num_commands: 1,
        commands: &cmds,
    }])
    .unwrap();
    drop(log);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    assert_eq!(report.entries, 5);
    assert_eq!(log.term(LogIndex(5)), Some(Term(9)));
    assert_eq!(log.read(LogIndex(5)).unwrap().commands(), &cmds[..]);
}

/// A full filesystem: appends fail with ENOSPC, the log stays readable and reopens intact.
#[test]
fn full_filesystem_fails_appends_cleanly() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED full_filesystem_fails_appends_cleanly: needs root to loop-mount ext4 (the fault backend covers ENOSPC in tests/crash.rs)"
        );
        return;
    }
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let image = work.path().join("small.img");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("truncate").arg("-s").arg("8M").arg(&image));
    run(Command::new("mkfs.ext4").arg("-q").arg("-F").arg(&image));
    run(Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let path = mnt.join("log");
    let opts = LogOptions {
        prepare_chunk_bytes: 256 << 10,
        cache_bytes: 0,
        ..LogOptions::default()
    };
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, opts.clone()).unwrap();
    let mut appended = 0u64;
    let err = loop {
        let cmds = commands(appended + 1, 40, 900);
        match log.append(&[NewEntry {
            term: Term(1),
            log_index: LogIndex(appended + 1),
            num_commands: 40,
            commands: &cmds,
        }]) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 10_000, "an 8 MiB filesystem never filled");
    };
    assert!(err.is_no_space(), "expected ENOSPC, got {err}");
    assert!(appended > 10);
    // Reads still work, and a retry still fails cleanly.
    assert_eq!(
        log.read(LogIndex(appended)).unwrap().header.log_index,
        LogIndex(appended)
    );
    let cmds = commands(appended + 1, 40, 900);
    assert!(
        log.append(&[NewEntry {
            term: Term(1),
            log_index: LogIndex(appended + 1),
            num_commands: 40,
            commands: &cmds
        }])
        .unwrap_err()
        .is_no_space()
    );
    drop(log);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, opts).unwrap();
    assert_eq!(report.entries, appended);
    assert_eq!(report.torn_tail_at, None);
    for i in 1..=appended {
        log.read(LogIndex(i)).unwrap();
    }
}

/// One write holding several entries can tear so that a later entry of it lands while an
/// earlier one does not: that is still a torn tail, not corruption.
#[test]
fn a_torn_multi_entry_write_is_a_torn_tail() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    write_entries(&path, 4);
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    let batch: Vec<Vec<u8>> = (5..=7).map(|i| commands(i, 30, 150)).collect();
    let first_offset = log.end_offset();
    let entries: Vec<NewEntry<'_>> = batch
        .iter()
        .enumerate()
        .map(|(k, c)| NewEntry {
            term: Term(2),
            log_index: LogIndex(5 + k as u64),
            num_commands: 30,
            commands: c,
        })
        .collect();
    log.append(&entries).unwrap();
    drop(log);
    damage(&seg0(&path), first_offset + 1024, &[0u8; 512]);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    assert_eq!(report.torn_tail_at, Some(first_offset));
    check_prefix(&mut log, 4);
}

/// The same when the torn write is the first of a new segment: its first entry is
/// damaged, a later entry of the same write survived whole. The segment's first index is
/// known from the segment before (or, for a log that starts after a checkpoint, from the
/// checkpoint), so the survivor is recognized as part of the torn write, not as a later
/// one. (The simulator found a node that could not recover from this.)
#[test]
fn a_torn_write_that_starts_a_segment_is_a_torn_tail() {
    for after_checkpoint in [false, true] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("segments");
        let options = segmented();
        let hint = after_checkpoint.then_some(LogIndex(41));
        let (mut log, _) =
            Log::open_after(Arc::new(UringBackend), &path, options.clone(), hint).unwrap();
        let one: u64 = entry_size(commands(0, 20, 200).len()) as u64;
        let batch_bytes = 3 * one;
        if after_checkpoint {
            // The log starts after a checkpoint at 40, empty: the batch is its first write.
            log.start_after(LogIndex(40), Term(1));
        } else {
            // Fill the first segment until not even the batch's first entry fits: the
            // whole batch starts the next.
            let mut i = 1;
            while (log.end_offset() & ((1 << 30) - 1)) + one <= options.segment_bytes {
                // 16 KiB entries: eight fill a segment exactly.
                let c = commands(i, 14, 1000);
                assert_eq!(entry_size(c.len()), 16 << 10);
                log.append(&[NewEntry {
                    term: Term(1),
                    log_index: LogIndex(i),
                    num_commands: 14,
                    commands: &c,
                }])
                .unwrap();
                i += 1;
            }
        }
        let first = log.last_index().next().get();
        let batch: Vec<Vec<u8>> = (0..3).map(|k| commands(first + k, 20, 200)).collect();
        let entries: Vec<NewEntry<'_>> = batch
            .iter()
            .enumerate()
            .map(|(k, c)| NewEntry {
                term: Term(2),
                log_index: LogIndex(first + k as u64),
                num_commands: 20,
                commands: c,
            })
            .collect();
        log.append(&entries).unwrap();
        assert_eq!(
            log.end_offset() & ((1 << 30) - 1),
            batch_bytes,
            "the batch starts a segment"
        );
        let newest = log.segment_paths().last().unwrap().clone();
        drop(log);
        // The batch's first entry loses a sector; the rest of the write survived.
        damage(&newest, 1024, &[0u8; 512]);
        let (mut log, report) = Log::open_after(Arc::new(UringBackend), &path, options, hint)
            .unwrap_or_else(|e| panic!("after_checkpoint {after_checkpoint}: {e}"));
        assert!(
            report.torn_tail_at.is_some(),
            "after_checkpoint {after_checkpoint}"
        );
        if after_checkpoint {
            // Empty again; the engine moves it after its checkpoint, as before.
            log.start_after(LogIndex(40), Term(1));
        }
        assert_eq!(log.last_index(), LogIndex(first - 1));
    }
}

/// Values read back by file offset, one at a time and in a batch of O_DIRECT reads
/// submitted together, with no cache to help.
#[test]
fn values_read_back_by_offset_in_batches() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    write_entries(&path, 6);
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    let mut reads = Vec::new();
    let mut expected = Vec::new();
    for i in 1..=6 {
        let entry = log.read(LogIndex(i)).unwrap();
        for cmd in entry.iter() {
            let cmd = cmd.unwrap();
            reads.push((entry.command_file_offset(cmd.offset), cmd.key.to_vec()));
            expected.push(ValueRead::Value(cmd.value.to_vec()));
        }
    }
    assert!(reads.len() > 200, "enough reads to fill several batches");
    let mut reader = log.reader();
    let wanted: Vec<(u64, &[u8])> = reads.iter().map(|(o, k)| (*o, &k[..])).collect();
    let batch = reader.read_values_at(&wanted);
    for ((got, want), (offset, _)) in batch.into_iter().zip(&expected).zip(&wanted) {
        assert_eq!(&got.unwrap(), want, "offset {offset}");
    }
    for ((offset, key), want) in wanted.iter().zip(&expected).step_by(17) {
        assert_eq!(&reader.read_value_at(*offset, key).unwrap(), want);
    }
}

/// Values a reader fetched from the disk are kept by the shared value cache: read again
/// (by any reader sharing it), they come from memory — shown by damaging the file after
/// the first read — and a key that does not match the cached SET still reads as
/// `OtherKey`.
#[test]
fn values_read_from_the_disk_are_served_again_from_the_value_cache() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let spans = write_entries(&path, 4);
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    let entry = log.read(LogIndex(2)).unwrap();
    let cmd = entry.iter().next().unwrap().unwrap();
    let (offset, key, value) = (
        entry.command_file_offset(cmd.offset),
        cmd.key.to_vec(),
        cmd.value.to_vec(),
    );
    drop(entry);
    let values = Arc::new(std::sync::Mutex::new(ValueCache::new(1 << 20)));
    let mut first = log.reader().with_value_cache(values.clone());
    let mut second = log.reader().with_value_cache(values);
    let want = ValueRead::Value(value);
    assert_eq!(
        first.read_values_at(&[(offset, &key)]).remove(0).unwrap(),
        want
    );
    // The log's cache is off (cache_bytes 0): without the value cache this would read
    // the damaged bytes.
    damage(&seg0(&path), spans[1].0, &vec![0xEE; spans[1].1]);
    let again = second.read_values_at(&[(offset, &key), (offset, b"other")]);
    let again: Vec<ValueRead> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(again, vec![want, ValueRead::OtherKey]);
}

/// The map knows keys by 128-bit hash alone, so a read names the key it wants: the SET of
/// another key at the offset (a hash collision, forced here by asking for a key the
/// command does not hold) reads as `OtherKey`, never as that key's value, and a command
/// that is not a SET there is corruption. Checked from the cache and from the disk (a
/// reopened log with no cache), for short commands (one batch of reads) and one longer
/// than the two pages a batched read covers.
#[test]
fn values_read_for_another_key_report_the_collision() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("log");
    let short = vec![b's'; 100];
    let long = vec![b'l'; 3 * PAGE_SIZE];
    let mut cmds = Vec::new();
    command::encode(&mut cmds, CommandOp::Set, 1, 1, b"short", &short);
    command::encode(&mut cmds, CommandOp::Delete, 1, 2, b"gone", b"");
    command::encode(&mut cmds, CommandOp::Set, 1, 3, b"long", &long);
    let cached = LogOptions {
        cache_bytes: 1 << 20,
        ..options()
    };
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, cached).unwrap();
    log.append(&[NewEntry {
        term: Term(1),
        log_index: LogIndex(1),
        num_commands: 3,
        commands: &cmds,
    }])
    .unwrap();
    let entry = log.read(LogIndex(1)).unwrap();
    let at: Vec<u64> = entry
        .iter()
        .map(|c| entry.command_file_offset(c.unwrap().offset))
        .collect();
    let (short_at, delete_at, long_at) = (at[0], at[1], at[2]);
    let check = |log: &mut Log, reader: &mut LogReader, context: &str| {
        let got = reader.read_values_at(&[
            (short_at, b"victim"),
            (short_at, b"short"),
            (delete_at, b"gone"),
            (long_at, b"victim"),
            (long_at, b"long"),
        ]);
        assert_eq!(got.len(), 5);
        assert!(
            matches!(got[0], Ok(ValueRead::OtherKey)),
            "{context}: {got:?}"
        );
        assert!(
            matches!(&got[1], Ok(ValueRead::Value(v)) if *v == short),
            "{context}"
        );
        assert!(
            matches!(got[2], Err(LogError::Corrupt { offset, .. }) if offset == delete_at),
            "{context}: {:?}",
            got[2]
        );
        assert!(
            matches!(got[3], Ok(ValueRead::OtherKey)),
            "{context}: {:?}",
            got[3]
        );
        assert!(
            matches!(&got[4], Ok(ValueRead::Value(v)) if *v == long),
            "{context}"
        );
        for (offset, key) in [(short_at, b"victim"), (long_at, b"victim")] {
            let one = reader.read_value_at(offset, key).unwrap();
            assert_eq!(
                one,
                ValueRead::OtherKey,
                "{context}: reader, offset {offset}"
            );
            let one = log.read_value_at(offset, key).unwrap();
            assert_eq!(one, ValueRead::OtherKey, "{context}: log, offset {offset}");
        }
        assert!(matches!(
            log.read_value_at(delete_at, b"gone"),
            Err(LogError::Corrupt { offset, .. }) if offset == delete_at
        ));
    };
    let mut reader = log.reader();
    check(&mut log, &mut reader, "cached");
    drop(reader);
    drop(log);
    let (mut log, _) = Log::open(Arc::new(UringBackend), &path, options()).unwrap();
    let mut reader = log.reader();
    check(&mut log, &mut reader, "from disk");
}

/// The io_uring backend, recording how each batch of reads spanning files was handed to
/// it: the number of files, of reads and of pages read in each.
struct RecordingBackend {
    real: UringBackend,
    batches: std::sync::Mutex<Vec<(usize, usize, usize)>>,
}

impl Backend for RecordingBackend {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn BlockFile>> {
        self.real.open(path, create)
    }
    fn exists(&self, path: &Path) -> bool {
        self.real.exists(path)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.real.create_dir_all(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.real.sync_dir(dir)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        self.real.remove_file(path)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.real.list_dir(dir)
    }
    fn fill_random(&self, buf: &mut [u8]) -> std::io::Result<()> {
        self.real.fill_random(buf)
    }
    fn read_many(&self, groups: &mut [FileReads<'_>]) -> Vec<std::io::Result<usize>> {
        let reads = groups.iter().map(|g| g.reads.len()).sum();
        let pages = groups
            .iter()
            .flat_map(|g| g.reads.iter())
            .map(|(_, buf)| buf.len() / PAGE_SIZE)
            .sum();
        self.batches
            .lock()
            .unwrap()
            .push((groups.len(), reads, pages));
        self.real.read_many(groups)
    }
}

/// Cold reads of values spread over many segment files go to the disk as one batch
/// spanning the files, all in flight together, not one file's reads after another's: one
/// `read_many` call for the whole batch, naming every file. Each value comes back for its
/// own read, in the order asked, with a read for another key among them.
#[test]
fn cold_reads_across_segments_are_one_batch_spanning_the_files() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("spread");
    write_entries_with(&path, 30, segmented());
    let backend = Arc::new(RecordingBackend {
        real: UringBackend,
        batches: std::sync::Mutex::new(Vec::new()),
    });
    let (mut log, _) = Log::open(backend.clone(), &path, segmented()).unwrap();
    let segments = log.segment_paths().len();
    assert!(segments >= 4, "30 entries fill several segments");
    // One read from every entry, newest first, so that the segments interleave.
    let mut reads = Vec::new();
    let mut expected = Vec::new();
    for i in (1..=30).rev() {
        let entry = log.read(LogIndex(i)).unwrap();
        let cmd = entry.iter().last().unwrap().unwrap();
        reads.push((entry.command_file_offset(cmd.offset), cmd.key.to_vec()));
        expected.push(ValueRead::Value(cmd.value.to_vec()));
    }
    reads.push((reads[3].0, b"another key".to_vec()));
    expected.push(ValueRead::OtherKey);
    let wanted: Vec<(u64, &[u8])> = reads.iter().map(|(o, k)| (*o, &k[..])).collect();
    let mut reader = log.reader();
    backend.batches.lock().unwrap().clear();
    let got = reader.read_values_at(&wanted);
    for ((got, want), (offset, _)) in got.into_iter().zip(&expected).zip(&wanted) {
        assert_eq!(&got.unwrap(), want, "offset {offset}");
    }
    let batches = backend.batches.lock().unwrap().clone();
    assert_eq!(
        batches.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
        vec![(segments, wanted.len())],
        "one batch naming every segment file"
    );
}

/// Cold reads size themselves by the commands read before: once a reader has seen small
/// values it reads one page for each (a 100-byte value starting early in a page is one
/// page), and a value that turns out longer than that — a few pages, or behind a key of
/// the largest size — is read again at the size its lengths give, the longer ones of a
/// batch together. Every value comes back whole.
#[test]
fn cold_reads_of_longer_values_are_read_again_whole() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("sizes");
    let long_key = vec![b'k'; command::KEY_SIZE_MAX];
    let mut cmds = Vec::new();
    let mut wanted_cmds: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for c in 0..60u64 {
        let (key, value) = match c {
            20 => (b"pages".to_vec(), vec![b'p'; 3 * PAGE_SIZE + 100]),
            40 => (long_key.clone(), vec![b'l'; PAGE_SIZE]),
            _ => (format!("small-{c}").into_bytes(), vec![c as u8; 100]),
        };
        command::encode(&mut cmds, CommandOp::Set, 1, c, &key, &value);
        wanted_cmds.push((key, value));
    }
    let backend = Arc::new(RecordingBackend {
        real: UringBackend,
        batches: std::sync::Mutex::new(Vec::new()),
    });
    let (mut log, _) = Log::open(backend.clone(), &path, options()).unwrap();
    log.append(&[NewEntry {
        term: Term(1),
        log_index: LogIndex(1),
        num_commands: 60,
        commands: &cmds,
    }])
    .unwrap();
    let entry = log.read(LogIndex(1)).unwrap();
    let at: Vec<u64> = entry
        .iter()
        .map(|c| entry.command_file_offset(c.unwrap().offset))
        .collect();
    drop(entry);
    let mut reader = log.reader();
    let read = |reader: &mut LogReader, which: &[usize]| {
        let wanted: Vec<(u64, &[u8])> = which
            .iter()
            .map(|&c| (at[c], &wanted_cmds[c].0[..]))
            .collect();
        for (got, &c) in reader.read_values_at(&wanted).into_iter().zip(which) {
            assert_eq!(
                got.unwrap(),
                ValueRead::Value(wanted_cmds[c].1.clone()),
                "{c}"
            );
        }
    };
    // Small values teach the reader their size.
    read(&mut reader, &(0..20).collect::<Vec<_>>());
    read(&mut reader, &(0..20).rev().collect::<Vec<_>>());
    backend.batches.lock().unwrap().clear();
    // A command starting within a page's first half, small: one page read. Then the two
    // long ones among small ones.
    let early = (0..20)
        .find(|&c| at[c] % PAGE_SIZE as u64 <= PAGE_SIZE as u64 / 2)
        .unwrap();
    read(&mut reader, &[early]);
    read(&mut reader, &[21, 20, 22, 40, 41]);
    let batches = backend.batches.lock().unwrap().clone();
    assert_eq!(batches[0], (1, 1, 1), "the early small read: {batches:?}");
    assert_eq!(
        batches[1..].iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
        [(1, 5), (1, 2)],
        "a first batch, then the two longer ones together: {batches:?}"
    );
    assert!(batches[2].2 >= 4 + 2, "read again whole: {batches:?}");
}

fn segmented() -> LogOptions {
    LogOptions {
        segment_bytes: 128 << 10,
        ..options()
    }
}

/// Entries run on from one segment file to the next: all read back after a reopen, the
/// backward walk crosses the files, deleting the oldest segments moves the first index,
/// and a log whose segments do not run on is refused rather than opened short.
#[test]
fn entries_span_segments_and_the_oldest_can_be_deleted() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("segments");
    write_entries_with(&path, 30, segmented());
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, segmented()).unwrap();
    assert_eq!((report.entries, report.torn_tail_at), (30, None));
    let files = log.segment_paths();
    assert!(
        files.len() >= 4,
        "30 entries fill several segments: {files:?}"
    );
    check_prefix(&mut log, 30);
    check_walks_back(&mut log, 30);

    let (_, first_last) = log.first_segment().unwrap();
    log.remove_first_segment().unwrap();
    assert!(!files[0].exists());
    drop(log);
    let (mut log, report) = Log::open(Arc::new(UringBackend), &path, segmented()).unwrap();
    assert_eq!(report.first_index, first_last.next());
    assert_eq!(log.first_index(), first_last.next());
    assert_eq!(log.last_index(), LogIndex(30));
    assert!(log.read(first_last).is_err(), "a deleted entry is gone");
    for i in first_last.next().get()..=30 {
        assert_eq!(log.read(LogIndex(i)).unwrap().header.log_index, LogIndex(i));
    }
    drop(log);

    // A segment missing from the middle leaves a gap in the indexes: refused.
    let files: Vec<_> = {
        let (log, _) = Log::open(Arc::new(UringBackend), &path, segmented()).unwrap();
        log.segment_paths()
    };
    let saved = std::fs::read(&files[1]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    match Log::open(Arc::new(UringBackend), &path, segmented()) {
        Err(LogError::Corrupt { reason, .. }) => assert!(reason.contains("expected"), "{reason}"),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("a log with a missing segment opened"),
    }
    std::fs::write(&files[1], &saved).unwrap();

    // Damage inside an older segment is corruption even at that segment's last entry,
    // since later segments hold entries written after it.
    let older = &files[1];
    let len = std::fs::metadata(older).unwrap().len();
    damage(older, len - 4096, &[0u8; 4096]);
    match Log::open(Arc::new(UringBackend), &path, segmented()) {
        Err(LogError::Corrupt { reason, .. }) => {
            assert!(reason.contains("later segment"), "{reason}")
        }
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("damage in an older segment went unnoticed"),
    }
    std::fs::write(older, &saved).unwrap();

    // A torn tail in the newest segment is cut, as in a single file.
    let newest = files.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    let f = OpenOptions::new().write(true).open(newest).unwrap();
    f.set_len(len - 512).unwrap();
    drop(f);
    let (log, report) = Log::open(Arc::new(UringBackend), &path, segmented()).unwrap();
    assert!(report.torn_tail_at.is_some());
    assert_eq!(log.last_index(), LogIndex(29));
}

/// Reads kept in flight across calls: started from several segments, some collected
/// while more start, each handed over once under its own tag with its own value (and a
/// read for another key as `OtherKey`), on the real disk and on the simulated one (where a
/// read is done as it starts). A read of a segment removed while it is in flight still
/// answers from that segment's file, which the reader keeps open until then.
#[test]
fn reads_in_flight_are_handed_over_by_tag_as_they_finish() {
    use ocean_liner::storage::io::fault::FaultBackend;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let backends: [(&str, Arc<dyn Backend>); 2] = [
        ("uring", Arc::new(UringBackend)),
        ("simulated", Arc::new(FaultBackend::new())),
    ];
    for (name, backend) in backends {
        let path = dir.path().join(name);
        backend.create_dir_all(dir.path()).unwrap();
        let (mut log, _) = Log::open(backend.clone(), &path, segmented()).unwrap();
        for i in 1..=30u64 {
            let count = 1 + (i as usize % 7) * 20;
            let cmds = commands(i, count, 100 + i as usize * 10);
            log.append(&[NewEntry {
                term: Term(1),
                log_index: LogIndex(i),
                num_commands: count as u64,
                commands: &cmds,
            }])
            .unwrap();
        }
        assert!(log.segment_paths().len() >= 4, "{name}");
        let mut asked = Vec::new();
        for i in (1..=30).rev() {
            let entry = log.read(LogIndex(i)).unwrap();
            for cmd in entry.iter().step_by(9) {
                let cmd = cmd.unwrap();
                let at = entry.command_file_offset(cmd.offset);
                asked.push((at, cmd.key.to_vec(), ValueRead::Value(cmd.value.to_vec())));
            }
        }
        let first = asked[asked.len() - 1].0;
        asked.push((first, b"another key".to_vec(), ValueRead::OtherKey));
        let mut reader = log.reader();
        let mut got: Vec<Option<ValueRead>> = vec![None; asked.len()];
        let mut take = |tag: u64, read: Result<ValueRead, LogError>| {
            let slot = &mut got[tag as usize];
            assert!(slot.is_none(), "{name}: tag {tag} handed over twice");
            *slot = Some(read.unwrap());
        };
        let half = asked.len() / 2;
        for (tag, (at, key, _)) in asked[..half].iter().enumerate() {
            reader.start_read(*at, key, tag as u64);
        }
        reader.submit_reads();
        assert_eq!(reader.reads_in_flight(), half, "{name}");
        reader.finish_reads(true, &mut take);
        assert!(
            reader.reads_in_flight() < half,
            "{name}: one finished at least"
        );
        // The oldest segment goes while reads of it may be in flight.
        let oldest_no = asked[asked.len() - 1].0 >> 30;
        let in_oldest = |at: u64| at >> 30 == oldest_no;
        for (tag, (at, key, _)) in asked.iter().enumerate().skip(half) {
            if in_oldest(*at) {
                reader.start_read(*at, key, tag as u64);
            }
        }
        reader.submit_reads();
        log.remove_first_segment().unwrap();
        for (tag, (at, key, _)) in asked.iter().enumerate().skip(half) {
            if !in_oldest(*at) {
                reader.start_read(*at, key, tag as u64);
            }
        }
        reader.submit_reads();
        while reader.reads_in_flight() > 0 {
            reader.finish_reads(true, &mut take);
        }
        for (tag, (got, (at, _, want))) in got.iter().zip(&asked).enumerate() {
            assert_eq!(got.as_ref(), Some(want), "{name}: tag {tag} at {at}");
        }
    }
}
