//! The tensor types of a GGUF file, read from its header before anything is loaded, so a file
//! holding a type genq does not run is refused with the tensor and the type named (candle's own
//! reader stops at the first unknown type id without saying which tensor has it).
//!
//! Only the header is parsed: metadata values are skipped by their encoded sizes, tensor data is
//! never read. Loading the weights is [`super::model`]'s business.

use std::io::{self, Read, Seek, SeekFrom};

/// GGML type ids genq loads, with their names: floats, the legacy 4/5/8-bit blocks and the K-quants
/// of 4 to 6 bits.
pub(crate) const SUPPORTED: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (30, "BF16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
];

/// Names of the GGML types genq refuses, for the error message.
const OTHERS: &[(u32, &str)] = &[
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// A header that cannot be read, or a tensor of a type genq does not run.
#[derive(Debug, thiserror::Error)]
pub enum GgufTypeError {
    /// The file is not GGUF, or its header is cut short or inconsistent.
    #[error("not a readable GGUF header: {0}")]
    Header(String),
    /// A tensor's type is not in [`SUPPORTED`].
    #[error(
        "tensor `{tensor}` has type {type_name}; genq loads {} only",
        supported_names()
    )]
    Unsupported {
        /// The tensor's name.
        tensor: String,
        /// The type's GGML name, or `GGML type id <id>` for an id genq does not know.
        type_name: String,
    },
}

impl From<io::Error> for GgufTypeError {
    fn from(e: io::Error) -> Self {
        GgufTypeError::Header(e.to_string())
    }
}

fn supported_names() -> String {
    SUPPORTED.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// The GGML name of type `id` (`GGML type id 99` when unknown).
pub(crate) fn type_name(id: u32) -> String {
    SUPPORTED
        .iter()
        .chain(OTHERS)
        .find(|(i, _)| *i == id)
        .map_or_else(|| format!("GGML type id {id}"), |(_, n)| n.to_string())
}

/// Fails on the first tensor of `file` whose type genq does not load; leaves the reader at the
/// start of the file.
pub(crate) fn check<R: Read + Seek>(file: &mut R) -> Result<(), GgufTypeError> {
    file.seek(SeekFrom::Start(0))?;
    let types = tensor_types(&mut io::BufReader::new(&mut *file))?;
    file.seek(SeekFrom::Start(0))?;
    match types.into_iter().find(|(_, id)| !SUPPORTED.iter().any(|(s, _)| s == id)) {
        Some((tensor, id)) => Err(GgufTypeError::Unsupported { tensor, type_name: type_name(id) }),
        None => Ok(()),
    }
}

/// Every tensor's name and GGML type id, in header order.
pub(crate) fn tensor_types<R: Read + Seek>(r: &mut R) -> Result<Vec<(String, u32)>, GgufTypeError> {
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(GgufTypeError::Header(format!("magic {magic:?}, expected \"GGUF\"")));
    }
    let version = u32_at(r)?;
    // Version 1 counted in u32; 2 and 3 in u64.
    let count = |r: &mut R| -> io::Result<u64> {
        if version == 1 {
            u32_at(r).map(u64::from)
        } else {
            u64_at(r)
        }
    };
    let tensors = count(r)?;
    let kvs = count(r)?;
    for _ in 0..kvs {
        skip_string(r, version)?;
        let ty = u32_at(r)?;
        skip_value(r, ty, version)?;
    }
    // Each tensor info holds at least a name length, a rank, a type and an offset.
    let mut out = Vec::with_capacity(tensors.min(1 << 16) as usize);
    for _ in 0..tensors {
        let name = read_string(r, version)?;
        let dims = u32_at(r)?;
        if dims > 8 {
            return Err(GgufTypeError::Header(format!("tensor `{name}` has {dims} dimensions")));
        }
        for _ in 0..dims {
            count(r)?;
        }
        let id = u32_at(r)?;
        u64_at(r)?;
        out.push((name, id));
    }
    Ok(out)
}

