//! LEB128 varints, zigzag for signed ones: the integers of the record encoding ([`crate::codec`])
//! and of the stream log's records. Small numbers, the common case for lengths, counts and
//! deltas, take one or two bytes.
//!
//! Reading is bounds-checked and says why it failed, so each format reports a damaged varint
//! in its own terms. The functions are `#[inline]`: other crates' codecs (the stream log's)
//! call them for every field of every record.

/// The most bytes a varint of 64 bits takes.
pub const MAX_LEN: usize = 10;

/// Why bytes do not start with a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The bytes end before the varint does.
    Truncated,
    /// Its [`MAX_LEN`] bytes hold more than 64 bits, or it runs on past them.
    Overflow,
}

/// Appends `value` to `buf`.
#[inline]
pub fn put(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Appends `value`, zigzag-encoded, to `buf`.
#[inline]
pub fn put_zigzag(buf: &mut Vec<u8>, value: i64) {
    put(buf, zigzag(value));
}

/// Appends the length of `bytes` as a varint, then `bytes`.
#[inline]
pub fn put_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    put(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// The bytes [`put`] takes for `value`.
#[inline]
pub fn len(value: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The bytes [`put_zigzag`] takes for `value`.
#[inline]
pub fn zigzag_len(value: i64) -> usize {
    len(zigzag(value))
}

/// Maps small negative and positive numbers alike to small unsigned ones.
#[inline]
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline]
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// The varint at the start of `bytes`, and how many bytes it takes.
#[inline]
pub fn read(bytes: &[u8]) -> Result<(u64, usize), Malformed> {
    let mut value = 0u64;
    for (i, shift) in (0..64).step_by(7).enumerate() {
        let byte = *bytes.get(i).ok_or(Malformed::Truncated)?;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(Malformed::Overflow);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(Malformed::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_round_trip_in_their_predicted_length() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut buf = Vec::new();
            put(&mut buf, value);
            assert_eq!(buf.len(), len(value), "length of {value}");
            assert_eq!(read(&buf), Ok((value, buf.len())));
        }
        for value in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(value)), value);
            let mut buf = Vec::new();
            put_zigzag(&mut buf, value);
            assert_eq!(buf.len(), zigzag_len(value));
        }
    }

    #[test]
    fn reading_stops_at_the_varint() {
        assert_eq!(read(&[0x80, 0x01, 0xff]), Ok((128, 2)));
        let mut buf = Vec::new();
        put_prefixed(&mut buf, b"abc");
        assert_eq!(buf, [3, b'a', b'b', b'c']);
    }

    #[test]
    fn damaged_varints_say_why() {
        assert_eq!(read(&[]), Err(Malformed::Truncated));
        assert_eq!(read(&[0x80, 0x80]), Err(Malformed::Truncated));
        // Ten bytes whose last holds more than the 64th bit.
        let mut long = vec![0xff; 9];
        long.push(0x02);
        assert_eq!(read(&long), Err(Malformed::Overflow));
        // Eleven bytes: it never ends within the ten a u64 takes.
        let mut endless = vec![0xff; 9];
        endless.extend([0x81, 0x00]);
        assert_eq!(read(&endless), Err(Malformed::Overflow));
    }
}
