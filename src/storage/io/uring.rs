//! Real files: `O_DIRECT` reads and writes submitted through io_uring.
//!
//! Each open file owns a small ring, so a file can be driven from whichever thread owns it
//! without locking. Reads spanning files ([`UringBackend::read_many`], a shard's cold
//! GETs) go on a ring of the calling thread's own, all of them in flight at once. Calls are synchronous from the caller's point of view (submit, then
//! wait for the completion): the engine above keeps IO batched into large writes, which is
//! where io_uring's saving lies, and stays free of async runtimes so that the simulator can
//! drive it step by step.
//!
//! A durable write is the write followed by a data sync (`IORING_OP_FSYNC` with
//! `DATASYNC`), each waited for. With `RWF_DSYNC` on the write instead, ext4 flushes the
//! device's cache in its direct-IO completion worker, a kernel thread bound to whichever
//! CPU took the disk's interrupt: a single-queue virtio disk interrupts one CPU only, on a
//! two-core node a shard's core, and a busy shard there held the log's writes back by up
//! to 150 ms. As a request of its own the sync runs in the ring's worker, which is kept
//! on the CPUs of the thread that opened the file (`IORING_REGISTER_IOWQ_AFF`). The
//! write's own completion still passes through ext4's worker, briefly.
//!
//! # Requests in flight
//!
//! Every request carries a tag of its own in `user_data`, and a completion is matched to
//! its request by that tag alone, whatever order the kernel completes them in. A call
//! returns only when every request it submitted has completed — on an error too — since
//! the kernel may write into a buffer until then and the caller frees its buffers when
//! the call returns. If `io_uring_enter` fails before the kernel took some requests, those
//! are never submitted: the file refuses every later call, and closing it closes the ring
//! with them unseen. If waiting for taken requests fails twice in a row, the process
//! aborts rather than free memory the kernel may still write.

use super::{AlignedBuf, Backend, BlockFile, FileReads, FinishedRead, ReadQueue, assert_aligned};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Entries in each file's ring: most calls have one request in flight; batched reads
/// have up to this many.
const RING_ENTRIES: u32 = 64;

/// Opens real files with `O_DIRECT` and io_uring.
#[derive(Debug, Default, Clone, Copy)]
pub struct UringBackend;

impl Backend for UringBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BlockFile>> {
        Ok(Box::new(UringFile::open(path, create)?))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        sync_dir(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }

