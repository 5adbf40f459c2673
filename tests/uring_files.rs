//! The io_uring backend on real O_DIRECT files: batched reads land in their own buffers.
//!
//! Method: write pages with distinct contents, then read them back in batches larger
//! than one ring's worth, in a scrambled order, with reads past the end of the file mixed
//! in; every buffer must hold its own page (or report zero bytes past the end), whatever
//! order the device completes the reads in.

use ocean_liner::storage::io::uring::UringBackend;
use ocean_liner::storage::io::{AlignedBuf, Backend, PAGE_SIZE};

#[test]
fn batched_reads_land_in_their_own_buffers() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("pages");
    let pages = 300u64;
    let mut file = UringBackend.open(&path, true).unwrap();
    let mut image = AlignedBuf::new(pages as usize * PAGE_SIZE);
    for (p, page) in image.chunks_mut(PAGE_SIZE).enumerate() {
        page.fill((p % 251) as u8);
        page[..8].copy_from_slice(&(p as u64).to_le_bytes());
    }
    file.write_durable_at(&image, 0).unwrap();
    for round in 0..3u64 {
        // A scrambled order, a third of the reads past the end of the file.
        let order: Vec<u64> = (0..pages + pages / 2)
            .map(|i| (i * 7919 + round * 31) % (pages + pages / 2))
            .collect();
        let mut reads: Vec<(u64, AlignedBuf)> = order
            .iter()
            .map(|&p| (p * PAGE_SIZE as u64, AlignedBuf::new(PAGE_SIZE)))
            .collect();
        let results = file.read_batch(&mut reads);
        assert_eq!(results.len(), reads.len());
        for ((&p, (_, buf)), result) in order.iter().zip(&reads).zip(results) {
            let n = result.unwrap();
            if p >= pages {
                assert_eq!(n, 0, "page {p} lies past the end");
                continue;
            }
            assert_eq!(n, PAGE_SIZE, "page {p}");
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), p);
            assert!(buf[8..].iter().all(|&b| b == (p % 251) as u8), "page {p}");
        }
    }
}
