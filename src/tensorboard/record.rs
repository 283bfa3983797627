//! The TFRecord framing of event files: each record is its length (u64, little-endian), the
//! masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.

/// TFRecord's CRC mask: rotate right by 15 bits and add a constant.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one record.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// Why the records of a file stop before its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The file ends inside a record (a write cut off).
    #[error("the file ends inside the record at byte {offset}")]
    Truncated {
        /// Where the record starts.
        offset: usize,
    },
    /// A CRC does not match.
    #[error("the {what} CRC of the record at byte {offset} does not match")]
    Crc {
        /// Where the record starts.
        offset: usize,
        /// `length` or `data`.
        what: &'static str,
    },
}

/// The records of `bytes` in order, and what stopped the reading early, if anything (the
/// records before a damaged one are kept).
pub fn unframe(bytes: &[u8]) -> (Vec<&[u8]>, Option<Damage>) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 12) else {
            return (out, Some(Damage::Truncated { offset: at }));
        };
        let (len, crc) = head.split_at(8);
        if masked_crc(len).to_le_bytes() != crc {
            return (
                out,
                Some(Damage::Crc {
                    offset: at,
                    what: "length",
                }),
            );
        }
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| (at + 12).checked_add(n))
            .and_then(|e| e.checked_add(4));
        let Some(record) = end.and_then(|end| bytes.get(at + 12..end)) else {
            return (out, Some(Damage::Truncated { offset: at }));
        };
        let (data, crc) = record.split_at(record.len() - 4);
        if masked_crc(data).to_le_bytes() != crc {
            return (
                out,
                Some(Damage::Crc {
                    offset: at,
                    what: "data",
                }),
            );
        }
        out.push(data);
        at += 16 + data.len();
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masked_crc_is_tensorflows() {
        // CRC-32C("123456789") = 0xE3069283 (the standard check value), masked as TFRecord
        // masks it.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc(b"123456789"),
            0xE306_9283u32.rotate_right(15) + 0xa282_ead8
        );
        // An empty record as TensorFlow's own writer frames it: length 0, then the masked CRCs
        // of the eight zero bytes and of nothing.
        let r = frame(b"");
        assert_eq!(r.len(), 16);
        assert_eq!(&r[8..12], &masked_crc(&[0; 8]).to_le_bytes());
        assert_eq!(&r[12..], &0xa282_ead8u32.to_le_bytes());
    }

    #[test]
    fn records_read_back_and_damage_stops_the_reading() {
        let mut file = frame(b"first");
        file.extend(frame(b"second record"));
        let (records, damage) = unframe(&file);
        assert_eq!(records, [&b"first"[..], &b"second record"[..]]);
        assert_eq!(damage, None);
        // Cut inside the second record: the first is kept.
        let (records, damage) = unframe(&file[..file.len() - 3]);
        assert_eq!(records, [&b"first"[..]]);
        assert_eq!(damage, Some(Damage::Truncated { offset: 21 }));
        // A flipped data byte.
        let mut bad = file.clone();
        bad[35] ^= 1;
        let (records, damage) = unframe(&bad);
        assert_eq!(records.len(), 1);
        assert_eq!(
            damage,
            Some(Damage::Crc {
                offset: 21,
                what: "data"
            })
        );
        // A flipped length byte.
        bad = file;
        bad[0] ^= 1;
        assert_eq!(
            unframe(&bad).1,
            Some(Damage::Crc {
                offset: 0,
                what: "length"
            })
        );
    }
}