    /// Every read of every file goes on this thread's read ring at once (a ring's worth
    /// at a time), so reads of different files are in flight together; files of another
    /// backend (none in practice) are read file by file.
    fn read_many(&self, groups: &mut [FileReads<'_>]) -> Vec<io::Result<usize>> {
        let Some(fds) = groups
            .iter()
            .map(|g| g.file.raw_fd())
            .collect::<Option<Vec<_>>>()
        else {
            return super::read_file_by_file(groups);
        };
        READ_RING.with_borrow_mut(|slot| {
            if slot.is_none() {
                match Ring::new(READ_RING_ENTRIES) {
                    Ok(ring) => *slot = Some(ring),
                    Err(e) => {
                        let count = groups.iter().map(|g| g.reads.len()).sum();
                        let (kind, text) = (e.kind(), e.to_string());
                        return (0..count)
                            .map(|_| Err(io::Error::new(kind, text.clone())))
                            .collect();
                    }
                }
            }
            let ring = slot.as_mut().expect("made above");
            let mut entries = Vec::new();
            for (group, &fd) in groups.iter_mut().zip(&fds) {
                for (offset, buf) in group.reads.iter_mut() {
                    entries.push(read_entry(types::Fd(fd), *offset, buf));
                }
            }
            // The buffers and the files stay borrowed (through `groups`) until
            // `submit_all` has seen every completion.
            ring.submit_all(entries)
        })
    }

    fn read_queue(&self) -> Box<dyn ReadQueue> {
        match UringReadQueue::new() {
            Ok(queue) => Box::new(queue),
            // Files cannot be opened either then: whatever reads start fail there.
            Err(_) => Box::new(super::ImmediateReads::default()),
        }
    }

    fn fill_random(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            let rest = &mut buf[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into the buffer we own.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            filled += n as usize;
        }
        Ok(())
    }
}

/// A file opened with `O_DIRECT`, with its own io_uring.
pub struct UringFile {
    file: File,
    ring: Ring,
}

/// An io_uring and the bookkeeping of the calls made on it: the tag of the next request,
/// and whether it may be entered at all.
struct Ring {
    ring: IoUring,
    /// The tag of the next request.
    next_tag: u64,
    /// Entries its submission queue holds: a call submits at most this many at once.
    entries: usize,
    /// Why the ring may not be entered again (requests the kernel never took are still
    /// in its submission queue), if so.
    broken: Option<String>,
}

/// Entries in each thread's ring for reads spanning files ([`UringBackend::read_many`]):
/// a shard's batch of GETs that miss every cache, submitted at once.
const READ_RING_ENTRIES: u32 = 256;

thread_local! {
    /// The ring this thread submits reads spanning files on, made on first use. Between
    /// calls it has nothing in flight, so it can be dropped with the thread at any time.
    static READ_RING: std::cell::RefCell<Option<Ring>> = const { std::cell::RefCell::new(None) };
}

/// Keeps the ring's workers (the calling thread's io-wq, which runs the data syncs) on the
/// CPUs the calling thread may use: a pinned replication thread's syncs then never wait
/// for a shard's core. Best effort: kernels before 5.14 lack the call, and the workers
/// then go wherever the scheduler puts them.
fn keep_workers_on_this_threads_cpus(ring: &IoUring) {
    // SAFETY: cpu_set_t is a plain bit array; all zeros is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: writes at most the size given, that of `set`, into `set`; pid 0 is this thread.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if got == 0 {
        let _ = ring.submitter().register_iowq_aff(&set);
    }
}

/// A read filling all of `buf` from `offset` of the file `fd`.
fn read_entry(fd: types::Fd, offset: u64, buf: &mut super::AlignedBuf) -> squeue::Entry {
    assert_aligned(offset, buf.len());
    opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
        .offset(offset)
        .build()
}

/// `io_uring_enter` flag: wait for completions.
const ENTER_GETEVENTS: u32 = 1;

/// Whether an `io_uring_enter` error passes by itself (try again).
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
    )
}

/// The requests of one call, by tag: results are placed by the tag a completion carries,
/// never by arrival order, and completions of other tags are not taken for these.
#[derive(Debug)]
pub(crate) struct Batch {
    base_tag: u64,
    results: Vec<Option<io::Result<usize>>>,
    outstanding: usize,
}

impl Batch {
    /// A batch of `count` requests tagged `base_tag`, `base_tag + 1`, ...
    pub(crate) fn new(base_tag: u64, count: usize) -> Batch {
        Batch {
            base_tag,
            results: (0..count).map(|_| None).collect(),
            outstanding: count,
        }
    }

    /// The tag of request `i`.
    pub(crate) fn tag(&self, i: usize) -> u64 {
        self.base_tag + i as u64
    }

    /// Records a completion; returns false for a tag that is not one of this batch's, or
    /// one already completed (it is ignored).
    pub(crate) fn complete(&mut self, tag: u64, result: i32) -> bool {
        let Some(i) = tag.checked_sub(self.base_tag).map(|i| i as usize) else {
            return false;
        };
        let Some(slot @ None) = self.results.get_mut(i) else {
            return false;
        };
        *slot = Some(if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as usize)
        });
        self.outstanding -= 1;
        true
    }

    /// Requests not completed yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The results in request order; a request that never reached the kernel fails with
    /// `error`.
    pub(crate) fn finish(self, error: impl Fn() -> io::Error) -> Vec<io::Result<usize>> {
        self.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(error())))
            .collect()
    }
}