fn u32_at(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_at(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn string_len(r: &mut impl Read, version: u32) -> io::Result<u64> {
    if version == 1 {
        u32_at(r).map(u64::from)
    } else {
        u64_at(r)
    }
}

fn skip_string<R: Read + Seek>(r: &mut R, version: u32) -> Result<(), GgufTypeError> {
    let n = string_len(r, version)?;
    skip(r, n)
}

fn read_string(r: &mut impl Read, version: u32) -> Result<String, GgufTypeError> {
    let n = string_len(r, version)?;
    if n > 1 << 16 {
        return Err(GgufTypeError::Header(format!("a tensor name of {n} bytes")));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

fn skip<R: Read + Seek>(r: &mut R, n: u64) -> Result<(), GgufTypeError> {
    let n = i64::try_from(n).map_err(|_| GgufTypeError::Header(format!("a length of {n} bytes")))?;
    r.seek(SeekFrom::Current(n))?;
    Ok(())
}

/// Bytes of one value of a fixed-size metadata type; `None` for strings and arrays.
fn fixed_size(ty: u32) -> Result<Option<u64>, GgufTypeError> {
    Ok(match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        other => return Err(GgufTypeError::Header(format!("unknown metadata value type {other}"))),
    })
}

fn skip_value<R: Read + Seek>(r: &mut R, ty: u32, version: u32) -> Result<(), GgufTypeError> {
    if let Some(n) = fixed_size(ty)? {
        return skip(r, n);
    }
    if ty == 8 {
        return skip_string(r, version);
    }
    let item = u32_at(r)?;
    let len = string_len(r, version)?;
    match fixed_size(item)? {
        Some(n) => skip(r, n.checked_mul(len).ok_or_else(|| GgufTypeError::Header("array too long".into()))?),
        None => {
            for _ in 0..len {
                skip_value(r, item, version)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::*;

    /// A GGUF with string, array and number metadata and one tensor per type in `dtypes`.
    fn gguf(dtypes: &[GgmlDType]) -> Vec<u8> {
        let tensors: Vec<(String, QTensor)> = dtypes
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let t = Tensor::ones((2, 256), candle_core::DType::F32, &Device::Cpu).expect("tensor");
                (format!("blk.{i}.w"), QTensor::quantize(&t, d).expect("quantize"))
            })
            .collect();
        let words = gguf_file::Value::Array(vec![
            gguf_file::Value::String("a".into()),
            gguf_file::Value::String("bc".into()),
        ]);
        let meta = [
            ("general.architecture", gguf_file::Value::String("llama".into())),
            ("tokenizer.ggml.tokens", words),
            ("llama.block_count", gguf_file::Value::U32(1)),
            ("x.f", gguf_file::Value::F64(1.5)),
        ];
        let meta: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &meta, &refs).expect("write");
        out.into_inner()
    }

    #[test]
    fn reads_every_tensor_name_and_type_past_the_metadata() {
        let bytes = gguf(&[GgmlDType::F32, GgmlDType::Q4K, GgmlDType::Q8_0]);
        let types = tensor_types(&mut Cursor::new(bytes)).expect("header");
        assert_eq!(types, vec![("blk.0.w".into(), 0), ("blk.1.w".into(), 12), ("blk.2.w".into(), 8)]);
    }

    #[test]
    fn a_tensor_of_an_unsupported_type_is_named_with_its_type() {
        let mut file = Cursor::new(gguf(&[GgmlDType::Q8_0, GgmlDType::Q2K]));
        let err = check(&mut file).expect_err("Q2_K is refused").to_string();
        assert!(err.contains("`blk.1.w`") && err.contains("Q2_K") && err.contains("Q4_K"), "{err}");
        assert!(check(&mut Cursor::new(gguf(&[GgmlDType::Q5_1, GgmlDType::Q6K]))).is_ok());
    }

    #[test]
    fn a_type_id_nobody_knows_is_refused_by_number() {
        let mut bytes = gguf(&[GgmlDType::Q8_0]);
        // The last tensor info ends with its type (u32) and offset (u64): rewrite the type.
        let at = bytes.windows(7).position(|w| w == b"blk.0.w").expect("name") + 7 + 4 + 16;
        bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        let err = check(&mut Cursor::new(bytes)).expect_err("type 99").to_string();
        assert!(err.contains("`blk.0.w` has type GGML type id 99;"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_is_a_header_error() {
        let err = check(&mut Cursor::new(b"PK\x03\x04 not a model".to_vec())).expect_err("zip");
        assert!(matches!(err, GgufTypeError::Header(_)), "{err}");
    }
}
