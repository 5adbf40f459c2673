//! The durable Raft hard state (term, vote, commit) of one node.
//!
//! Two 4 KiB slots, written alternately with one durable O_DIRECT write each; on open
//! the valid slot with the higher sequence wins, so a torn write of one slot leaves the
//! other intact.
//!
//! ```text
//! slot
//!   0  8  magic     b"OLHARD\0\x01"
//!   8  8  sequence
//!  16  8  term
//!  24  8  vote
//!  32  8  commit
//!  40 16  xxh3-128 of bytes 0..40
//! ```

use crate::le;
use crate::storage::io::{AlignedBuf, Backend, BlockFile, PAGE_SIZE};
use raft::eraftpb::HardState;
use std::io;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_128;

const MAGIC: [u8; 8] = *b"OLHARD\0\x01";
const HASHED: usize = 40;

/// The hard-state file.
pub struct HardStateFile {
    file: Box<dyn BlockFile>,
    sequence: u64,
    current: HardState,
}

impl HardStateFile {
    /// Opens (or creates) `dir/raft.state`.
    pub fn open(backend: &dyn Backend, dir: &Path) -> io::Result<HardStateFile> {
        let mut file = crate::storage::io::open_durable(backend, &dir.join("raft.state"))?;
        let mut buf = AlignedBuf::new(2 * PAGE_SIZE);
        let n = file.read_at(&mut buf, 0)?;
        let mut best: Option<(u64, HardState)> = None;
        for slot in 0..n / PAGE_SIZE {
            if let Some((seq, hs)) = decode(&buf[slot * PAGE_SIZE..(slot + 1) * PAGE_SIZE])
                && best.as_ref().is_none_or(|(s, _)| seq > *s)
            {
                best = Some((seq, hs));
            }
        }
        let (sequence, current) = best.unwrap_or_default();
        Ok(HardStateFile {
            file,
            sequence,
            current,
        })
    }

    /// The last saved hard state.
    pub fn get(&self) -> &HardState {
        &self.current
    }

    /// Saves `hs` durably.
    pub fn save(&mut self, hs: &HardState) -> io::Result<()> {
        let sequence = self.sequence + 1;
        let mut page = AlignedBuf::new(PAGE_SIZE);
        page[..8].copy_from_slice(&MAGIC);
        for (i, v) in [sequence, hs.term, hs.vote, hs.commit].iter().enumerate() {
            page[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let hash = xxh3_128(&page[..HASHED]);
        page[HASHED..HASHED + 16].copy_from_slice(&hash.to_le_bytes());
        let slot = (sequence % 2) * PAGE_SIZE as u64;
        self.file.write_durable_at(&page, slot)?;
        self.sequence = sequence;
        self.current = hs.clone();
        Ok(())
    }
}

fn decode(page: &[u8]) -> Option<(u64, HardState)> {
    if le::array(page, 0) != Some(MAGIC) {
        return None;
    }
    if le::u128_at(page, HASHED)? != xxh3_128(page.get(..HASHED)?) {
        return None;
    }
    let u = |i: usize| le::u64_at(page, 8 + i * 8);
    let hs = HardState {
        term: u(1)?,
        vote: u(2)?,
        commit: u(3)?,
        ..Default::default()
    };
    Some((u(0)?, hs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io::fault::{Fault, FaultBackend, PowerLoss};

    #[test]
    fn survives_reopen_and_a_torn_save() {
        let disk = FaultBackend::new();
        let dir = Path::new("/n");
        crate::storage::io::create_dir_durable(&disk, dir).unwrap();
        let mut f = HardStateFile::open(&disk, dir).unwrap();
        assert_eq!(f.get(), &HardState::default());
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 10,
            ..Default::default()
        };
        f.save(&hs).unwrap();
        let mut later = hs.clone();
        later.term = 4;
        disk.arm(disk.io_points(), Fault::Crash { torn_sectors: 0 });
        assert!(f.save(&later).is_err());
        disk.power_loss(PowerLoss::DropUnsynced);
        let f = HardStateFile::open(&disk, dir).unwrap();
        assert_eq!(f.get(), &hs);
    }
}