impl Ring {
    /// A ring of `entries` submission entries whose workers stay on this thread's CPUs.
    fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring_setup failed ({e}); io_uring may be disabled \
                     (sysctl kernel.io_uring_disabled) or blocked by seccomp: see kernel-notes.md"
                ),
            )
        })?;
        keep_workers_on_this_threads_cpus(&ring);
        Ok(Ring {
            ring,
            next_tag: 0,
            entries: entries as usize,
            broken: None,
        })
    }

    /// Submits one request and waits for its completion, returning the result.
    fn submit_one(&mut self, entry: squeue::Entry) -> io::Result<usize> {
        let mut results = self.submit_all(vec![entry]);
        results
            .pop()
            .unwrap_or_else(|| Err(io::Error::other("no result")))
    }

    /// Submits `entries` (any number: more than the ring holds go a ring's worth at a
    /// time), waits until every one the kernel took has completed, and returns their
    /// results in order.
    ///
    /// The caller keeps every buffer and file the entries point into alive and untouched
    /// for the whole call; that is what makes pushing them sound.
    fn submit_all(&mut self, entries: Vec<squeue::Entry>) -> Vec<io::Result<usize>> {
        if entries.len() <= self.entries {
            return self.submit_chunk(entries);
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut entries = entries.into_iter();
        loop {
            let chunk: Vec<squeue::Entry> = entries.by_ref().take(self.entries).collect();
            if chunk.is_empty() {
                return results;
            }
            results.extend(self.submit_chunk(chunk));
        }
    }

    /// [`Ring::submit_all`] for at most a ring's worth of entries.
    fn submit_chunk(&mut self, entries: Vec<squeue::Entry>) -> Vec<io::Result<usize>> {
        assert!(entries.len() <= self.entries, "one ring's worth");
        let mut batch = Batch::new(self.next_tag, entries.len());
        self.next_tag += entries.len() as u64;
        if let Some(why) = &self.broken {
            let why = why.clone();
            return batch.finish(|| io::Error::other(why.clone()));
        }
        {
            let mut sq = self.ring.submission();
            for (i, entry) in entries.into_iter().enumerate() {
                let entry = entry.user_data(batch.tag(i));
                // SAFETY: the buffers `entry` points into outlive this call (the caller's
                // contract above), and this call does not return while the kernel may
                // still use them: it waits for every request the kernel took, and a
                // request it never took is never submitted (the file is then broken).
                unsafe { sq.push(&entry) }
                    .expect("the queue is empty between calls and a batch fits");
            }
        }
        // Hand every request to the kernel, waiting for a first completion in the same
        // call. What it does not take after a lasting error never reaches it: the file
        // refuses every later call, and closing it closes the ring with them unseen.
        let mut error = None;
        while !self.ring.submission().is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    self.broken = Some(format!(
                        "io_uring_enter failed ({e}); this file's ring is unusable"
                    ));
                    error = Some(e);
                    break;
                }
            }
        }
        let never_taken = self.ring.submission().len();
        self.reap(&mut batch);
        self.wait_until(&mut batch, never_taken, &mut error);
        let error = error.map(|e| (e.kind(), e.to_string()));
        batch.finish(|| match &error {
            Some((kind, text)) => io::Error::new(*kind, text.clone()),
            None => io::Error::other("io_uring request not completed"),
        })
    }

    /// Takes every completion available, placing those of `batch` by tag; others (there
    /// are none unless a bug left one behind) are dropped.
    fn reap(&mut self, batch: &mut Batch) {
        for cqe in self.ring.completion() {
            let cqe: cqueue::Entry = cqe;
            batch.complete(cqe.user_data(), cqe.result());
        }
    }

    /// Waits, submitting nothing, until only `never_taken` requests of `batch` (those the
    /// kernel never took) are outstanding; a wait that fails is recorded in `error`. If
    /// waiting fails twice in a row the kernel may still write into buffers the caller is
    /// about to free, and there is no sound way on: the process aborts.
    fn wait_until(&mut self, batch: &mut Batch, never_taken: usize, error: &mut Option<io::Error>) {
        let mut failed_before = false;
        while batch.outstanding() > never_taken {
            // SAFETY: io_uring_enter with nothing to submit only waits for completions;
            // no argument is passed.
            let waited = unsafe {
                self.ring
                    .submitter()
                    .enter::<libc::sigset_t>(0, 1, ENTER_GETEVENTS, None)
            };
            match waited {
                Ok(_) => failed_before = false,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    if failed_before {
                        eprintln!("ocean-liner: cannot wait for io_uring completions: {e}");
                        std::process::abort();
                    }
                    failed_before = true;
                    error.get_or_insert(e);
                }
            }
            self.reap(batch);
        }
    }
}

