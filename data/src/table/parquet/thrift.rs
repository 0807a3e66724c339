//! A decoder of the Thrift compact protocol, as Parquet uses it for its footer and page headers,
//! into a generic tree of fields. Bounded: nesting at most [`MAX_DEPTH`] deep, and no list,
//! string or map claims more elements than there are bytes left, so a malformed input costs no
//! more memory than its own size.

/// Deepest nesting of structs and containers accepted.
const MAX_DEPTH: usize = 32;

/// A decoded value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Bool(bool),
    /// `byte`, `i16`, `i32` and `i64` alike.
    Int(i64),
    Double(f64),
    Binary(Vec<u8>),
    List(Vec<Value>),
    Struct(Struct),
    /// A map's entries are decoded and dropped: nothing in Parquet that is read here is a map.
    Map,
}

/// A decoded struct: its fields by id, in the order read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Struct(pub(super) Vec<(i16, Value)>);

impl Struct {
    fn get(&self, id: i16) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// Integer field `id`.
    pub(super) fn int(&self, id: i16) -> Option<i64> {
        match self.get(id) {
            Some(Value::Int(v)) => Some(*v),
            _ => None,
        }
    }

    /// Boolean field `id`.
    pub(super) fn bool(&self, id: i16) -> Option<bool> {
        match self.get(id) {
            Some(Value::Bool(v)) => Some(*v),
            _ => None,
        }
    }

    /// Binary / string field `id`.
    pub(super) fn bytes(&self, id: i16) -> Option<&[u8]> {
        match self.get(id) {
            Some(Value::Binary(v)) => Some(v),
            _ => None,
        }
    }

    /// List field `id`.
    pub(super) fn list(&self, id: i16) -> Option<&[Value]> {
        match self.get(id) {
            Some(Value::List(v)) => Some(v),
            _ => None,
        }
    }

    /// Struct field `id`.
    pub(super) fn strukt(&self, id: i16) -> Option<&Struct> {
        match self.get(id) {
            Some(Value::Struct(v)) => Some(v),
            _ => None,
        }
    }

    /// The id of the first field set: the member of a Thrift union.
    pub(super) fn union_member(&self) -> Option<(i16, &Value)> {
        self.0.first().map(|(i, v)| (*i, v))
    }
}

/// Reads compact-protocol values from a byte slice.
#[derive(Debug)]
pub(super) struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| format!("truncated Thrift data at byte {}", self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("malformed Thrift varint before byte {}", self.pos))
    }

    fn zigzag(&mut self) -> Result<i64, String> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// A length that must not exceed the bytes left (each element takes at least one byte).
    fn len(&mut self, n: u64) -> Result<usize, String> {
        match usize::try_from(n) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(format!(
                "Thrift length {n} at byte {} exceeds the {} bytes left",
                self.pos,
                self.remaining()
            )),
        }
    }

    /// Reads one struct (up to and including its stop field).
    pub(super) fn read_struct(&mut self) -> Result<Struct, String> {
        self.strukt(0)
    }

    fn strukt(&mut self, depth: usize) -> Result<Struct, String> {
        if depth > MAX_DEPTH {
            return Err(format!("Thrift data nested more than {MAX_DEPTH} deep"));
        }
        let mut fields = Vec::new();
        let mut last: i16 = 0;
        loop {
            let b = self.byte()?;
            if b == 0 {
                return Ok(Struct(fields));
            }
            let delta = b >> 4;
            let id = if delta == 0 {
                i16::try_from(self.zigzag()?)
                    .map_err(|_| "Thrift field id out of range".to_owned())?
            } else {
                last.wrapping_add(i16::from(delta))
            };
            last = id;
            let value = match b & 0x0f {
                1 => Value::Bool(true),
                2 => Value::Bool(false),
                t => self.value(t, depth + 1)?,
            };
            fields.push((id, value));
        }
    }

    fn value(&mut self, t: u8, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("Thrift data nested more than {MAX_DEPTH} deep"));
        }
        Ok(match t {
            // A boolean inside a container: one byte, 1 for true.
            1 | 2 => Value::Bool(self.byte()? == 1),
            3 => Value::Int(i64::from(self.byte()? as i8)),
            4..=6 => Value::Int(self.zigzag()?),
            7 => {
                let end = self.pos + 8;
                let b = self
                    .buf
                    .get(self.pos..end)
                    .ok_or_else(|| "truncated Thrift double".to_owned())?;
                self.pos = end;
                Value::Double(f64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            8 => {
                let n = self.varint()?;
                let n = self.len(n)?;
                let v = self.buf[self.pos..self.pos + n].to_vec();
                self.pos += n;
                Value::Binary(v)
            }
            9 | 10 => {
                let h = self.byte()?;
                let n = if h >> 4 == 15 {
                    self.varint()?
                } else {
                    u64::from(h >> 4)
                };
                let n = self.len(n)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(h & 0x0f, depth + 1)?);
                }
                Value::List(items)
            }
            11 => {
                let n = self.varint()?;
                let n = self.len(n)?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.value(kv >> 4, depth + 1)?;
                        self.value(kv & 0x0f, depth + 1)?;
                    }
                }
                Value::Map
            }
            12 => Value::Struct(self.strukt(depth + 1)?),
            _ => return Err(format!("unknown Thrift type {t} before byte {}", self.pos)),
        })
    }
}
