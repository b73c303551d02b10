//! GGUF (versions 2 and 3, little-endian) container parser.
//!
//! File layout:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × { key: string, value_type: u32, value }
//! tensor_count      × { name: string, n_dims: u32, dims: n_dims × u64, type: u32, offset: u64 }
//! padding to `general.alignment` (default 32)
//! tensor data (each tensor at data_start + offset)
//! ```
//!
//! A string is `len: u64` followed by `len` UTF-8 bytes. An array value is
//! `elem_type: u32, count: u64, count × value` (elements may themselves be
//! arrays). `dims[0]` is the innermost (contiguous, "row") dimension.
//!
//! The parser treats its input as hostile: every length is checked against
//! the bytes that remain before anything is allocated, all arithmetic is
//! checked, and tensor byte ranges are validated (in bounds, aligned, not
//! overlapping) up front, so [`Gguf::tensor_bytes`] cannot fail.

use std::collections::HashMap;

use thiserror::Error;

use super::quant::{GgmlType, QuantError};

/// Default alignment of the tensor data section and of each tensor.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array nesting accepted (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;

/// Errors produced while parsing or querying a GGUF file.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GgufError {
    /// The file ended in the middle of a field.
    #[error(
        "unexpected end of file at offset {offset}: need {needed} bytes for {what}, {remaining} remain"
    )]
    UnexpectedEof {
        /// Offset of the field.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file.
        remaining: u64,
        /// What was being read.
        what: &'static str,
    },
    /// The file does not start with `GGUF`.
    #[error("bad magic {found:02x?} (expected \"GGUF\")")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// Version other than 2 or 3.
    #[error(
        "unsupported GGUF version {version} (supported: 2, 3; a big-endian file would read as a huge number)"
    )]
    UnsupportedVersion {
        /// Version read (as little-endian).
        version: u32,
    },
    /// A count or length cannot possibly fit in the bytes that remain.
    #[error(
        "{what} at offset {offset}: count/length {count} cannot fit in the {remaining} bytes that remain"
    )]
    CountTooLarge {
        /// What was being counted.
        what: &'static str,
        /// Offset of the count field.
        offset: u64,
        /// The count read.
        count: u64,
        /// Bytes left after the count field.
        remaining: u64,
    },
    /// A string is not valid UTF-8.
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the string's bytes.
        offset: u64,
    },
    /// Unknown metadata value type id.
    #[error("unknown metadata value type {type_id} at offset {offset}")]
    UnknownValueType {
        /// Offset of the type field.
        offset: u64,
        /// The id read.
        type_id: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("arrays nested deeper than {MAX_ARRAY_DEPTH} at offset {offset}")]
    ArrayTooDeep {
        /// Offset of the innermost array header.
        offset: u64,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor {
        /// The tensor name.
        name: String,
    },
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment = {value} is not a nonzero power of two")]
    BadAlignment {
        /// The value found.
        value: u64,
    },
    /// A tensor's `n_dims` is 0 or more than [`MAX_DIMS`].
    #[error("tensor {name:?}: n_dims = {n_dims} (must be 1..={MAX_DIMS})")]
    BadDimCount {
        /// Tensor name.
        name: String,
        /// The count read.
        n_dims: u32,
    },
    /// A tensor dimension is zero.
    #[error("tensor {name:?}: dimension {index} is zero")]
    ZeroDim {
        /// Tensor name.
        name: String,
        /// Which dimension.
        index: usize,
    },
    /// The product of the dimensions, or the byte size, overflows.
    #[error("tensor {name:?}: element count or byte size overflows")]
    TensorSizeOverflow {
        /// Tensor name.
        name: String,
    },
    /// A tensor's element type is not supported, or its row length is not a whole number of blocks.
    #[error("tensor {name:?}: {source}")]
    TensorType {
        /// Tensor name.
        name: String,
        /// Underlying type error.
        source: QuantError,
    },
    /// A tensor offset is not a multiple of the alignment.
    #[error("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        /// Tensor name.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Required alignment.
        alignment: u64,
    },
    /// A tensor's bytes extend past the end of the data section.
    #[error(
        "tensor {name:?}: bytes {offset}..{offset}+{size} lie outside the {data_len}-byte data section"
    )]
    TensorOutOfBounds {
        /// Tensor name.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Byte size.
        size: u64,
        /// Length of the data section.
        data_len: u64,
    },
    /// Two tensors' byte ranges overlap.
    #[error("tensors {first:?} and {second:?} overlap")]
    TensorsOverlap {
        /// One tensor.
        first: String,
        /// The other.
        second: String,
    },
    /// The header's aligned end lies past the end of the file although tensors are declared.
    #[error("data section would start at {data_start}, past the end of the {file_len}-byte file")]
    MissingDataSection {
        /// Aligned end of the header.
        data_start: u64,
        /// File length.
        file_len: u64,
    },
    /// A metadata key is absent.
    #[error("metadata key {key:?} is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key has an unexpected type.
    #[error("metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// Type wanted.
        expected: &'static str,
        /// Type present (e.g. `"u32"`, `"array<string>"`).
        found: String,
    },
}