impl UringFile {
    /// Opens (or creates) `path` with `O_DIRECT`.
    pub fn open(path: &Path, create: bool) -> io::Result<UringFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| annotate(e, path))?;
        Ok(UringFile {
            file,
            ring: Ring::new(RING_ENTRIES)?,
        })
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert_aligned(offset, buf.len());
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let entry = opcode::Write::new(
                types::Fd(self.file.as_raw_fd()),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .offset(offset + done as u64)
            .build();
            let n = self.ring.submit_one(entry)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            done += n;
        }
        Ok(())
    }
}

impl BlockFile for UringFile {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        assert_aligned(offset, buf.len());
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let entry = opcode::Read::new(
                types::Fd(self.file.as_raw_fd()),
                rest.as_mut_ptr(),
                rest.len() as u32,
            )
            .offset(offset + done as u64)
            .build();
            let n = self.ring.submit_one(entry)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn read_batch(&mut self, reads: &mut [(u64, super::AlignedBuf)]) -> Vec<io::Result<usize>> {
        let fd = types::Fd(self.file.as_raw_fd());
        let entries = reads
            .iter_mut()
            .map(|(offset, buf)| read_entry(fd, *offset, buf))
            .collect();
        // The buffers stay borrowed until `submit_all` has seen every completion.
        self.ring.submit_all(entries)
    }

    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.ring.submit_one(entry).map(|_| ())
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// Reads in flight at once in a [`UringReadQueue`]: its slots, and its ring's entries.
const READ_QUEUE_SLOTS: usize = 256;

/// A [`ReadQueue`] on a ring of its own: a read is pushed when it starts, handed to the
/// kernel at `submit`, and collected when its completion arrives, by the slot its
/// `user_data` names.
///
/// Each slot owns the buffer of one read the kernel may be filling: it is handed back
/// only with that read's completion, and dropping the queue first waits for every read
/// the kernel took. If `io_uring_enter` fails lastingly, the reads it never took fail
/// and keep their slots (the ring is never entered again, so the kernel never sees
/// them); if waiting for completions fails twice in a row, the process aborts rather
/// than free a buffer the kernel may still write.
pub struct UringReadQueue {
    ring: IoUring,
    /// The tag and buffer of each read in a slot (pushed, or taken by the kernel).
    slots: Vec<Option<(u64, AlignedBuf)>>,
    free: Vec<usize>,
    /// Slots pushed since the last submit, in order: the kernel takes them in this order.
    pushed: std::collections::VecDeque<usize>,
    /// Reads the kernel took that have not completed.
    in_flight: usize,
    done: Vec<FinishedRead>,
    broken: Option<String>,
}

impl UringReadQueue {
    /// A queue with its own ring, its workers on this thread's CPUs.
    pub fn new() -> io::Result<UringReadQueue> {
        let ring = Ring::new(READ_QUEUE_SLOTS as u32)?.ring;
        Ok(UringReadQueue {
            ring,
            slots: (0..READ_QUEUE_SLOTS).map(|_| None).collect(),
            free: (0..READ_QUEUE_SLOTS).rev().collect(),
            pushed: std::collections::VecDeque::new(),
            in_flight: 0,
            done: Vec::new(),
            broken: None,
        })
    }

