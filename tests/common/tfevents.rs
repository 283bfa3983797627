//! An event-file reader written from the format's definition, independent of kiln's writer:
//! TFRecord framing (u64 length, masked CRC-32C of the length, data, masked CRC-32C of the
//! data) and the protobuf wire format of TensorBoard's `Event` (field numbers from
//! `tensorboard/compat/proto/event.proto` and `summary.proto`).

use std::path::{Path, PathBuf};

/// One summary value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// `simple_value` (field 2).
    Scalar(f32),
    /// A string tensor (field 8: dtype 7, `string_val`) with plugin `text` (field 9).
    Text(String),
}

/// One event, decoded.
#[derive(Debug, Clone, Default)]
pub struct Ev {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    /// `SessionLog.status`.
    pub session_status: Option<u64>,
    pub values: Vec<(String, Val)>,
}

fn masked(bytes: &[u8]) -> u32 {
    let c = crc32c::crc32c(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The records of a file; panics (a test failure) on a bad CRC or a torn record.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = &bytes[at..at + 8];
        let n = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(crc, masked(len), "length CRC of the record at {at}");
        let data = &bytes[at + 12..at + 12 + n];
        let crc = u32::from_le_bytes(bytes[at + 12 + n..at + 16 + n].try_into().unwrap());
        assert_eq!(crc, masked(data), "data CRC of the record at {at}");
        out.push(data);
        at += 16 + n;
    }
    out
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long")
}

/// The (field number, wire value) pairs of one message: varints and fixed-width values as
/// their bits, length-delimited ones as their bytes.
enum Wire<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(b: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = varint(b, &mut at);
        let w = match key & 7 {
            0 => Wire::Int(varint(b, &mut at)),
            1 => {
                at += 8;
                Wire::Int(u64::from_le_bytes(b[at - 8..at].try_into().unwrap()))
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                Wire::Bytes(&b[at - n..at])
            }
            5 => {
                at += 4;
                Wire::Int(u64::from(u32::from_le_bytes(
                    b[at - 4..at].try_into().unwrap(),
                )))
            }
            t => panic!("wire type {t}"),
        };
        out.push((key >> 3, w));
    }
    out
}

fn bytes<'a>(w: &Wire<'a>) -> &'a [u8] {
    match w {
        Wire::Bytes(b) => b,
        Wire::Int(_) => panic!("expected a length-delimited field"),
    }
}

fn int(w: &Wire) -> u64 {
    match w {
        Wire::Int(v) => *v,
        Wire::Bytes(_) => panic!("expected a number"),
    }
}

fn value(b: &[u8]) -> (String, Val) {
    let (mut tag, mut val, mut plugin) = (String::new(), None, None);
    for (f, w) in fields(b) {
        match f {
            1 => tag = String::from_utf8(bytes(&w).to_vec()).unwrap(),
            2 => val = Some(Val::Scalar(f32::from_bits(int(&w) as u32))),
            8 => {
                let mut dtype = 0;
                let mut s = None;
                for (f, w) in fields(bytes(&w)) {
                    match f {
                        1 => dtype = int(&w),
                        8 => s = Some(String::from_utf8(bytes(&w).to_vec()).unwrap()),
                        _ => {}
                    }
                }
                assert_eq!(dtype, 7, "a text tensor is DT_STRING");
                val = s.map(Val::Text);
            }
            9 => {
                for (f, w) in fields(bytes(&w)) {
                    if f == 1 {
                        for (f, w) in fields(bytes(&w)) {
                            if f == 1 {
                                plugin = Some(String::from_utf8(bytes(&w).to_vec()).unwrap());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let val = val.unwrap_or_else(|| panic!("value `{tag}` has no scalar or tensor"));
    if matches!(val, Val::Text(_)) {
        assert_eq!(
            plugin.as_deref(),
            Some("text"),
            "`{tag}` names the text plugin"
        );
    }
    (tag, val)
}

/// Decode one `Event`.
pub fn event(b: &[u8]) -> Ev {
    let mut e = Ev::default();
    for (f, w) in fields(b) {
        match f {
            1 => e.wall_time = f64::from_bits(int(&w)),
            2 => e.step = int(&w) as i64,
            3 => e.file_version = Some(String::from_utf8(bytes(&w).to_vec()).unwrap()),
            5 => {
                for (f, w) in fields(bytes(&w)) {
                    assert_eq!(f, 1, "Summary has only `value`");
                    e.values.push(value(bytes(&w)));
                }
            }
            7 => {
                for (f, w) in fields(bytes(&w)) {
                    if f == 1 {
                        e.session_status = Some(int(&w));
                    }
                }
            }
            _ => {}
        }
    }
    e
}

/// The event files directly in `dir`, sorted by name (TensorBoard's order).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .collect();
    v.sort();
    v
}

/// Every event of the event files in `dir`, in order.
pub fn events(dir: &Path) -> Vec<Ev> {
    files(dir)
        .iter()
        .flat_map(|p| {
            let b = std::fs::read(p).unwrap();
            records(&b).into_iter().map(event).collect::<Vec<_>>()
        })
        .collect()
}

/// The `(step, value)` of every scalar tagged `tag` in `events`.
pub fn scalars(events: &[Ev], tag: &str) -> Vec<(i64, f32)> {
    events
        .iter()
        .flat_map(|e| {
            e.values.iter().filter_map(move |(t, v)| match v {
                Val::Scalar(x) if t == tag => Some((e.step, *x)),
                _ => None,
            })
        })
        .collect()
}

/// The `(step, text)` of every text tagged `tag`.
pub fn texts(events: &[Ev], tag: &str) -> Vec<(i64, String)> {
    events
        .iter()
        .flat_map(|e| {
            e.values.iter().filter_map(move |(t, v)| match v {
                Val::Text(x) if t == tag => Some((e.step, x.clone())),
                _ => None,
            })
        })
        .collect()
}
