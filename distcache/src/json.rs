//! JSON for keys and for stored values, where serde_json alone is ambiguous or lossy.
//!
//! One serializer, two modes, both byte-for-byte serde_json wherever serde_json is faithful:
//! keys in use before this module, and values stored before it, keep their exact bytes.
//!
//! - **Key mode** ([`write_key_arg`]) must be injective and stable: distinct values of one type
//!   give distinct bytes, and one value gives the same bytes in every process. serde_json writes
//!   NaN and ±infinity as `null`, `None` and `Some(None)` both as `null`, and a `HashMap` in its
//!   iteration order, which differs from run to run. Here non-finite floats are the bare tokens
//!   `NaN`, `Infinity` and `-Infinity` (not JSON, but a key is only bytes, and no JSON value is
//!   one of them); a `Some(x)` whose `x` is written as `null` (or is itself such a marked `Some`)
//!   is prefixed with `?`, which no JSON value starts with; maps are written sorted by the
//!   natural order of their keys, which is the order a `BTreeMap` already has. (Only maps that
//!   give their length, as every collection does: a struct with a `#[serde(flatten)]` field is
//!   a map without one, and keeps its declaration order.)
//! - **Value mode** ([`to_vec_lossless`]) refuses what JSON would not give back: a non-finite
//!   float anywhere inside, or a `Some(x)` whose `x` is written as `null`.
//!
//! Limit: a sequence cannot tell serde whether its order means anything, so a `HashSet` argument
//! is written in its iteration order, which varies between processes: such a key is rarely
//! found again. Pass a `BTreeSet` or a sorted `Vec`.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, SerializeMap as _};

use order::{Classify, Order};

/// Appends one argument's key encoding to `out`. On error `out` may hold part of it.
pub(crate) fn write_key_arg<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), Error> {
    value.serialize(Ser {
        out,
        mode: Mode::Key,
    })
}

/// `value` as JSON, the bytes of `serde_json::to_vec`, or an error if JSON cannot carry it.
pub(crate) fn to_vec_lossless<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    // serde_json's own starting capacity.
    let mut out = Vec::with_capacity(128);
    value.serialize(Ser {
        out: &mut out,
        mode: Mode::Value,
    })?;
    Ok(out)
}

/// Why a value has no encoding.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// serde_json refused it (a map key that is not a string or a number, a custom error).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// JSON would not give it back as it is (value mode only).
    #[error(transparent)]
    Lossy(#[from] Lossy),
}

impl ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Json(<serde_json::Error as ser::Error>::custom(msg))
    }
}

/// What JSON cannot carry, and where it sits in the value.
#[derive(Debug)]
pub(crate) struct Lossy {
    what: &'static str,
    /// Innermost first: filled in as the error travels out, so that the success path pays
    /// nothing for it.
    path: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    Index(usize),
    Field(&'static str),
    /// A map key as JSON.
    Key(String),
}

impl fmt::Display for Lossy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)?;
        if !self.path.is_empty() {
            f.write_str(", at ")?;
            for segment in self.path.iter().rev() {
                match segment {
                    Segment::Index(i) => write!(f, "[{i}]")?,
                    Segment::Field(name) => write!(f, ".{name}")?,
                    Segment::Key(key) => write!(f, "[{key}]")?,
                }
            }
        }
        Ok(())
    }
}

impl std::error::Error for Lossy {}

impl Error {
    fn at(mut self, segment: impl FnOnce() -> Segment) -> Self {
        if let Error::Lossy(lossy) = &mut self {
            lossy.path.push(segment());
        }
        self
    }

    fn lossy(what: &'static str) -> Self {
        Error::Lossy(Lossy {
            what,
            path: Vec::new(),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Key,
    Value,
}

/// The marker of a `Some` whose content alone would read as `None`.
const SOME_MARKER: u8 = b'?';

struct Ser<'a> {
    out: &'a mut Vec<u8>,
    mode: Mode,
}

/// serde_json over `out`: scalars and strings are delegated to it, so that their bytes (number
/// formatting, string escaping) are its own. Constructing one costs nothing.
fn json(out: &mut Vec<u8>) -> serde_json::Serializer<&mut Vec<u8>> {
    serde_json::Serializer::new(out)
}

macro_rules! delegate {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<(), Error> {
            Ok(ser::Serializer::$method(&mut json(self.out), v)?)
        })*
    };
}

