//! The TFRecord framing of an event file: length, checksums and data.

/// Added to the rotated CRC so that a checksum of data holding checksums stays strong.
const MASK_DELTA: u32 = 0xa282_ead8;

/// TFRecord's masked CRC32C of `bytes`.
pub(crate) fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// One record: u64 length, masked CRC of the length, data, masked CRC of the data (all LE).
pub(crate) fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_check_value() {
        // The CRC-32C (Castagnoli) check value of the standard test string.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn mask_rotates_and_adds() {
        // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8, as TensorBoard's
        // record_writer.masked_crc32c gives for the same bytes.
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn frame_holds_length_checksums_and_data() {
        let out = frame(b"abc");
        assert_eq!(out.len(), 3 + 16);
        assert_eq!(&out[..8], &3u64.to_le_bytes());
        assert_eq!(&out[8..12], &masked_crc(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&out[12..15], b"abc");
        assert_eq!(&out[15..], &masked_crc(b"abc").to_le_bytes());
    }
}
