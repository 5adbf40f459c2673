//! Real files: `O_DIRECT` reads and writes submitted through io_uring.
//!
//! Each open file owns a small ring, so a file can be driven from whichever thread owns it
//! without locking. Calls are synchronous from the caller's point of view (submit, then
//! wait for the completion): the engine above keeps IO batched into large writes, which is
//! where io_uring's saving lies, and stays free of async runtimes so that the simulator can
//! drive it step by step.
//!
//! Durable writes set `RWF_DSYNC` on the write itself, so data and the metadata needed to
//! read it back reach stable storage in one submission instead of write + fdatasync.

use super::{Backend, BlockFile, assert_aligned};
use io_uring::{IoUring, opcode, types};
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
    ring: IoUring,
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
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring_setup failed ({e}); io_uring may be disabled \
                     (sysctl kernel.io_uring_disabled) or blocked by seccomp: see kernel-notes.md"
                ),
            )
        })?;
        Ok(UringFile { file, ring })
    }

    /// Submits one request and waits for its completion, returning the result.
    fn submit_one(&mut self, entry: io_uring::squeue::Entry) -> io::Result<usize> {
        // SAFETY: the buffers referenced by `entry` are borrowed by our caller for the whole
        // duration of this call, and we wait for the completion before returning.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
        let cqe = self
            .ring
            .completion()
            .next()
            .ok_or_else(|| io::Error::other("io_uring completion missing"))?;
        let res = cqe.result();
        if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        }
    }

    fn write_with_flags(&mut self, buf: &[u8], offset: u64, rw_flags: i32) -> io::Result<()> {
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
            .rw_flags(rw_flags)
            .build();
            let n = self.submit_one(entry)?;
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
            let n = self.submit_one(entry)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    fn read_batch(&mut self, reads: &mut [(u64, super::AlignedBuf)]) -> Vec<io::Result<usize>> {
        let mut results: Vec<io::Result<usize>> = Vec::with_capacity(reads.len());
        for chunk in reads.chunks_mut(RING_ENTRIES as usize) {
            let base = results.len();
            for (i, (offset, buf)) in chunk.iter_mut().enumerate() {
                assert_aligned(*offset, buf.len());
                let entry = opcode::Read::new(
                    types::Fd(self.file.as_raw_fd()),
                    buf.as_mut_ptr(),
                    buf.len() as u32,
                )
                .offset(*offset)
                .build()
                .user_data(i as u64);
                // SAFETY: each buffer stays borrowed until every completion of this chunk
                // has been reaped below.
                unsafe {
                    self.ring
                        .submission()
                        .push(&entry)
                        .expect("the ring holds a whole chunk");
                }
                results.push(Err(io::Error::other("read not completed")));
            }
            let mut done = 0;
            while done < chunk.len() {
                match self.ring.submit_and_wait(chunk.len() - done) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        // Requests already submitted must finish before their buffers go.
                        let _ = self.ring.submit_and_wait(chunk.len() - done);
                        for r in &mut results[base + done..] {
                            *r = Err(io::Error::new(e.kind(), e.to_string()));
                        }
                        return results;
                    }
                }
                for cqe in self.ring.completion() {
                    let i = cqe.user_data() as usize;
                    let res = cqe.result();
                    results[base + i] = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res as usize)
                    };
                    done += 1;
                }
            }
        }
        results
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_with_flags(buf, offset, 0)
    }

    fn write_durable_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_with_flags(buf, offset, libc::RWF_DSYNC)
    }

    fn sync(&mut self) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(self.file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit_one(entry).map(|_| ())
    }

    fn len(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
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