    /// Takes every completion available; with `wait`, first waits for one if none is
    /// there and a read is in flight.
    fn reap(&mut self, wait: bool) {
        if wait && self.in_flight > 0 && self.ring.completion().is_empty() {
            let mut failed_before = false;
            loop {
                // SAFETY: io_uring_enter with nothing to submit only waits for completions;
                // no argument is passed.
                let waited = unsafe {
                    self.ring
                        .submitter()
                        .enter::<libc::sigset_t>(0, 1, ENTER_GETEVENTS, None)
                };
                match waited {
                    Ok(_) => break,
                    Err(e) if is_transient(&e) => {}
                    Err(e) => {
                        if failed_before {
                            eprintln!("ocean-liner: cannot wait for io_uring completions: {e}");
                            std::process::abort();
                        }
                        failed_before = true;
                    }
                }
            }
        }
        let slots = &mut self.slots;
        for cqe in self.ring.completion() {
            let cqe: cqueue::Entry = cqe;
            let slot = cqe.user_data() as usize;
            // A completion names a slot whose read the kernel took; anything else would be
            // a bug, and is dropped.
            let Some((tag, buf)) = slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            let result = if cqe.result() < 0 {
                Err(io::Error::from_raw_os_error(-cqe.result()))
            } else {
                Ok(cqe.result() as usize)
            };
            self.done.push((tag, buf, result));
            self.free.push(slot);
            self.in_flight -= 1;
        }
    }
}

impl ReadQueue for UringReadQueue {
    fn start(&mut self, file: &mut dyn BlockFile, offset: u64, mut buf: AlignedBuf, tag: u64) {
        let fd = match (&self.broken, file.raw_fd()) {
            (Some(why), _) => {
                let error = io::Error::other(why.clone());
                self.done.push((tag, buf, Err(error)));
                return;
            }
            (None, Some(fd)) => fd,
            (None, None) => {
                let result = file.read_at(&mut buf, offset);
                self.done.push((tag, buf, result));
                return;
            }
        };
        while self.free.is_empty() {
            self.submit();
            if self.broken.is_some() {
                return self.start(file, offset, buf, tag);
            }
            self.reap(true);
        }
        let slot = self.free.pop().expect("a slot is free");
        let entry = read_entry(types::Fd(fd), offset, &mut buf).user_data(slot as u64);
        self.slots[slot] = Some((tag, buf));
        // SAFETY: the entry points into the buffer now owned by `slots[slot]`, whose heap
        // memory does not move; the slot is emptied only by this read's completion (or,
        // for a read the kernel never took, never), and dropping the queue waits for every
        // read the kernel took. The caller keeps the file open until the read is collected.
        unsafe { self.ring.submission().push(&entry) }
            .expect("the queue holds at most one entry per slot");
        self.pushed.push_back(slot);
    }

    fn submit(&mut self) {
        while !self.pushed.is_empty() && self.broken.is_none() {
            match self.ring.submit() {
                Ok(taken) => {
                    let taken = taken.min(self.pushed.len());
                    self.pushed.drain(..taken);
                    self.in_flight += taken;
                    if taken == 0 {
                        break;
                    }
                }
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let why = format!("io_uring_enter failed ({e}); this read queue is unusable");
                    // The reads never taken fail; their slots keep their buffers.
                    for slot in self.pushed.drain(..) {
                        if let Some((tag, _)) = &self.slots[slot] {
                            let error = io::Error::other(why.clone());
                            self.done.push((*tag, AlignedBuf::new(0), Err(error)));
                        }
                    }
                    self.broken = Some(why);
                }
            }
        }
    }

