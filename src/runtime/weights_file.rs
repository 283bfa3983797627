//! Weights on disk: safetensors files of named f32 tensors, each tensor and each metadata
//! entry with its SHA-256 in the header, verified on every load, so that a damaged file is
//! refused instead of trained or evaluated on.
//!
//! kiln's metadata and the checksums are one header entry, `kiln`: JSON with sorted keys, so
//! that the same weights always give the same bytes (safetensors writes its metadata map in
//! hash order).

use super::{Weights, WeightsError};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The header entry that holds kiln's metadata and the checksums.
const KILN: &str = "kiln";

/// The `kiln` header entry.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Header {
    metadata: BTreeMap<String, String>,
    checksums: Checksums,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The checksums kiln writes: per tensor (of its little-endian bytes) and per metadata entry.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Checksums {
    tensors: BTreeMap<String, String>,
    metadata: BTreeMap<String, String>,
}

/// Encode named f32 tensors as safetensors bytes (names sorted).
pub fn to_safetensors(values: &Weights) -> Result<Vec<u8>, WeightsError> {
    to_safetensors_with(values, None)
}

/// Like [`to_safetensors`], with string metadata in the header.
pub fn to_safetensors_with(
    values: &Weights,
    meta: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, WeightsError> {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort();
    let mut sums = Checksums::default();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = names
        .iter()
        .map(|n| {
            let (data, shape) = &values[*n];
            let b: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            sums.tensors.insert((*n).clone(), sha256_hex(&b));
            ((*n).clone(), b, shape.clone())
        })
        .collect();
    let metadata: BTreeMap<String, String> = meta.unwrap_or_default().into_iter().collect();
    for (k, v) in &metadata {
        sums.metadata.insert(k.clone(), sha256_hex(v.as_bytes()));
    }
    let header = Header {
        metadata,
        checksums: sums,
    };
    let meta = HashMap::from([(
        KILN.to_string(),
        serde_json::to_string(&header).expect("header serializes"),
    )]);
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map_err(|e| WeightsError::Format(e.to_string()))?;
            Ok((n.clone(), view))
        })
        .collect::<Result<_, WeightsError>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| WeightsError::Format(e.to_string()))
}

/// kiln's metadata of a safetensors file, verified against its checksums (a file kiln did not
/// write: its header metadata as it is), and the checksums of its tensors.
fn header(bytes: &[u8]) -> Result<(BTreeMap<String, String>, Option<Checksums>), WeightsError> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Format(e.to_string()))?;
    verified(header.metadata().clone().unwrap_or_default())
}

/// A file's `__metadata__` with kiln's entries checked against their checksums.
fn verified(
    meta: HashMap<String, String>,
) -> Result<(BTreeMap<String, String>, Option<Checksums>), WeightsError> {
    let Some(text) = meta.get(KILN) else {
        return Ok((meta.into_iter().collect(), None));
    };
    let h: Header = serde_json::from_str(text)
        .map_err(|_| WeightsError::Corrupt("its checksum table is damaged".to_string()))?;
    let keys: Vec<&String> = h.metadata.keys().collect();
    if keys != h.checksums.metadata.keys().collect::<Vec<_>>() {
        return Err(WeightsError::Corrupt(
            "its metadata entries do not match the checksum table".to_string(),
        ));
    }
    for (k, v) in &h.metadata {
        if h.checksums.metadata.get(k) != Some(&sha256_hex(v.as_bytes())) {
            return Err(WeightsError::Corrupt(format!(
                "its metadata `{k}` does not match the checksum written with it"
            )));
        }
    }
    Ok((h.metadata, Some(h.checksums)))
}

/// The verified metadata of the safetensors file at `path`, read from its header alone (its
/// tensors are neither read nor checked).
pub fn file_metadata(path: &Path) -> Result<BTreeMap<String, String>, WeightsError> {
    use std::io::Read;
    let format = |e: String| WeightsError::Format(e);
    let mut f = std::fs::File::open(path).map_err(|e| format(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| format("it is shorter than a safetensors header".into()))?;
    // safetensors caps its header at 100 MB.
    let n = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|&n| n <= 100_000_000)
        .ok_or_else(|| format("its header length is not a safetensors one".into()))?;
    // Nothing is allocated for a header the file cannot hold.
    if f.metadata().map_or(0, |m| m.len()) < n as u64 + 8 {
        return Err(format("its header is cut short".into()));
    }
    let mut text = vec![0u8; n];
    f.read_exact(&mut text)
        .map_err(|_| format("its header is cut short".into()))?;
    #[derive(serde::Deserialize)]
    struct Top {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let top: Top = serde_json::from_slice(&text).map_err(|e| format(e.to_string()))?;
    verified(top.metadata).map(|(m, _)| m)
}

/// The verified metadata of a safetensors file (see [`to_safetensors_with`]).
pub fn metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>, WeightsError> {
    header(bytes).map(|(m, _)| m)
}

/// Decode safetensors bytes into named f32 tensors, verifying the checksums kiln wrote (files
/// of other writers carry none and are read as they are) and that every value is finite.
pub fn from_safetensors(bytes: &[u8]) -> Result<Weights, WeightsError> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::Format(e.to_string()))?;
    let (_, sums) = header(bytes)?;
    if let Some(sums) = &sums {
        if sums.tensors.len() != st.len() {
            return Err(WeightsError::Corrupt(format!(
                "it holds {} tensors, but {} were written",
                st.len(),
                sums.tensors.len()
            )));
        }
    }
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(WeightsError::Format(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        if let Some(sums) = &sums {
            if sums.tensors.get(&name) != Some(&sha256_hex(view.data())) {
                return Err(WeightsError::Corrupt(format!(
                    "tensor `{name}` does not match the checksum written with it"
                )));
            }
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(WeightsError::Corrupt(format!(
                "tensor `{name}` holds a non-finite value ({} at index {i})",
                data[i]
            )));
        }
        out.insert(name, (data, view.shape().to_vec()));
    }
    Ok(out)
}

