//! The file IO seam.
//!
//! Every byte the storage engine reads or writes goes through [`Backend`] and
//! [`BlockFile`]. Two implementations exist:
//!
//! - [`uring::UringBackend`]: real files opened with `O_DIRECT`, read and written through a
//!   per-file io_uring. A durable write is the write, then a data sync of the file.
//! - [`fault::FaultBackend`]: an in-memory disk that keeps a durable image and a list of
//!   writes not yet synced, and can fail the Nth write with `EIO` or `ENOSPC`, tear a write
//!   at a sector boundary, and lose every unsynced write at "power loss". Crash tests and the
//!   cluster simulator run the same engine code on it.
//!
//! Invariant (checked by both backends): every buffer, offset and length handed to
//! `read_at`/`write_at` is a multiple of [`SECTOR_SIZE`], as `O_DIRECT` demands. Callers
//! work in [`PAGE_SIZE`] units and allocate their buffers with [`AlignedBuf`].

pub mod fault;
pub mod uring;

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::Path;

/// The unit of O_DIRECT alignment this crate guarantees (the device's logical block size
/// may be smaller; never larger on the hosts we support).
pub const SECTOR_SIZE: usize = 512;
/// The unit of every on-disk structure: log entries start on it, map pages are it.
pub const PAGE_SIZE: usize = 4096;
const _: () = assert!(PAGE_SIZE.is_multiple_of(SECTOR_SIZE));

/// Opens and manages files. Shared between threads; each opened file is owned by one.
///
/// Creating a file or a directory adds an entry to its parent directory, and that entry
/// is durable only once the parent is synced ([`Backend::sync_dir`]): a file that was
/// written and synced can still vanish at a power loss if its directory never was.
/// [`open_durable`] and [`create_dir_durable`] do both steps.
pub trait Backend: Send + Sync {
    /// Opens `path` for reading and writing, creating it (empty) when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BlockFile>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Creates a directory and its parents (not durable until their parents are synced).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of directory `dir` durable (fsync of the directory): files
    /// created in it and files removed from it.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Removes a file's directory entry (not durable until its directory is synced).
    /// Handles already open keep reading it, as an unlinked file on Linux does.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names of the files (not directories) in `dir`, in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Fills `buf` with random bytes that nobody outside can predict (the map's hash
    /// secret). Part of the seam so that simulated disks stay deterministic.
    fn fill_random(&self, buf: &mut [u8]) -> io::Result<()>;
    /// Reads a batch spanning files: each group's `(offset, buffer)` pairs from its file,
    /// as [`BlockFile::read_batch`] does. Returns the bytes read for each read, group by
    /// group in order. The real backend puts every read of every file in flight at once;
    /// by default each file's reads are a batch of their own, one file after another.
    fn read_many(&self, groups: &mut [FileReads<'_>]) -> Vec<io::Result<usize>> {
        read_file_by_file(groups)
    }
    /// A queue of reads kept in flight across calls (see [`ReadQueue`]). The real backend
    /// gives one on a ring of its own; by default each read is done when it is started.
    fn read_queue(&self) -> Box<dyn ReadQueue> {
        Box::new(ImmediateReads::default())
    }
}

/// A read a [`ReadQueue`] finished: its tag, its buffer, and the bytes read.
pub type FinishedRead = (u64, AlignedBuf, io::Result<usize>);

/// Reads started now and collected later, so that the disk works while the caller does
/// something else (a shard receiving more GETs). A read owns its buffer until it is
/// collected; its file must stay open until then.
pub trait ReadQueue: Send {
    /// Starts reading `buf.len()` bytes at `offset` of `file` into `buf`, to be collected
    /// under `tag`. Handed to the device at the next [`ReadQueue::submit`] (or sooner,
    /// when the queue is full and waits for a read to finish first).
    fn start(&mut self, file: &mut dyn BlockFile, offset: u64, buf: AlignedBuf, tag: u64);
    /// Hands every started read to the device.
    fn submit(&mut self);
    /// Moves the reads that have finished into `out`; with `wait`, first waits for one to
    /// finish if none has and some are in flight.
    fn collect(&mut self, wait: bool, out: &mut Vec<FinishedRead>);
}

/// [`ReadQueue`] reading each file as its read starts (backends with no queue of their
/// own, such as the simulated disk).
#[derive(Default)]
pub struct ImmediateReads {
    done: Vec<FinishedRead>,
}

impl ReadQueue for ImmediateReads {
    fn start(&mut self, file: &mut dyn BlockFile, offset: u64, mut buf: AlignedBuf, tag: u64) {
        let result = file.read_at(&mut buf, offset);
        self.done.push((tag, buf, result));
    }