/// Metadata value type ids as stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// `u8`
    U8 = 0,
    /// `i8`
    I8 = 1,
    /// `u16`
    U16 = 2,
    /// `i16`
    I16 = 3,
    /// `u32`
    U32 = 4,
    /// `i32`
    I32 = 5,
    /// `f32`
    F32 = 6,
    /// `bool` (one byte, 0 or 1)
    Bool = 7,
    /// length-prefixed UTF-8 string
    String = 8,
    /// typed array
    Array = 9,
    /// `u64`
    U64 = 10,
    /// `i64`
    I64 = 11,
    /// `f64`
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Smallest encoded size of one value of this type (used to bound counts).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            String => 8,
            Array => 12,
        }
    }

    /// Lower-case type name used in error messages.
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// A typed metadata array. Elements of an array of arrays may each have their own element type.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
    Array(Vec<Array>),
}

impl Array {
    /// Element type.
    pub fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
            Array::Array(_) => ValueType::Array,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Type description for messages: `"u32"`, `"array<string>"`, ...
    pub fn type_description(&self) -> String {
        match self {
            Value::Array(a) => format!("array<{}>", a.elem_type().name()),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as a non-negative integer, whatever its integer type.
    pub fn as_uint(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// One tensor's header entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost (row length) first, as in ggml's `ne`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Number of bytes of the tensor's data.
    pub n_bytes: u64,
}

/// A parsed GGUF file borrowing the bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct Gguf<'a> {
    version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    // By name: the model mapping looks up every tensor, and a linear search made that quadratic
    // in the (file-chosen) tensor count.
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
    data: &'a [u8],
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::UnexpectedEof {
                offset: self.pos as u64,
                needed: n,
                remaining: self.remaining(),
                what,
            });
        }
        let n = n as usize; // n <= remaining, which is a usize
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("length checked"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a count and checks `count * min_elem_size <= remaining`.
    fn count(&mut self, min_elem_size: u64, what: &'static str) -> Result<u64, GgufError> {
        let offset = self.pos as u64;
        let count = self.u64(what)?;
        let fits = count
            .checked_mul(min_elem_size)
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(GgufError::CountTooLarge {
                what,
                offset,
                count,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.count(1, what)?;
        let offset = self.pos as u64;
        let b = self.take(len, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 { offset }),
        }
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos as u64;
        let t = self.u32("value type")?;
        ValueType::from_u32(t).ok_or(GgufError::UnknownValueType { offset, type_id: t })
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(W)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(W)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(W)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(W)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(W)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(W)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(W)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(W)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(W)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(W)?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string("string value")?),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn bool(&mut self) -> Result<bool, GgufError> {
        // Any nonzero byte reads as true, as in the reference reader.
        Ok(self.array::<1>("bool value")?[0] != 0)
    }

    fn array_value(&mut self, depth: usize) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                offset: self.pos as u64,
            });
        }
        let et = self.value_type()?;
        let n = self.count(et.min_size(), "array")?;
        // n * min_size <= remaining, so n is bounded by the file size (and fits in usize).
        let n = n as usize;
        const W: &str = "array element";
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let raw = self.take((n * std::mem::size_of::<$t>()) as u64, W)?;
                Array::$variant(
                    raw.chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            ValueType::U8 => Array::U8(self.take(n as u64, W)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n as u64, W)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => {
                Array::Bool(self.take(n as u64, W)?.iter().map(|&b| b != 0).collect())
            }
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string("string array element")?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file held in memory.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, GgufError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        // minimal tensor info: name len (8) + n_dims (4) + one dim (8) + type (4) + offset (8)
        let n_tensors = r.count(32, "tensor_count")?;
        // minimal kv: key len (8) + type (4) + one-byte value
        let n_kv = r.count(13, "metadata_kv_count")?;
        // both tables must fit together
        let need = n_tensors
            .checked_mul(32)
            .and_then(|a| n_kv.checked_mul(13).and_then(|b| a.checked_add(b)));
        if need.is_none_or(|n| n > r.remaining()) {
            return Err(GgufError::CountTooLarge {
                what: "tensor_count + metadata_kv_count",
                offset: 8,
                count: n_tensors.saturating_add(n_kv),
                remaining: r.remaining(),
            });
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.value_type()?;
            let value = r.value(ty, 0)?;
            if index.contains_key(&key) {
                return Err(GgufError::DuplicateKey { key });
            }
            index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) => {
                let a = *a as u64;
                if a == 0 || !a.is_power_of_two() {
                    return Err(GgufError::BadAlignment { value: a });
                }
                a
            }
            Some(other) => {
                return Err(GgufError::WrongType {
                    key: "general.alignment".into(),
                    expected: "u32",
                    found: other.type_description(),
                });
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashMap::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor n_dims")?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(GgufError::BadDimCount { name, n_dims });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let type_id = r.u32("tensor type")?;
            let offset = r.u64("tensor offset")?;
            if let Some(index) = dims.iter().position(|&d| d == 0) {
                return Err(GgufError::ZeroDim { name, index });
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| GgufError::TensorSizeOverflow { name: name.clone() })?;
            let ty = match GgmlType::from_id(type_id) {
                Ok(t) => t,
                Err(source) => return Err(GgufError::TensorType { name, source }),
            };
            // each row must be whole blocks
            if let Err(source) = ty.bytes_for(dims[0]) {
                return Err(GgufError::TensorType { name, source });
            }
            let n_bytes = match ty.bytes_for(n_elements) {
                Ok(b) => b,
                Err(_) => return Err(GgufError::TensorSizeOverflow { name }),
            };
            if offset % alignment != 0 {
                return Err(GgufError::MisalignedTensor {
                    name,
                    offset,
                    alignment,
                });
            }
            if names.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::DuplicateTensor { name });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                n_elements,
                n_bytes,
            });
        }

        let header_end = r.pos as u64;
        let file_len = bytes.len() as u64;
        let data_start = header_end.checked_next_multiple_of(alignment).ok_or(
            GgufError::MissingDataSection {
                data_start: u64::MAX,
                file_len,
            },
        )?;
        let data: &[u8] = if data_start <= file_len {
            &bytes[data_start as usize..]
        } else if tensors.is_empty() {
            &[]
        } else {
            return Err(GgufError::MissingDataSection {
                data_start,
                file_len,
            });
        };
        let data_len = data.len() as u64;
        for t in &tensors {
            if t.offset
                .checked_add(t.n_bytes)
                .is_none_or(|end| end > data_len)
            {
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    offset: t.offset,
                    size: t.n_bytes,
                    data_len,
                });
            }
        }
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| (tensors[i].offset, tensors[i].n_bytes));
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            // in bounds was checked above, so the sum cannot overflow
            if a.offset + a.n_bytes > b.offset {
                return Err(GgufError::TensorsOverlap {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }

        Ok(Gguf {
            version,
            metadata,
            index,
            tensors,
            tensor_index: names,
            alignment,
            data_start,
            data,
        })
    }

    /// File format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section and of every tensor.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Offset in the file at which the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_start
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All tensors in file (header) order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor. `info` must come from this file's [`Gguf::tensors`];
    /// for a foreign `TensorInfo` whose range falls outside the data section an
    /// empty slice is returned.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &'a [u8] {
        let start = info.offset as usize;
        match start.checked_add(info.n_bytes as usize) {
            Some(end) if end <= self.data.len() && info.offset <= usize::MAX as u64 => {
                &self.data[start..end]
            }
            _ => &[],
        }
    }

    fn required(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    fn wrong(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: found.type_description(),
        }
    }

    /// A `u32` value (strict: other integer types are a [`GgufError::WrongType`]).
    pub fn u32(&self, key: &str) -> Result<u32, GgufError> {
        match self.required(key)? {
            Value::U32(v) => Ok(*v),
            v => Err(Self::wrong(key, "u32", v)),
        }
    }

    /// A `u64` value (strict).
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        match self.required(key)? {
            Value::U64(v) => Ok(*v),
            v => Err(Self::wrong(key, "u64", v)),
        }
    }

    /// An `i32` value (strict).
    pub fn i32(&self, key: &str) -> Result<i32, GgufError> {
        match self.required(key)? {
            Value::I32(v) => Ok(*v),
            v => Err(Self::wrong(key, "i32", v)),
        }
    }

    /// Any non-negative integer value, whatever its stored integer type.
    pub fn uint(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.required(key)?;
        v.as_uint()
            .ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }

    /// An `f32` value (strict).
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        match self.required(key)? {
            Value::F32(v) => Ok(*v),
            v => Err(Self::wrong(key, "f32", v)),
        }
    }

    /// A `bool` value.
    pub fn bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.required(key)? {
            Value::Bool(v) => Ok(*v),
            v => Err(Self::wrong(key, "bool", v)),
        }
    }

    /// A string value.
    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        match self.required(key)? {
            Value::String(v) => Ok(v),
            v => Err(Self::wrong(key, "string", v)),
        }
    }

    /// An array value of any element type.
    pub fn array(&self, key: &str) -> Result<&Array, GgufError> {
        match self.required(key)? {
            Value::Array(a) => Ok(a),
            v => Err(Self::wrong(key, "array", v)),
        }
    }

    /// An array of strings.
    pub fn string_array(&self, key: &str) -> Result<&[String], GgufError> {
        match self.required(key)? {
            Value::Array(Array::String(v)) => Ok(v),
            v => Err(Self::wrong(key, "array<string>", v)),
        }
    }

    /// An array of `i32`.
    pub fn i32_array(&self, key: &str) -> Result<&[i32], GgufError> {
        match self.required(key)? {
            Value::Array(Array::I32(v)) => Ok(v),
            v => Err(Self::wrong(key, "array<i32>", v)),
        }
    }

    /// An array of `f32`.
    pub fn f32_array(&self, key: &str) -> Result<&[f32], GgufError> {
        match self.required(key)? {
            Value::Array(Array::F32(v)) => Ok(v),
            v => Err(Self::wrong(key, "array<f32>", v)),
        }
    }
}

