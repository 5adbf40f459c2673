//! An in-memory disk with injectable faults, for crash tests and the simulator.
//!
//! Each file keeps two images: the *volatile* one that reads see, and the *durable* one
//! that survives [`FaultBackend::power_loss`]. Writes land in the volatile image and in a
//! list of pending operations; `sync` applies the pending list to the durable image.
//!
//! Every mutating call (`write_at`, `write_durable_at`, `sync`, `set_len`) is one numbered
//! *IO point*, counted across all files from 0. A [`Fault`] armed at point N fires there:
//! - `Fail(errno)`: that call fails with `EIO`/`ENOSPC` and changes nothing; later calls
//!   work (a transient error or a full disk that the caller must survive);
//! - `FailFrom(errno)`: that call and every later mutating call fail (a disk that stays full);
//! - `Crash { torn_sectors }`: the call applies only its first `torn_sectors` sectors (a
//!   torn write), then the disk stops: every later call fails with `EIO` until the test
//!   calls [`FaultBackend::power_loss`] and reopens the engine.
//!
//! At power loss, unsynced writes are dropped whole ([`PowerLoss::DropUnsynced`]) or sector
//! by sector at random ([`PowerLoss::KeepRandomSectors`]), since a device may persist the
//! sectors of one write in any order.
//!
//! The durability rules are as strict as a POSIX filesystem promises, no stricter:
//! - `sync` makes every earlier write and size change of that file durable;
//! - `write_durable_at` makes that one write durable, not the writes before it (as
//!   `RWF_DSYNC` would; the real backend syncs the whole file after the write, which
//!   promises more);
//! - a created file or directory survives a power loss only once its parent directory has
//!   been synced with [`Backend::sync_dir`] (and so has every directory above it that was
//!   created too); a file whose entry is lost is lost with all its data;
//! - a removed file is gone for `open` at once, but comes back whole at a power loss
//!   unless its directory was synced after the removal; handles opened before the removal
//!   keep reading it, as an unlinked file's descriptors do.

use super::{Backend, BlockFile, SECTOR_SIZE, assert_aligned};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A fault armed at one IO point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail this call with the given errno; later calls succeed.
    Fail(i32),
    /// Fail this and every later mutating call with the given errno.
    FailFrom(i32),
    /// Apply the first `torn_sectors` sectors of this write (all of it when larger),
    /// unsynced, then crash the disk before the call returns.
    Crash { torn_sectors: usize },
}

/// What survives a power loss of the writes that were not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerLoss {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// Each sector of each unsynced write survives with probability 1/2 (seeded).
    KeepRandomSectors(u64),
    /// Every unsynced write survives (the device had written its cache back).
    KeepUnsynced,
}

#[derive(Debug, Clone)]
enum Pending {
    /// A write not yet synced; `durable` when it was written by `write_durable_at` and so
    /// survives a power loss on its own.
    Write {
        offset: u64,
        data: Vec<u8>,
        durable: bool,
    },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct FileState {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Default, Clone)]
struct Disk {
    files: HashMap<PathBuf, FileState>,
    dirs: HashSet<PathBuf>,
    /// Files and directories whose entry in their parent directory is durable.
    durable_entries: HashSet<PathBuf>,
    /// Removed files, still readable through handles opened before; `true` once the
    /// removal is durable (their directory was synced since), else they come back at a
    /// power loss.
    removed: HashMap<PathBuf, (FileState, bool)>,
    io_points: u64,
    faults: HashMap<u64, Fault>,
    fail_from: Option<(u64, i32)>,
    crashed: bool,
    /// State of the deterministic stream behind `fill_random`.
    random_state: u64,
}

/// A shareable handle to one simulated disk.
#[derive(Debug, Default, Clone)]
pub struct FaultBackend {
    disk: Arc<Mutex<Disk>>,
}

impl FaultBackend {
    /// An empty disk with no faults armed.
    pub fn new() -> FaultBackend {
        FaultBackend::with_seed(0)
    }

    /// An empty disk whose `fill_random` stream starts from `seed`.
    pub fn with_seed(seed: u64) -> FaultBackend {
        let backend = FaultBackend::default();
        backend.disk.lock().unwrap().random_state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        backend
    }