    fn submit(&mut self) {}

    fn collect(&mut self, _wait: bool, out: &mut Vec<FinishedRead>) {
        out.append(&mut self.done);
    }
}

/// One file's share of a batch of reads spanning files ([`Backend::read_many`]).
pub struct FileReads<'a> {
    /// The file, opened by the backend the batch goes to.
    pub file: &'a mut dyn BlockFile,
    /// Its reads: each fills the buffer from the offset.
    pub reads: &'a mut [(u64, AlignedBuf)],
}

/// [`Backend::read_many`] as one [`BlockFile::read_batch`] per file, in order.
fn read_file_by_file(groups: &mut [FileReads<'_>]) -> Vec<io::Result<usize>> {
    let mut results = Vec::new();
    for group in groups.iter_mut() {
        results.extend(group.file.read_batch(group.reads));
    }
    results
}

/// The directory holding `path` (`.` for a bare relative name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes `path` and makes the removal durable (syncs its directory) before returning.
pub fn remove_durable(backend: &dyn Backend, path: &Path) -> io::Result<()> {
    backend.remove_file(path)?;
    backend.sync_dir(parent_dir(path))
}

/// Opens `path`, creating it if absent; a file it creates has a durable directory entry
/// before this returns.
pub fn open_durable(backend: &dyn Backend, path: &Path) -> io::Result<Box<dyn BlockFile>> {
    let existed = backend.exists(path);
    let file = backend.open(path, true)?;
    if !existed {
        backend.sync_dir(parent_dir(path))?;
    }
    Ok(file)
}

/// Creates `dir` and any missing parents, and makes each new entry durable by syncing
/// the directory that holds it.
pub fn create_dir_durable(backend: &dyn Backend, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .filter(|p| p.file_name().is_some())
        .take_while(|p| !backend.exists(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    backend.create_dir_all(dir)?;
    for created in missing {
        backend.sync_dir(parent_dir(created))?;
    }
    Ok(())
}

/// One open file. All offsets and lengths are sector-aligned.
pub trait BlockFile: Send {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (short only at
    /// end of file, and then rounded down to a sector).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Reads each `(offset, buffer)` pair, filling the buffer from its offset; returns the
    /// bytes read for each. The real backend submits them together, so they proceed in
    /// parallel on the device.
    fn read_batch(&mut self, reads: &mut [(u64, AlignedBuf)]) -> Vec<io::Result<usize>> {
        reads
            .iter_mut()
            .map(|(offset, buf)| self.read_at(buf, *offset))
            .collect()
    }
    /// Writes all of `buf` at `offset`. Not durable until [`BlockFile::sync`].
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset` and makes it durable before returning.
    fn write_durable_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.sync()
    }
    /// Makes every completed write durable (data and the file size).
    fn sync(&mut self) -> io::Result<()>;
    /// The file's size in bytes.
    fn len(&mut self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&mut self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) the file. Durable after [`BlockFile::sync`].
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// The file descriptor behind the file, for a backend that submits requests for
    /// several of its files together; `None` for a file that has none.
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
}

/// Panics unless `offset` and `len` are sector-aligned: a misaligned O_DIRECT request is a
/// programming error, not an operating one.
pub(crate) fn assert_aligned(offset: u64, len: usize) {
    assert!(
        offset.is_multiple_of(SECTOR_SIZE as u64) && len.is_multiple_of(SECTOR_SIZE),
        "unaligned IO: offset {offset} len {len}"
    );
}

/// Rounds `n` up to a multiple of `to` (a power of two).
pub const fn align_up(n: usize, to: usize) -> usize {
    (n + to - 1) & !(to - 1)
}

/// A zeroed, page-aligned heap buffer whose length is a multiple of [`PAGE_SIZE`], as
/// O_DIRECT requires.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes rounded up to a page.
    pub fn new(len: usize) -> AlignedBuf {
        let len = align_up(len.max(1), PAGE_SIZE);
        let layout = Layout::from_size_align(len, PAGE_SIZE).expect("buffer layout");
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        AlignedBuf { ptr, len }
    }

    /// A buffer holding a copy of `bytes`, zero-padded to a page.
    pub fn from_slice(bytes: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::new(bytes.len());
        buf[..bytes.len()].copy_from_slice(bytes);
        buf
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len, PAGE_SIZE).expect("buffer layout");
        // SAFETY: allocated in `new` with this very layout.
        unsafe { dealloc(self.ptr, layout) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> AlignedBuf {
        AlignedBuf::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` if the file
/// is shorter.
pub fn read_exact_at(file: &mut dyn BlockFile, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let n = file.read_at(buf, offset)?;
    if n < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read at offset {offset}: {n} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}