/// Helpers to build GGUF byte streams (used by tests here and in other modules).
#[cfg(test)]
pub(crate) mod build {
    /// Little-endian byte builder.
    #[derive(Default)]
    pub struct B(pub Vec<u8>);
    impl B {
        pub fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        pub fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend(v.to_le_bytes());
            self
        }
        pub fn raw(&mut self, b: &[u8]) -> &mut Self {
            self.0.extend(b);
            self
        }
        pub fn str(&mut self, s: &str) -> &mut Self {
            self.u64(s.len() as u64);
            self.0.extend(s.as_bytes());
            self
        }
        pub fn pad_to(&mut self, align: usize) -> &mut Self {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
    }

    /// A metadata entry for [`file`]: key, type id, encoded value bytes.
    pub type Kv = (String, u32, Vec<u8>);

    pub fn kv_u32(k: &str, v: u32) -> Kv {
        (k.into(), 4, v.to_le_bytes().to_vec())
    }
    pub fn kv_f32(k: &str, v: f32) -> Kv {
        (k.into(), 6, v.to_le_bytes().to_vec())
    }
    pub fn kv_str(k: &str, v: &str) -> Kv {
        let mut b = B::default();
        b.str(v);
        (k.into(), 8, b.0)
    }
    pub fn kv_str_array(k: &str, v: &[&str]) -> Kv {
        let mut b = B::default();
        b.u32(8).u64(v.len() as u64);
        for s in v {
            b.str(s);
        }
        (k.into(), 9, b.0)
    }
    pub fn kv_i32_array(k: &str, v: &[i32]) -> Kv {
        let mut b = B::default();
        b.u32(5).u64(v.len() as u64);
        for x in v {
            b.raw(&x.to_le_bytes());
        }
        (k.into(), 9, b.0)
    }

