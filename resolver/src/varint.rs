//! LEB128 varints, the numbers and lengths of the resolver's stored forms: seven bits a byte,
//! low first, the high bit set on every byte but the last.

/// Appends `v`.
pub fn write(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// The bytes [`write`] appends for `v`.
pub fn len(mut v: u64) -> usize {
    let mut bytes = 1;
    while v >= 0x80 {
        bytes += 1;
        v >>= 7;
    }
    bytes
}

/// A varint taken off the front of `rest`; `None` if it is cut short or overflows 64 bits.
pub fn read(rest: &mut &[u8]) -> Option<u64> {
    let (mut v, mut shift) = (0u64, 0u32);
    loop {
        let (&byte, tail) = rest.split_first()?;
        *rest = tail;
        // The tenth byte holds the 64th bit only.
        if shift == 63 && byte & 0x7e != 0 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}