    /// An independent disk with this one's contents, pending writes and IO point count
    /// (a test runs the same history from one state many times).
    pub fn deep_copy(&self) -> FaultBackend {
        FaultBackend {
            disk: Arc::new(Mutex::new(self.disk.lock().unwrap().clone())),
        }
    }

    /// Arms `fault` at IO point `point`.
    pub fn arm(&self, point: u64, fault: Fault) {
        let mut disk = self.disk.lock().unwrap();
        match fault {
            Fault::FailFrom(errno) => disk.fail_from = Some((point, errno)),
            _ => {
                disk.faults.insert(point, fault);
            }
        }
    }

    /// Clears every armed fault (the disk has room again, the error is gone).
    pub fn disarm(&self) {
        let mut disk = self.disk.lock().unwrap();
        disk.faults.clear();
        disk.fail_from = None;
    }

    /// How many IO points have been passed so far.
    pub fn io_points(&self) -> u64 {
        self.disk.lock().unwrap().io_points
    }

    /// Whether an armed `Crash` has fired.
    pub fn crashed(&self) -> bool {
        self.disk.lock().unwrap().crashed
    }

    /// Simulates a power loss: what was not synced is lost (as `mode` says), faults are
    /// cleared and the disk works again. Files opened before stay usable but should be
    /// dropped: the engine is expected to reopen.
    pub fn power_loss(&self, mode: PowerLoss) {
        let mut disk = self.disk.lock().unwrap();
        let mut rng = match mode {
            PowerLoss::KeepRandomSectors(seed) => seed | 1,
            _ => 0,
        };
        // Entries whose own or an ancestor's directory entry was never synced vanish.
        let Disk {
            files,
            dirs,
            durable_entries,
            removed,
            ..
        } = &mut *disk;
        for (path, (state, removal_durable)) in std::mem::take(removed) {
            if !removal_durable && !files.contains_key(&path) {
                files.insert(path, state);
            }
        }
        files.retain(|path, _| entry_survives(path, durable_entries));
        dirs.retain(|path| entry_survives(path, durable_entries));
        durable_entries.retain(|path| files.contains_key(path) || dirs.contains(path));
        let mut paths: Vec<PathBuf> = files.keys().cloned().collect();
        paths.sort();
        for path in paths {
            let file = files.get_mut(&path).expect("listed above");
            for op in std::mem::take(&mut file.pending) {
                match op {
                    Pending::Write {
                        offset,
                        data,
                        durable,
                    } => {
                        if durable || mode == PowerLoss::KeepUnsynced {
                            write_into(&mut file.durable, offset as usize, &data);
                        } else if let PowerLoss::KeepRandomSectors(_) = mode {
                            for (i, sector) in data.chunks(SECTOR_SIZE).enumerate() {
                                if xorshift(&mut rng) & 1 == 1 {
                                    let at = offset as usize + i * SECTOR_SIZE;
                                    write_into(&mut file.durable, at, sector);
                                }
                            }
                        }
                    }
                    Pending::SetLen(len) => {
                        let keep = match mode {
                            PowerLoss::KeepUnsynced => true,
                            PowerLoss::DropUnsynced => false,
                            PowerLoss::KeepRandomSectors(_) => xorshift(&mut rng) & 1 == 1,
                        };
                        if keep {
                            file.durable.resize(len as usize, 0);
                        }
                    }
                }
            }
            file.volatile = file.durable.clone();
        }
        disk.faults.clear();
        disk.fail_from = None;
        disk.crashed = false;
    }

    /// The bytes of a file that are durable now: synced data plus later durable
    /// writes (for tests that inspect or damage the image).
    pub fn durable_image(&self, path: &Path) -> Option<Vec<u8>> {
        let disk = self.disk.lock().unwrap();
        let file = disk.files.get(path)?;
        let mut image = file.durable.clone();
        for op in &file.pending {
            if let Pending::Write {
                offset,
                data,
                durable: true,
            } = op
            {
                write_into(&mut image, *offset as usize, data);
            }
        }
        Some(image)
    }

    /// Whether `path` (a file or a directory) would survive a power loss now.
    pub fn is_durable_entry(&self, path: &Path) -> bool {
        let disk = self.disk.lock().unwrap();
        (disk.files.contains_key(path) || disk.dirs.contains(path))
            && entry_survives(path, &disk.durable_entries)
    }