impl<'a> Ser<'a> {
    fn float(self, v: f64, finite: impl FnOnce(Self) -> Result<(), Error>) -> Result<(), Error> {
        if v.is_finite() {
            return finite(self);
        }
        let (token, what): (&[u8], _) = if v.is_nan() {
            (
                b"NaN",
                "a non-finite float (NaN), which JSON writes as null",
            )
        } else if v > 0.0 {
            (
                b"Infinity",
                "a non-finite float (inf), which JSON writes as null",
            )
        } else {
            (
                b"-Infinity",
                "a non-finite float (-inf), which JSON writes as null",
            )
        };
        match self.mode {
            Mode::Key => {
                self.out.extend_from_slice(token);
                Ok(())
            }
            Mode::Value => Err(Error::lossy(what)),
        }
    }

    fn compound(self, open: &[u8], close: &'static [u8]) -> Compound<'a> {
        self.out.extend_from_slice(open);
        Compound {
            out: self.out,
            mode: self.mode,
            count: 0,
            close,
        }
    }

    /// `{"<variant>":` then the content, closed by `close`: serde_json's externally tagged enums.
    fn variant(
        self,
        variant: &'static str,
        open: &[u8],
        close: &'static [u8],
    ) -> Result<Compound<'a>, Error> {
        self.out.push(b'{');
        ser::Serializer::serialize_str(&mut json(self.out), variant)?;
        self.out.push(b':');
        Ok(self.compound(open, close))
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Map<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    delegate! {
        serialize_bool(bool),
        serialize_i8(i8), serialize_i16(i16), serialize_i32(i32), serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8), serialize_u16(u16), serialize_u32(u32), serialize_u64(u64),
        serialize_u128(u128),
        serialize_char(char), serialize_str(&str), serialize_bytes(&[u8]),
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.float(f64::from(v), |s| {
            Ok(ser::Serializer::serialize_f32(&mut json(s.out), v)?)
        })
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.float(v, |s| {
            Ok(ser::Serializer::serialize_f64(&mut json(s.out), v)?)
        })
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        let start = self.out.len();
        value.serialize(Ser {
            out: &mut *self.out,
            mode: self.mode,
        })?;
        let inner = &self.out[start..];
        // Only `null` and marked values are ambiguous; every other `Some(x)` stays `x`, as in
        // serde_json, so keys with options keep their bytes.
        if inner == b"null" || inner.first() == Some(&SOME_MARKER) {
            match self.mode {
                // The content is at most a few markers and `null`: the shift is cheap.
                Mode::Key => self.out.insert(start, SOME_MARKER),
                Mode::Value => {
                    return Err(Error::lossy(
                        "Some(x) where x is written as null, which reads back as None",
                    ));
                }
            }
        }
        Ok(())
    }

    fn serialize_unit(self) -> Result<(), Error> {
        self.serialize_none()
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Error> {
        self.serialize_none()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<(), Error> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let mode = self.mode;
        let compound = self.variant(variant, b"", b"}")?;
        value
            .serialize(Ser {
                out: &mut *compound.out,
                mode,
            })
            .map_err(|e| e.at(|| Segment::Field(variant)))?;
        ser::SerializeStruct::end(compound)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b"[", b"]"))
    }

    fn serialize_tuple(self, _len: usize) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b"[", b"]"))
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b"[", b"]"))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant(variant, b"[", b"]}")
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Map<'a>, Error> {
        self.out.push(b'{');
        Ok(Map {
            out: self.out,
            mode: self.mode,
            // Every serde collection (HashMap, BTreeMap, IndexMap, serde_json's Map) gives its
            // length; a struct with a `#[serde(flatten)]` field does not, and its fields have a
            // stable order already, its declaration order, which keys in use today have.
            sorted: self.mode == Mode::Key && len.is_some(),
            count: 0,
            key_start: 0,
            entries: Vec::new(),
            pending: None,
        })
    }

    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Compound<'a>, Error> {
        Ok(self.compound(b"{", b"}"))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a>, Error> {
        self.variant(variant, b"{", b"}}")
    }

    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Result<(), Error> {
        Ok(ser::Serializer::collect_str(&mut json(self.out), value)?)
    }
}