/// Read weights saved by [`super::Runtime::save`]; a damaged file is an error naming it.
pub fn load_weights(path: &Path) -> Result<Weights, WeightsError> {
    let bytes = std::fs::read(path).map_err(|e| {
        WeightsError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read `{}`: {e}", path.display()),
        ))
    })?;
    from_safetensors(&bytes).map_err(|e| in_file(e, path))
}

/// `e` with the file it is about named in its message.
pub fn in_file(e: WeightsError, path: &Path) -> WeightsError {
    match e {
        WeightsError::Corrupt(m) => {
            WeightsError::Corrupt(format!("`{}` is damaged: {m}", path.display()))
        }
        WeightsError::Format(m) => WeightsError::Format(format!("`{}`: {m}", path.display())),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Weights {
        HashMap::from([
            ("a".to_string(), (vec![1.0, -2.0, 3.5], vec![3])),
            ("b".to_string(), (vec![0.25; 4], vec![2, 2])),
        ])
    }

    /// The byte offset of tensor `name`'s data in a safetensors file.
    fn data_offset(bytes: &[u8], name: &str) -> usize {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let view = st.tensor(name).unwrap();
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        assert!(start >= 8 + n);
        start
    }

    #[test]
    fn files_round_trip_and_damage_is_refused() {
        let meta = HashMap::from([("kiln_state".to_string(), "{\"step\":3}".to_string())]);
        let bytes = to_safetensors_with(&sample(), Some(meta.clone())).unwrap();
        assert_eq!(from_safetensors(&bytes).unwrap(), sample());
        assert_eq!(
            metadata(&bytes).unwrap(),
            meta.clone().into_iter().collect()
        );
        // The same content gives the same bytes (the metadata is not in hash order).
        let mut more = meta.clone();
        more.insert("other".into(), "x".into());
        let once = to_safetensors_with(&sample(), Some(more.clone())).unwrap();
        for _ in 0..8 {
            let mut shuffled: HashMap<String, String> = HashMap::new();
            shuffled.extend(more.clone());
            assert_eq!(
                to_safetensors_with(&sample(), Some(shuffled)).unwrap(),
                once
            );
        }

        // One tensor scaled by 3: a valid float, a wrong weight.
        let mut scaled = bytes.clone();
        let at = data_offset(&scaled, "a");
        scaled[at..at + 4].copy_from_slice(&3.0f32.to_le_bytes());
        let e = from_safetensors(&scaled).unwrap_err().to_string();
        assert!(e.contains("tensor `a` does not match"), "{e}");

        // NaN bytes.
        let mut nan = bytes.clone();
        let at = data_offset(&nan, "b");
        nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(matches!(
            from_safetensors(&nan),
            Err(WeightsError::Corrupt(_))
        ));

        // The state edited in the header (same length, so the header still parses).
        let at = bytes
            .windows(4)
            .position(|w| w == b"step")
            .expect("the state is in the header");
        let three = at + bytes[at..].iter().position(|&b| b == b'3').unwrap();
        let mut edited = bytes.clone();
        edited[three] = b'4';
        let e = from_safetensors(&edited).unwrap_err().to_string();
        assert!(e.contains("metadata `kiln_state`"), "{e}");
    }

    #[test]
    fn files_without_checksums_load_but_non_finite_values_do_not() {
        let plain = |w: &Weights| {
            let views: Vec<(String, Vec<u8>, Vec<usize>)> = w
                .iter()
                .map(|(n, (d, s))| {
                    (
                        n.clone(),
                        d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        s.clone(),
                    )
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView)> = views
                .iter()
                .map(|(n, b, s)| {
                    let v =
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                            .unwrap();
                    (n.clone(), v)
                })
                .collect();
            safetensors::serialize(views, None).unwrap()
        };
        assert_eq!(from_safetensors(&plain(&sample())).unwrap(), sample());
        let mut bad = sample();
        bad.get_mut("a").unwrap().0[1] = f32::INFINITY;
        let e = from_safetensors(&plain(&bad)).unwrap_err().to_string();
        assert!(e.contains("non-finite value (inf at index 1)"), "{e}");
    }

    #[test]
    fn a_files_metadata_is_read_from_its_header_alone() {
        let meta = HashMap::from([("kiln_state".to_string(), "{\"step\":3}".to_string())]);
        let bytes = to_safetensors_with(&sample(), Some(meta)).unwrap();
        let dir = std::env::temp_dir().join(format!("kiln-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(file_metadata(&path).unwrap(), metadata(&bytes).unwrap());
        // The tensors are not read: a file cut after its header still gives its metadata.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        std::fs::write(&path, &bytes[..8 + n]).unwrap();
        assert_eq!(file_metadata(&path).unwrap(), metadata(&bytes).unwrap());
        // A damaged entry is refused, as when the whole file is read.
        let mut damaged = bytes[..8 + n].to_vec();
        let at = damaged.windows(4).position(|w| w == b"step").unwrap();
        damaged[at + 1] = b'o';
        std::fs::write(&path, damaged).unwrap();
        assert!(file_metadata(&path).is_err());
        std::fs::write(&path, &bytes[..8 + n / 2]).unwrap();
        assert!(file_metadata(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