    fn collect(&mut self, wait: bool, out: &mut Vec<FinishedRead>) {
        if self.done.is_empty() {
            self.reap(wait);
        } else {
            self.reap(false);
        }
        out.append(&mut self.done);
    }
}

impl Drop for UringReadQueue {
    fn drop(&mut self) {
        while self.in_flight > 0 {
            self.reap(true);
        }
    }
}

/// fsyncs a directory so that entries created in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EINVAL) => {
            " (the filesystem does not support O_DIRECT: tmpfs and some overlay setups \
             refuse it; put --data-dir on ext4 or xfs, see kernel-notes.md)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            " (the data directory is not writable by this user)"
        }
        _ => "",
    };
    io::Error::new(e.kind(), format!("{}: {e}{hint}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completions in any order land on their own request; a completion with a tag of
    /// another call is not taken for one of this call's; a request that never completed
    /// reports the error, not a neighbour's result.
    #[test]
    fn completions_are_matched_by_tag_not_by_arrival() {
        let mut batch = Batch::new(100, 4);
        assert!(
            !batch.complete(99, 4096),
            "a stale tag from an earlier call"
        );
        assert!(batch.complete(103, 512));
        assert!(batch.complete(101, -libc::EIO));
        assert!(!batch.complete(101, 4096), "completed once only");
        assert!(!batch.complete(104, 4096), "past this batch");
        assert_eq!(batch.outstanding(), 2);
        assert!(batch.complete(100, 8192));
        let results = batch.finish(|| io::Error::other("never submitted"));
        assert_eq!(results[0].as_ref().unwrap(), &8192);
        assert_eq!(
            results[1].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(
            results[2].as_ref().unwrap_err().to_string(),
            "never submitted"
        );
        assert_eq!(results[3].as_ref().unwrap(), &512);
    }

    /// A completion left in the queue by an earlier request (as an error path used to
    /// leave one) is not taken for the next request's.
    #[test]
    fn a_stale_completion_is_not_taken_for_the_next_request() {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let path = dir.path().join("f");
        let mut file = UringFile::open(&path, true).unwrap();
        let page = super::super::AlignedBuf::from_slice(&[7u8; PAGE]);
        file.write_durable_at(&page, 0).unwrap();
        // A no-op from nobody, completed and left unreaped.
        let stale = opcode::Nop::new().build().user_data(u64::MAX - 1);
        // SAFETY: a no-op references no memory.
        unsafe { file.ring.ring.submission().push(&stale).unwrap() };
        file.ring.ring.submit_and_wait(1).unwrap();
        let mut buf = super::super::AlignedBuf::new(PAGE);
        assert_eq!(file.read_at(&mut buf, 0).unwrap(), PAGE);
        assert!(buf.iter().all(|&b| b == 7));
    }

    /// A batch of reads spanning files, more than the thread's read ring holds: every
    /// read fills its own buffer from its own file and offset, results in the order
    /// given (a read past a file's end short, one straddling it cut to the sector), and
    /// one file's reads may come in any order of offsets.
    #[test]
    fn reads_spanning_files_land_in_their_own_buffers() {
        use super::super::{AlignedBuf, FileReads};
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let pages = 200usize;
        let mut files = Vec::new();
        for f in 0..2u8 {
            let mut file = UringFile::open(&dir.path().join(format!("f{f}")), true).unwrap();
            let mut image = AlignedBuf::new(pages * PAGE);
            for (p, page) in image.chunks_mut(PAGE).enumerate() {
                page.fill(f * 100 + (p % 100) as u8);
            }
            file.write_durable_at(&image[..pages * PAGE - PAGE / 2], 0)
                .unwrap();
            files.push(file);
        }
        let plan = |f: usize| -> Vec<(u64, AlignedBuf)> {
            (0..pages)
                .rev()
                .map(|p| ((p * PAGE) as u64, AlignedBuf::new(PAGE)))
                .chain(std::iter::once((
                    (pages * PAGE) as u64,
                    AlignedBuf::new(PAGE),
                )))
                .filter(|(offset, _)| f == 0 || offset % (3 * PAGE as u64) == 0)
                .collect()
        };
        let (mut reads0, mut reads1) = (plan(0), plan(1));
        assert!(reads0.len() + reads1.len() > READ_RING_ENTRIES as usize);
        let (first, second) = files.split_at_mut(1);
        let mut groups = [
            FileReads {
                file: &mut second[0],
                reads: &mut reads1,
            },
            FileReads {
                file: &mut first[0],
                reads: &mut reads0,
            },
        ];
        let results = UringBackend.read_many(&mut groups);
        assert_eq!(results.len(), reads0.len() + reads1.len());
        let expected = reads1
            .iter()
            .map(|r| (1u8, r))
            .chain(reads0.iter().map(|r| (0u8, r)));
        for (result, (f, (offset, buf))) in results.into_iter().zip(expected) {
            let p = *offset as usize / PAGE;
            let n = result.unwrap();
            let want = match p {
                _ if p == pages => 0,
                _ if p == pages - 1 => PAGE / 2,
                _ => PAGE,
            };
            assert_eq!(n, want, "file {f} page {p}");
            let byte = f * 100 + (p % 100) as u8;
            assert!(buf[..n].iter().all(|&b| b == byte), "file {f} page {p}");
        }
    }

    /// A read queue with more reads started than it has slots, over two files: starting
    /// one when every slot is taken waits for one to finish; each read is collected once,
    /// under its tag, with its own file's bytes at its own offset; a queue dropped with
    /// reads in flight waits for them first.
    #[test]
    fn a_read_queue_hands_each_read_back_once_under_its_tag() {
        use super::super::{AlignedBuf, ReadQueue};
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).unwrap();
        let pages = 64usize;
        let mut files = Vec::new();
        for f in 0..2u8 {
            let mut file = UringFile::open(&dir.path().join(format!("q{f}")), true).unwrap();
            let mut image = AlignedBuf::new(pages * PAGE);
            for (p, page) in image.chunks_mut(PAGE).enumerate() {
                page.fill(f * 100 + p as u8);
            }
            file.write_durable_at(&image, 0).unwrap();
            files.push(file);
        }
        let mut queue = UringReadQueue::new().unwrap();
        let reads = READ_QUEUE_SLOTS * 2 + 7;
        let mut seen = vec![false; reads];
        let mut out = Vec::new();
        let check = |out: &mut Vec<FinishedRead>, seen: &mut Vec<bool>| {
            for (tag, buf, result) in out.drain(..) {
                let tag = tag as usize;
                assert!(!seen[tag], "tag {tag} twice");
                seen[tag] = true;
                assert_eq!(result.unwrap(), PAGE, "tag {tag}");
                let byte = (tag % 2) as u8 * 100 + (tag * 7 % pages) as u8;
                assert!(buf.iter().all(|&b| b == byte), "tag {tag}");
            }
        };
        for tag in 0..reads {
            let offset = (tag * 7 % pages * PAGE) as u64;
            queue.start(
                &mut files[tag % 2],
                offset,
                AlignedBuf::new(PAGE),
                tag as u64,
            );
            if tag % 50 == 0 {
                queue.submit();
                queue.collect(false, &mut out);
                check(&mut out, &mut seen);
            }
        }
        queue.submit();
        while seen.iter().any(|s| !s) {
            queue.collect(true, &mut out);
            check(&mut out, &mut seen);
        }
        assert_eq!(queue.in_flight, 0);
        for tag in 0..20u64 {
            queue.start(&mut files[0], 0, AlignedBuf::new(PAGE), tag);
        }
        queue.submit();
        drop(queue);
    }

    const PAGE: usize = super::super::PAGE_SIZE;
}
