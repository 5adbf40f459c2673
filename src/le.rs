//! Fixed-size little-endian fields read out of bytes that came from a disk or a peer,
//! never past the end of the bytes: a field that does not fit reads as `None`.

/// The `N` bytes at `at`.
pub fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..)?.first_chunk::<N>().copied()
}

/// The little-endian `u32` at `at`.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `at`.
pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    array(bytes, at).map(u64::from_le_bytes)
}

/// The little-endian `u128` at `at`.
pub fn u128_at(bytes: &[u8], at: usize) -> Option<u128> {
    array(bytes, at).map(u128::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_past_the_end_are_none() {
        let bytes = [1u8, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(u64_at(&bytes, 0), Some(1));
        assert_eq!(u64_at(&bytes, 1), Some(2 << 56));
        assert_eq!(u64_at(&bytes, 2), None);
        assert_eq!(u64_at(&bytes, usize::MAX), None);
        assert_eq!(u128_at(&bytes, 0), None);
        assert_eq!(array::<0>(&bytes, 9), Some([]));
    }
}