    /// A tensor for [`file`]: name, dims, ggml type, offset, data to place at offset.
    pub struct T {
        pub name: String,
        pub dims: Vec<u64>,
        pub ty: u32,
        pub offset: u64,
        pub data: Vec<u8>,
    }

    /// Builds a GGUF v3 file with alignment 32.
    pub fn file(kvs: &[Kv], tensors: &[T]) -> Vec<u8> {
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(tensors.len() as u64)
            .u64(kvs.len() as u64);
        for (k, t, v) in kvs {
            b.str(k).u32(*t).raw(v);
        }
        for t in tensors {
            b.str(&t.name).u32(t.dims.len() as u32);
            for &d in &t.dims {
                b.u64(d);
            }
            b.u32(t.ty).u64(t.offset);
        }
        b.pad_to(32);
        let start = b.0.len();
        for t in tensors.iter().filter(|t| !t.data.is_empty()) {
            let end = start + t.offset as usize + t.data.len();
            if b.0.len() < end {
                b.0.resize(end, 0);
            }
            b.0[start + t.offset as usize..end].copy_from_slice(&t.data);
        }
        b.0
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::build::*;
    use super::*;

    fn f32_tensor(name: &str, dims: &[u64], offset: u64) -> T {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        T {
            name: name.into(),
            dims: dims.to_vec(),
            ty: 0,
            offset,
            data,
        }
    }

    fn sample() -> Vec<u8> {
        file(
            &[
                kv_str("general.architecture", "llama"),
                kv_u32("llama.block_count", 2),
                kv_f32("llama.rope.freq_base", 10000.0),
                kv_str_array("tokenizer.ggml.tokens", &["a", "b", "c"]),
            ],
            &[f32_tensor("x", &[4, 2], 0), f32_tensor("y", &[8], 32)],
        )
    }

    #[test]
    fn parses_sample() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), 32);
        assert_eq!(g.str("general.architecture").unwrap(), "llama");
        assert_eq!(g.u32("llama.block_count").unwrap(), 2);
        assert_eq!(g.f32("llama.rope.freq_base").unwrap(), 10000.0);
        assert_eq!(
            g.string_array("tokenizer.ggml.tokens").unwrap(),
            &["a", "b", "c"]
        );
        assert_eq!(g.tensors().len(), 2);
        let x = &g.tensors()[0];
        assert_eq!((x.n_elements, x.n_bytes), (8, 32));
        let xb = g.tensor_bytes(x);
        assert_eq!(f32::from_le_bytes(xb[28..32].try_into().unwrap()), 7.0);
        let y = g.tensor("y").unwrap();
        assert_eq!(
            f32::from_le_bytes(g.tensor_bytes(y)[4..8].try_into().unwrap()),
            1.0
        );
        assert_eq!(g.data_offset() % 32, 0);
    }

    #[test]
    fn typed_errors_name_key_and_type() {
        let bytes = sample();
        let g = Gguf::parse(&bytes).unwrap();
        let e = g.u32("general.architecture").unwrap_err();
        assert_eq!(
            e,
            GgufError::WrongType {
                key: "general.architecture".into(),
                expected: "u32",
                found: "string".into()
            }
        );
        let e = g.str("tokenizer.ggml.tokens").unwrap_err();
        assert!(e.to_string().contains("array<string>"), "{e}");
        assert_eq!(
            g.u32("nope").unwrap_err(),
            GgufError::MissingKey { key: "nope".into() }
        );
        assert_eq!(g.uint("llama.block_count").unwrap(), 2);
    }

    #[test]
    fn all_value_types_and_nested_arrays() {
        let mut kvs: Vec<Kv> = vec![
            ("u8".into(), 0, vec![200]),
            ("i8".into(), 1, vec![0xff]),
            ("u16".into(), 2, 65535u16.to_le_bytes().to_vec()),
            ("i16".into(), 3, (-2i16).to_le_bytes().to_vec()),
            ("u32".into(), 4, 7u32.to_le_bytes().to_vec()),
            ("i32".into(), 5, (-7i32).to_le_bytes().to_vec()),
            ("f32".into(), 6, 1.5f32.to_le_bytes().to_vec()),
            ("bool".into(), 7, vec![1]),
            ("u64".into(), 10, u64::MAX.to_le_bytes().to_vec()),
            ("i64".into(), 11, (-9i64).to_le_bytes().to_vec()),
            ("f64".into(), 12, 2.5f64.to_le_bytes().to_vec()),
        ];
        // array<array<u16>> = [[1,2],[3]] and array<array<string>> elements of different type
        let mut b = B::default();
        b.u32(9).u64(2);
        b.u32(2)
            .u64(2)
            .raw(&1u16.to_le_bytes())
            .raw(&2u16.to_le_bytes());
        b.u32(8).u64(1).str("z");
        kvs.push(("nested".into(), 9, b.0));
        let bytes = file(&kvs, &[]);
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.get("u8"), Some(&Value::U8(200)));
        assert_eq!(g.get("i8"), Some(&Value::I8(-1)));
        assert_eq!(g.get("u16"), Some(&Value::U16(65535)));
        assert_eq!(g.get("i16"), Some(&Value::I16(-2)));
        assert_eq!(g.get("i32"), Some(&Value::I32(-7)));
        assert_eq!(g.get("bool"), Some(&Value::Bool(true)));
        assert_eq!(g.get("u64"), Some(&Value::U64(u64::MAX)));
        assert_eq!(g.get("i64"), Some(&Value::I64(-9)));
        assert_eq!(g.get("f64"), Some(&Value::F64(2.5)));
        assert_eq!(
            g.array("nested").unwrap(),
            &Array::Array(vec![
                Array::U16(vec![1, 2]),
                Array::String(vec!["z".into()])
            ])
        );
        assert!(g.tensors().is_empty());
    }

    fn expect_err(bytes: &[u8]) -> GgufError {
        match Gguf::parse(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(matches!(
            expect_err(b"GGU"),
            GgufError::UnexpectedEof { .. }
        ));
        assert!(matches!(
            expect_err(b"GGML\x03\0\0\0"),
            GgufError::BadMagic { .. }
        ));
        let mut v1 = sample();
        v1[4] = 1;
        assert_eq!(
            expect_err(&v1),
            GgufError::UnsupportedVersion { version: 1 }
        );
        let mut be = sample();
        be[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(matches!(
            expect_err(&be),
            GgufError::UnsupportedVersion { .. }
        ));
        // huge tensor count
        let mut b = B::default();
        b.raw(b"GGUF").u32(3).u64(u64::MAX).u64(0);
        assert!(matches!(expect_err(&b.0), GgufError::CountTooLarge { .. }));
        let mut b = B::default();
        b.raw(b"GGUF").u32(3).u64(0).u64(1 << 40);
        assert!(matches!(expect_err(&b.0), GgufError::CountTooLarge { .. }));
    }

    #[test]
    fn rejects_hostile_lengths() {
        // string length larger than the rest of the file
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(0)
            .u64(1)
            .u64(u64::MAX - 3)
            .raw(&[0u8; 32]);
        assert!(matches!(
            expect_err(&b.0),
            GgufError::CountTooLarge {
                what: "metadata key",
                ..
            }
        ));
        // array count too big for its element size (u64 elements)
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(0)
            .u64(1)
            .str("k")
            .u32(9)
            .u32(10)
            .u64(1 << 20)
            .raw(&[0; 64]);
        assert!(matches!(
            expect_err(&b.0),
            GgufError::CountTooLarge { what: "array", .. }
        ));
        // count * size overflows
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(0)
            .u64(1)
            .str("k")
            .u32(9)
            .u32(12)
            .u64(u64::MAX / 4)
            .raw(&[0; 64]);
        assert!(matches!(expect_err(&b.0), GgufError::CountTooLarge { .. }));
        // deep nesting
        let mut b = B::default();
        b.raw(b"GGUF").u32(3).u64(0).u64(1).str("k").u32(9);
        for _ in 0..100 {
            b.u32(9).u64(1);
        }
        b.u32(0).u64(0);
        assert!(matches!(expect_err(&b.0), GgufError::ArrayTooDeep { .. }));
        // unknown value type
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(0)
            .u64(1)
            .str("k")
            .u32(13)
            .raw(&[0; 16]);
        assert!(matches!(
            expect_err(&b.0),
            GgufError::UnknownValueType { type_id: 13, .. }
        ));
        // invalid utf-8
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(0)
            .u64(1)
            .u64(2)
            .raw(&[0xff, 0xfe])
            .u32(0)
            .raw(&[0]);
        assert!(matches!(expect_err(&b.0), GgufError::InvalidUtf8 { .. }));
    }

    #[test]
    fn rejects_duplicates() {
        let bytes = file(&[kv_u32("a", 1), kv_u32("a", 2)], &[]);
        assert_eq!(
            expect_err(&bytes),
            GgufError::DuplicateKey { key: "a".into() }
        );
        let bytes = file(&[], &[f32_tensor("x", &[8], 0), f32_tensor("x", &[8], 32)]);
        assert_eq!(
            expect_err(&bytes),
            GgufError::DuplicateTensor { name: "x".into() }
        );
    }

    #[test]
    fn rejects_bad_tensors() {
        let e = expect_err(&file(
            &[],
            &[f32_tensor("x", &[8], 0), f32_tensor("y", &[8], 16)],
        ));
        assert!(matches!(e, GgufError::MisalignedTensor { .. }), "{e}");
        let e = expect_err(&file(
            &[],
            &[f32_tensor("x", &[16], 0), f32_tensor("y", &[8], 32)],
        ));
        assert!(matches!(e, GgufError::TensorsOverlap { .. }), "{e}");
        // out of bounds: declare bigger dims than the data written
        let mut t = f32_tensor("x", &[8], 0);
        t.dims = vec![1 << 20];
        let e = expect_err(&file(&[], &[t]));
        assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
        let mut t = f32_tensor("x", &[8], 0);
        t.dims = vec![8, 0];
        assert!(matches!(
            expect_err(&file(&[], &[t])),
            GgufError::ZeroDim { index: 1, .. }
        ));
        let mut t = f32_tensor("x", &[8], 0);
        t.dims = vec![1 << 32, 1 << 32];
        assert!(matches!(
            expect_err(&file(&[], &[t])),
            GgufError::TensorSizeOverflow { .. }
        ));
        let mut t = f32_tensor("x", &[8], 0);
        t.dims = vec![1; 5];
        assert!(matches!(
            expect_err(&file(&[], &[t])),
            GgufError::BadDimCount { n_dims: 5, .. }
        ));
        let mut t = f32_tensor("x", &[8], 0);
        t.ty = 13;
        let e = expect_err(&file(&[], &[t]));
        assert!(e.to_string().contains("Q5_K"), "{e}");
        // Q8_0 row of 16 elements
        let t = T {
            name: "q".into(),
            dims: vec![16, 2],
            ty: 8,
            offset: 0,
            data: vec![0; 64],
        };
        let e = expect_err(&file(&[], &[t]));
        assert!(
            matches!(
                e,
                GgufError::TensorType {
                    source: QuantError::RowNotBlockMultiple { .. },
                    ..
                }
            ),
            "{e}"
        );
        // offset overflow
        let mut t = f32_tensor("x", &[8], 0);
        t.offset = u64::MAX - 31;
        t.data.clear();
        let e = expect_err(&file(&[], &[t]));
        assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
    }

    #[test]
    fn alignment_key() {
        let mut b = B::default();
        b.raw(b"GGUF")
            .u32(3)
            .u64(1)
            .u64(1)
            .str("general.alignment")
            .u32(4)
            .u32(64);
        b.str("x").u32(1).u64(4).u32(0).u64(0);
        let header_end = b.0.len();
        b.pad_to(64).raw(&[0; 16]);
        let g = Gguf::parse(&b.0).unwrap();
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.data_offset(), header_end.next_multiple_of(64) as u64);
        for bad in [0u32, 48] {
            let bytes = file(&[kv_u32("general.alignment", bad)], &[]);
            assert_eq!(
                expect_err(&bytes),
                GgufError::BadAlignment { value: bad as u64 }
            );
        }
        let bytes = file(&[kv_f32("general.alignment", 32.0)], &[]);
        assert!(matches!(expect_err(&bytes), GgufError::WrongType { .. }));
    }

    #[test]
    fn truncation_and_corruption_never_panic() {
        let bytes = sample();
        for n in 0..bytes.len() {
            let _ = Gguf::parse(&bytes[..n]);
        }
        // flip bytes of the header one at a time (xorshift-chosen values)
        let mut s = 0x9e3779b97f4a7c15u64;
        let header_len = Gguf::parse(&bytes).unwrap().data_offset() as usize;
        for i in 0..header_len {
            for _ in 0..8 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let mut c = bytes.clone();
                c[i] = s as u8;
                let _ = Gguf::parse(&c);
            }
        }
    }
}
