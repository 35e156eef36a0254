//! Our own reader for the GGUF header: metadata and the tensor table.
//!
//! MLX's loader gives tensor data but no way to list metadata keys, and it quietly
//! turns some tensor types into float16 (or, for types it does not know, returns no
//! tensors at all). Reading the header ourselves lets us check every tensor's type and
//! extent before handing the file to MLX, and gives typed metadata.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric value as f64 (rope bases and epsilons are stored as f32).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// ggml tensor type ids, as written in the tensor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const BF16: GgmlType = GgmlType(30);

    pub fn name(self) -> String {
        let known = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            other => return format!("unknown type {other}"),
        };
        known.to_string()
    }

    /// (elements per block, bytes per block) for the types we convert.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            _ => None,
        }
    }

    /// Bits per weight in MLX's affine format, for the block-quantized types.
    pub fn quant_bits(self) -> Option<u32> {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 => Some(4),
            GgmlType::Q8_0 => Some(8),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order (fastest-moving first), as stored.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub data_offset: u64,
}

impl TensorInfo {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape as MLX reports it (ggml order reversed).
    pub fn mlx_shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub file_len: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
}

/// A byte reader that knows how much of the file is left, so that no length read from
/// the file can make us allocate more than the file could hold.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl<R: Read> Cursor<R> {
    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.clone(),
            what: format!("{what} at byte {} runs past the end of the file", self.pos),
        }
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(self.truncated(what));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(what)
            } else {
                GgufError::Io {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let v = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&v);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let raw = self.bytes(n, what)?;
        String::from_utf8(raw).map_err(|_| GgufError::Malformed {
            path: self.path.clone(),
            what: format!("{what} is not valid UTF-8"),
        })
    }

    fn value(&mut self, value_type: u32, key: &str, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => MetaValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => MetaValue::String(self.string(key)?),
            9 if depth == 0 => {
                let item_type = self.u32(key)?;
                let count = self.u64(key)?;
                // Every item takes at least one byte, so a count larger than what is
                // left of the file is corrupt; checking first bounds the allocation.
                if count > self.len.saturating_sub(self.pos) {
                    return Err(self.truncated(key));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::Malformed {
                    path: self.path.clone(),
                    what: format!("metadata {key:?} has unknown value type {other}"),
                })
            }
        })
    }
}

/// Reads the metadata and tensor table of a GGUF file and checks that every tensor's
/// data lies inside the file.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let io_err = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut cur = Cursor {
        inner: BufReader::with_capacity(1 << 20, file),
        pos: 0,
        len: file_len,
        path: path.to_path_buf(),
    };

    let not_gguf = || GgufError::NotGguf {
        path: path.to_path_buf(),
    };
    let magic: [u8; 4] = cur.array("magic").map_err(|_| not_gguf())?;
    if &magic != MAGIC {
        return Err(not_gguf());
    }
    let version = cur.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let tensor_count = cur.u64("tensor count")?;
    let kv_count = cur.u64("metadata count")?;

    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = cur.string("metadata key")?;
        let value_type = cur.u32(&key)?;
        let value = cur.value(value_type, &key, 0)?;
        metadata.insert(key, value);
    }

    let mut tensors = Vec::new();
    let mut relative_offsets = Vec::new();
    for _ in 0..tensor_count {
        let name = cur.string("tensor name")?;
        let n_dims = cur.u32(&name)?;
        if n_dims == 0 || n_dims > 4 {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                what: format!("tensor {name:?} has {n_dims} dimensions"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cur.u64(&name)?);
        }
        let ggml_type = GgmlType(cur.u32(&name)?);
        relative_offsets.push(cur.u64(&name)?);
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            data_offset: 0,
        });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::Malformed {
                    path: path.to_path_buf(),
                    what: format!("general.alignment {v:?} is not a power of two"),
                })
            }
        },
    };
    let data_start = cur.pos.div_ceil(alignment) * alignment;
    for (tensor, rel) in tensors.iter_mut().zip(relative_offsets) {
        tensor.data_offset = data_start.saturating_add(rel);
    }

    Ok(GgufHeader {
        path: path.to_path_buf(),
        metadata,
        tensors,
        file_len,
    })
}

/// Checks a tensor of a supported type: its shape fits whole blocks and its bytes lie
/// inside the file.
pub fn check_tensor_extent(header: &GgufHeader, tensor: &TensorInfo) -> Result<(), GgufError> {
    let Some((block_elems, block_bytes)) = tensor.ggml_type.block_layout() else {
        return Err(GgufError::UnsupportedTensorType {
            path: header.path.clone(),
            tensor: tensor.name.clone(),
            ggml_type: tensor.ggml_type.name(),
        });
    };
    let elems = tensor.element_count();
    if !tensor.dims[0].is_multiple_of(block_elems) {
        return Err(GgufError::Malformed {
            path: header.path.clone(),
            what: format!(
                "tensor {:?} has rows of {} elements, not a multiple of the {}-element {} block",
                tensor.name,
                tensor.dims[0],
                block_elems,
                tensor.ggml_type.name()
            ),
        });
    }
    let nbytes = (elems / block_elems).saturating_mul(block_bytes);
    if tensor.data_offset.saturating_add(nbytes) > header.file_len {
        return Err(GgufError::Truncated {
            path: header.path.clone(),
            what: format!(
                "tensor {:?} ({} bytes at byte {}) runs past the end of the {}-byte file",
                tensor.name, nbytes, tensor.data_offset, header.file_len
            ),
        });
    }
    Ok(())
}
