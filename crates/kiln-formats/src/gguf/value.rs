/// The type tags of GGUF metadata values, as numbered by the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// unsigned 8-bit
    U8,
    /// signed 8-bit
    I8,
    /// unsigned 16-bit
    U16,
    /// signed 16-bit
    I16,
    /// unsigned 32-bit
    U32,
    /// signed 32-bit
    I32,
    /// 32-bit float
    F32,
    /// boolean (one byte)
    Bool,
    /// length-prefixed UTF-8 string
    String,
    /// typed array
    Array,
    /// unsigned 64-bit
    U64,
    /// signed 64-bit
    I64,
    /// 64-bit float
    F64,
}

impl ValueType {
    /// Decodes the on-disk tag.
    pub fn from_tag(tag: u32) -> Option<Self> {
        Some(match tag {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The on-disk tag (the inverse of [`ValueType::from_tag`]).
    pub fn tag(self) -> u32 {
        match self {
            Self::U8 => 0,
            Self::I8 => 1,
            Self::U16 => 2,
            Self::I16 => 3,
            Self::U32 => 4,
            Self::I32 => 5,
            Self::F32 => 6,
            Self::Bool => 7,
            Self::String => 8,
            Self::Array => 9,
            Self::U64 => 10,
            Self::I64 => 11,
            Self::F64 => 12,
        }
    }

    /// The smallest number of bytes one value of this type takes on disk (versions 2 and 3;
    /// version 1's 32-bit lengths make strings and arrays 4 bytes shorter).
    pub fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
            Self::Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// unsigned 8-bit
    U8(u8),
    /// signed 8-bit
    I8(i8),
    /// unsigned 16-bit
    U16(u16),
    /// signed 16-bit
    I16(i16),
    /// unsigned 32-bit
    U32(u32),
    /// signed 32-bit
    I32(i32),
    /// 32-bit float
    F32(f32),
    /// boolean
    Bool(bool),
    /// string
    String(String),
    /// array of values of one type
    Array(ValueType, Vec<Value>),
    /// unsigned 64-bit
    U64(u64),
    /// signed 64-bit
    I64(i64),
    /// 64-bit float
    F64(f64),
}

impl Value {
    /// The value's type tag.
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
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::U8(_) => "u8".into(),
            Value::I8(_) => "i8".into(),
            Value::U16(_) => "u16".into(),
            Value::I16(_) => "i16".into(),
            Value::U32(_) => "u32".into(),
            Value::I32(_) => "i32".into(),
            Value::F32(_) => "f32".into(),
            Value::Bool(_) => "bool".into(),
            Value::String(_) => "string".into(),
            Value::Array(t, v) => format!("array of {} {:?}", v.len(), t),
            Value::U64(_) => "u64".into(),
            Value::I64(_) => "i64".into(),
            Value::F64(_) => "f64".into(),
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
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

    /// The value as a float, if it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v as f64),
            Value::I16(v) => Some(v as f64),
            Value::I32(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array's elements.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_unknown_tags_are_refused() {
        for tag in 0..13 {
            let ty = ValueType::from_tag(tag).unwrap();
            assert_eq!(ty.tag(), tag);
        }
        for tag in [13, 14, 255, u32::MAX] {
            assert_eq!(ValueType::from_tag(tag), None);
        }
        // The numbering is the format's, not declaration order.
        assert_eq!(ValueType::from_tag(9), Some(ValueType::Array));
        assert_eq!(ValueType::from_tag(10), Some(ValueType::U64));
    }

    #[test]
    fn conversions() {
        assert_eq!(Value::I8(-1).as_u64(), None);
        assert_eq!(Value::I64(5).as_u64(), Some(5));
        assert_eq!(Value::U16(7).as_f64(), Some(7.0));
        assert_eq!(Value::I32(-7).as_f64(), Some(-7.0));
        assert_eq!(Value::F32(1.5).as_u64(), None);
        assert_eq!(Value::Bool(true).as_u64(), None);
        assert_eq!(Value::String("x".into()).as_f64(), None);
        assert_eq!(Value::String("x".into()).as_str(), Some("x"));
        assert_eq!(Value::U8(1).as_bool(), None);
        let a = Value::Array(ValueType::U8, vec![Value::U8(1)]);
        assert_eq!(a.as_array(), Some(&[Value::U8(1)][..]));
        assert_eq!(a.type_name(), "array of 1 U8");
        assert_eq!(a.value_type(), ValueType::Array);
        assert_eq!(Value::F64(0.0).value_type().tag(), 12);
    }
}