/// Sequences, tuples and structs: written in order, as serde_json writes them.
pub(crate) struct Compound<'a> {
    out: &'a mut Vec<u8>,
    mode: Mode,
    count: usize,
    close: &'static [u8],
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        if self.count > 0 {
            self.out.push(b',');
        }
        let index = self.count;
        self.count += 1;
        value
            .serialize(Ser {
                out: &mut *self.out,
                mode: self.mode,
            })
            .map_err(|e| e.at(|| Segment::Index(index)))
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        if self.count > 0 {
            self.out.push(b',');
        }
        self.count += 1;
        ser::Serializer::serialize_str(&mut json(self.out), key)?;
        self.out.push(b':');
        value
            .serialize(Ser {
                out: &mut *self.out,
                mode: self.mode,
            })
            .map_err(|e| e.at(|| Segment::Field(key)))
    }

    fn close(self) -> Result<(), Error> {
        self.out.extend_from_slice(self.close);
        Ok(())
    }
}

macro_rules! sequence {
    ($($trait:ident :: $method:ident),*) => {
        $(impl ser::$trait for Compound<'_> {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                self.element(value)
            }

            fn end(self) -> Result<(), Error> {
                self.close()
            }
        })*
    };
}

sequence!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

impl ser::SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.field(key, value)
    }

    fn end(self) -> Result<(), Error> {
        self.close()
    }
}

/// Maps: in value mode written in iteration order, as serde_json does; in key mode buffered
/// and written sorted, so that a `HashMap` gives the same bytes in every process.
pub(crate) struct Map<'a> {
    out: &'a mut Vec<u8>,
    mode: Mode,
    /// Entries are buffered and written sorted at the end, rather than written as they come.
    sorted: bool,
    count: usize,
    /// In order: where the current entry's key starts, to name it in an error.
    key_start: usize,
    /// Sorted: each entry's sort key and its bytes, `"key":value`.
    entries: Vec<(Order, Vec<u8>)>,
    /// Sorted: the entry whose key is written and whose value is next.
    pending: Option<(Order, Vec<u8>)>,
}

impl ser::SerializeMap for Map<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        match self.sorted {
            false => {
                if self.count > 0 {
                    self.out.push(b',');
                }
                self.count += 1;
                self.key_start = self.out.len();
                write_map_key(self.out, key)?;
                self.out.push(b':');
            }
            true => {
                let mut entry = Vec::new();
                // serde_json first: it refuses the keys it cannot write, with its own message.
                write_map_key(&mut entry, key)?;
                let order = key.serialize(Classify)?;
                entry.push(b':');
                self.pending = Some((order, entry));
            }
        }
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        match self.sorted {
            false => {
                let start = self.out.len();
                value
                    .serialize(Ser {
                        out: &mut *self.out,
                        mode: self.mode,
                    })
                    .map_err(|e| {
                        // `"key":` sits just before the value.
                        let key = &self.out[self.key_start..start - 1];
                        e.at(|| Segment::Key(String::from_utf8_lossy(key).into_owned()))
                    })
            }
            true => {
                let (order, mut entry) = self
                    .pending
                    .take()
                    .ok_or_else(|| <Error as ser::Error>::custom("a map value without its key"))?;
                value.serialize(Ser {
                    out: &mut entry,
                    mode: Mode::Key,
                })?;
                self.entries.push((order, entry));
                Ok(())
            }
        }
    }

    fn end(self) -> Result<(), Error> {
        let Map {
            out, mut entries, ..
        } = self;
        // The natural order of the keys, which a `BTreeMap` of them already has; equal sort
        // keys (keys that differ only where serialization does not see) are ordered by their
        // bytes, so that the result never depends on iteration order.
        entries.sort_unstable();
        for (i, (_, entry)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(entry);
        }
        out.push(b'}');
        Ok(())
    }
}

/// Appends a map key exactly as serde_json writes one, through serde_json's own map key rules
/// (strings quoted, integers quoted, other types refused): it opens a map (`{`) and writes
/// one key, and the brace is taken out again.
fn write_map_key<T: Serialize + ?Sized>(out: &mut Vec<u8>, key: &T) -> Result<(), Error> {
    let start = out.len();
    {
        let mut json = json(out);
        let mut map = ser::Serializer::serialize_map(&mut json, None)?;
        map.serialize_key(key)?;
        // Not `end`: that would write the closing brace.
    }
    out.remove(start);
    Ok(())
}

mod order;
#[cfg(test)]
mod tests;
