//! LEB128 variable-length integers and zig-zag encoding. Records use the
//! zig-zag form everywhere, as Kafka's `varint` (i32 values) and `varlong`
//! (i64); the unsigned form is what lies beneath it.

/// The most bytes a `u64` takes as LEB128.
pub const VARINT_BYTES_MAX: usize = 10;

/// Appends `value` as unsigned LEB128.
pub fn put_uvarint(out: &mut impl bytes::BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Appends `value` zigzag-encoded, so that small negative numbers stay short.
pub fn put_varint(out: &mut impl bytes::BufMut, value: i64) {
    put_uvarint(out, zigzag_encode(value));
}

/// Decodes an unsigned LEB128 from the start of `buf`: `(value, bytes read)`.
///
/// Returns `None` when `buf` ends inside the varint or it runs past 10 bytes.
pub fn get_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (index, byte) in buf.iter().take(VARINT_BYTES_MAX).enumerate() {
        let bits = u64::from(byte & 0x7f);
        let shift = 7 * index as u32;
        if index == VARINT_BYTES_MAX - 1 && *byte > 1 {
            return None; // More than 64 bits.
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, index + 1));
        }
    }
    None
}

/// Decodes a zigzag varint from the start of `buf`: `(value, bytes read)`.
pub fn get_varint(buf: &[u8]) -> Option<(i64, usize)> {
    get_uvarint(buf).map(|(value, used)| (zigzag_decode(value), used))
}

/// The number of bytes `value` takes as unsigned LEB128.
pub fn uvarint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The number of bytes `value` takes as a zigzag varint.
pub fn varint_len(value: i64) -> usize {
    uvarint_len(zigzag_encode(value))
}

fn zigzag_encode(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trips(value: u64) {
            let mut buf = Vec::new();
            put_uvarint(&mut buf, value);
            prop_assert_eq!(buf.len(), uvarint_len(value));
            prop_assert_eq!(get_uvarint(&buf), Some((value, buf.len())));
            prop_assert_eq!(get_uvarint(&buf[..buf.len() - 1]), None);
        }

        #[test]
        fn varint_round_trips(value: i64) {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            prop_assert_eq!(buf.len(), varint_len(value));
            prop_assert_eq!(get_varint(&buf), Some((value, buf.len())));
        }

        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let _ = get_uvarint(&bytes);
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        assert_eq!(get_uvarint(&[0xff; 11]), None);
        assert_eq!(
            get_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
        assert_eq!(
            get_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
    }
}