    /// Replaces a file's durable and volatile image (for tests that damage a file offline).
    pub fn replace_image(&self, path: &Path, image: Vec<u8>) {
        let mut disk = self.disk.lock().unwrap();
        disk.durable_entries.insert(path.to_path_buf());
        let file = disk.files.entry(path.to_path_buf()).or_default();
        file.volatile = image.clone();
        file.durable = image;
        file.pending.clear();
    }
}

/// Whether a path's entry, and that of every directory above it, is durable. The root
/// (and the current directory of a relative path) always exists.
fn entry_survives(path: &Path, durable_entries: &HashSet<PathBuf>) -> bool {
    path.ancestors()
        .filter(|p| p.file_name().is_some())
        .all(|p| durable_entries.contains(p))
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

fn write_into(image: &mut Vec<u8>, at: usize, data: &[u8]) {
    if image.len() < at + data.len() {
        image.resize(at + data.len(), 0);
    }
    image[at..at + data.len()].copy_from_slice(data);
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Backend for FaultBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BlockFile>> {
        let mut disk = self.disk.lock().unwrap();
        if disk.crashed {
            return Err(errno(libc::EIO));
        }
        if !disk.files.contains_key(path) {
            if !create {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such file", path.display()),
                ));
            }
            // The new entry is durable only once the parent directory is synced.
            disk.files.insert(path.to_path_buf(), FileState::default());
        }
        Ok(Box::new(FaultFile {
            disk: self.disk.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let disk = self.disk.lock().unwrap();
        disk.files.contains_key(path) || disk.dirs.contains(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if disk.crashed {
            return Err(errno(libc::EIO));
        }
        for dir in path.ancestors().filter(|p| p.file_name().is_some()) {
            disk.dirs.insert(dir.to_path_buf());
        }
        Ok(())
    }

    fn fill_random(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        for chunk in buf.chunks_mut(8) {
            let word = xorshift(&mut disk.random_state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        match disk.next_point() {
            Verdict::Proceed => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Tear(_) => return Err(errno(libc::EIO)),
        }
        let Disk {
            files,
            dirs,
            durable_entries,
            removed,
            ..
        } = &mut *disk;
        let children = files
            .keys()
            .chain(dirs.iter())
            .filter(|p| p.parent() == Some(dir));
        for child in children {
            durable_entries.insert(child.clone());
        }
        for (path, (_, removal_durable)) in removed.iter_mut() {
            if path.parent() == Some(dir) {
                *removal_durable = true;
                durable_entries.remove(path);
            }
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        match disk.next_point() {
            Verdict::Proceed => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Tear(_) => return Err(errno(libc::EIO)),
        }
        let Some(state) = disk.files.remove(path) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            ));
        };
        // A file created and removed before its directory was ever synced cannot come
        // back: its entry never reached the disk.
        let removal_durable = !entry_survives(path, &disk.durable_entries);
        disk.removed
            .insert(path.to_path_buf(), (state, removal_durable));
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let disk = self.disk.lock().unwrap();
        if disk.crashed {
            return Err(errno(libc::EIO));
        }
        if !disk.dirs.contains(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", dir.display()),
            ));
        }
        Ok(disk
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
}

struct FaultFile {
    disk: Arc<Mutex<Disk>>,
    path: PathBuf,
}

/// What an IO point should do, decided before it touches any state.
enum Verdict {
    Proceed,
    Fail(io::Error),
    Tear(usize),
}

impl Disk {
    /// The state behind an open handle: the file, or the removed file it still reads.
    fn state(&self, path: &Path) -> &FileState {
        self.files
            .get(path)
            .or_else(|| self.removed.get(path).map(|(state, _)| state))
            .expect("an open handle's file exists or was removed")
    }

    fn state_mut(&mut self, path: &Path) -> &mut FileState {
        match self.files.get_mut(path) {
            Some(state) => state,
            None => {
                &mut self
                    .removed
                    .get_mut(path)
                    .expect("an open handle's file exists or was removed")
                    .0
            }
        }
    }

    fn next_point(&mut self) -> Verdict {
        if self.crashed {
            return Verdict::Fail(errno(libc::EIO));
        }
        let point = self.io_points;
        self.io_points += 1;
        if let Some((from, code)) = self.fail_from
            && point >= from
        {
            return Verdict::Fail(errno(code));
        }
        match self.faults.remove(&point) {
            None => Verdict::Proceed,
            Some(Fault::Fail(code)) | Some(Fault::FailFrom(code)) => Verdict::Fail(errno(code)),
            Some(Fault::Crash { torn_sectors }) => {
                self.crashed = true;
                Verdict::Tear(torn_sectors)
            }
        }
    }
}

impl FaultFile {
    fn write(&mut self, buf: &[u8], offset: u64, durable: bool) -> io::Result<()> {
        assert_aligned(offset, buf.len());
        let mut disk = self.disk.lock().unwrap();
        let (keep, crashed) = match disk.next_point() {
            Verdict::Proceed => (buf.len(), false),
            Verdict::Fail(e) => return Err(e),
            Verdict::Tear(sectors) => (sectors.saturating_mul(SECTOR_SIZE).min(buf.len()), true),
        };
        let file = disk.state_mut(&self.path);
        let data = &buf[..keep];
        write_into(&mut file.volatile, offset as usize, data);
        file.pending.push(Pending::Write {
            offset,
            data: data.to_vec(),
            // A torn write never completed, so its durability promised nothing.
            durable: durable && !crashed,
        });
        if crashed {
            // The data (or part of it) reached the device's cache, but the caller never
            // hears of it: the machine died first.
            return Err(errno(libc::EIO));
        }
        Ok(())
    }
}

fn apply_pending(file: &mut FileState) {
    for op in std::mem::take(&mut file.pending) {
        match op {
            Pending::Write { offset, data, .. } => {
                write_into(&mut file.durable, offset as usize, &data)
            }
            Pending::SetLen(len) => file.durable.resize(len as usize, 0),
        }
    }
}

impl BlockFile for FaultFile {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        assert_aligned(offset, buf.len());
        let disk = self.disk.lock().unwrap();
        if disk.crashed {
            return Err(errno(libc::EIO));
        }
        let image = &disk.state(&self.path).volatile;
        let start = (offset as usize).min(image.len());
        let end = (start + buf.len()).min(image.len());
        let n = (end - start) / SECTOR_SIZE * SECTOR_SIZE;
        buf[..n].copy_from_slice(&image[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset, false)
    }

    fn write_durable_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(buf, offset, true)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        match disk.next_point() {
            Verdict::Proceed => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Tear(_) => return Err(errno(libc::EIO)),
        }
        apply_pending(disk.state_mut(&self.path));
        Ok(())
    }

    fn len(&mut self) -> io::Result<u64> {
        let disk = self.disk.lock().unwrap();
        if disk.crashed {
            return Err(errno(libc::EIO));
        }
        Ok(disk.state(&self.path).volatile.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        match disk.next_point() {
            Verdict::Proceed => {}
            Verdict::Fail(e) => return Err(e),
            Verdict::Tear(_) => return Err(errno(libc::EIO)),
        }
        let file = disk.state_mut(&self.path);
        file.volatile.resize(len as usize, 0);
        file.pending.push(Pending::SetLen(len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector(byte: u8) -> Vec<u8> {
        vec![byte; SECTOR_SIZE]
    }

    #[test]
    fn unsynced_writes_are_lost_at_power_loss() {
        let disk = FaultBackend::new();
        let path = Path::new("/f");
        let mut f = disk.open(path, true).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        f.write_at(&sector(1), 0).unwrap();
        f.sync().unwrap();
        f.write_at(&sector(2), 0).unwrap();
        let mut buf = sector(0);
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, sector(2), "reads see unsynced data");
        disk.power_loss(PowerLoss::DropUnsynced);
        let mut f = disk.open(path, false).unwrap();
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, sector(1));
    }

    #[test]
    fn crash_tears_a_write_and_stops_the_disk() {
        let disk = FaultBackend::new();
        let path = Path::new("/f");
        let mut f = disk.open(path, true).unwrap();
        disk.sync_dir(Path::new("/")).unwrap();
        disk.arm(1, Fault::Crash { torn_sectors: 1 });
        let mut data = sector(7);
        data.extend(sector(8));
        assert!(f.write_durable_at(&data, 0).is_err());
        assert!(disk.crashed());
        assert!(f.sync().is_err(), "a crashed disk refuses IO");
        disk.power_loss(PowerLoss::KeepRandomSectors(3));
        let image = disk.durable_image(path).unwrap();
        assert!(
            image.len() <= SECTOR_SIZE,
            "only the first sector could persist"
        );
    }

    #[test]
    fn fail_once_then_recover() {
        let disk = FaultBackend::new();
        let mut f = disk.open(Path::new("/f"), true).unwrap();
        disk.arm(1, Fault::Fail(libc::ENOSPC));
        f.write_at(&sector(1), 0).unwrap();
        let err = f.write_at(&sector(2), 512).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        f.write_at(&sector(3), 512).unwrap();
        assert_eq!(f.len().unwrap(), 1024);
    }

    #[test]
    fn a_created_file_needs_its_directory_synced() {
        let disk = FaultBackend::new();
        disk.create_dir_all(Path::new("/a/b")).unwrap();
        let path = Path::new("/a/b/f");
        let mut f = disk.open(path, true).unwrap();
        f.write_durable_at(&sector(1), 0).unwrap();
        f.sync().unwrap();
        assert!(!disk.is_durable_entry(path));
        disk.power_loss(PowerLoss::KeepUnsynced);
        assert!(
            !disk.exists(path),
            "a file whose entry was never synced is gone"
        );
        assert!(!disk.exists(Path::new("/a")), "so are unsynced directories");

        // Syncing only the file's own directory is not enough while /a is not durable.
        disk.create_dir_all(Path::new("/a/b")).unwrap();
        let mut f = disk.open(path, true).unwrap();
        f.write_durable_at(&sector(2), 0).unwrap();
        disk.sync_dir(Path::new("/a/b")).unwrap();
        disk.power_loss(PowerLoss::DropUnsynced);
        assert!(!disk.exists(path));

        // With every created level synced, the file and its durable data survive.
        crate::storage::io::create_dir_durable(&disk, Path::new("/a/b")).unwrap();
        let mut f = crate::storage::io::open_durable(&disk, path).unwrap();
        f.write_durable_at(&sector(3), 0).unwrap();
        assert!(disk.is_durable_entry(path));
        disk.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(disk.durable_image(path).unwrap(), sector(3));
    }

    #[test]
    fn a_dsync_write_persists_only_itself() {
        let disk = FaultBackend::new();
        let path = Path::new("/f");
        let mut f = crate::storage::io::open_durable(&disk, path).unwrap();
        f.write_at(&sector(1), 0).unwrap();
        f.write_durable_at(&sector(2), 512).unwrap();
        disk.power_loss(PowerLoss::DropUnsynced);
        let mut expected = sector(0);
        expected.extend(sector(2));
        assert_eq!(
            disk.durable_image(path).unwrap(),
            expected,
            "the earlier plain write was never synced"
        );
        // A later unsynced write kept at power loss does not undo an earlier durable one,
        // and one kept sector by sector lands in order.
        let mut f = disk.open(path, false).unwrap();
        f.write_durable_at(&sector(4), 0).unwrap();
        f.write_at(&sector(5), 512).unwrap();
        disk.power_loss(PowerLoss::KeepUnsynced);
        let mut expected = sector(4);
        expected.extend(sector(5));
        assert_eq!(disk.durable_image(path).unwrap(), expected);
    }

    #[test]
    fn a_removal_is_durable_only_once_its_directory_is_synced() {
        let disk = FaultBackend::new();
        crate::storage::io::create_dir_durable(&disk, Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        let mut f = crate::storage::io::open_durable(&disk, path).unwrap();
        f.write_durable_at(&sector(6), 0).unwrap();
        disk.remove_file(path).unwrap();
        assert!(!disk.exists(path), "gone for open at once");
        assert!(disk.open(path, false).is_err());
        let mut buf = sector(0);
        f.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, sector(6), "an open handle still reads it");
        assert_eq!(
            disk.list_dir(Path::new("/d")).unwrap(),
            Vec::<String>::new()
        );
        disk.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(
            disk.durable_image(path),
            Some(sector(6)),
            "an unsynced removal is undone by a power loss"
        );
        crate::storage::io::remove_durable(&disk, path).unwrap();
        disk.power_loss(PowerLoss::KeepUnsynced);
        assert!(!disk.exists(path), "a synced removal stays");
    }
}
