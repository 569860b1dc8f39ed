//! The order in which key mode writes a map's entries.

use serde::Serialize;
use serde::ser::{self, Impossible};

use super::Error;

/// The natural order of a map key, as its type's `Ord` most likely has it: numbers by value,
/// strings and chars by their UTF-8 bytes (`String`'s order), unit variants by declaration.
/// Then, for ties and anything else, the entry's bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Order {
    Bool(bool),
    Int(Int),
    /// `f64::to_bits` mapped so that integer order is `total_cmp` order.
    Float(i64),
    Str(String),
    Variant(u32),
    Other,
}

/// Every integer width in one order: negatives below non-negatives.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Int {
    Negative(i128),
    NonNegative(u128),
}

impl From<i128> for Int {
    fn from(v: i128) -> Self {
        match u128::try_from(v) {
            Ok(v) => Int::NonNegative(v),
            Err(_) => Int::Negative(v),
        }
    }
}

/// Finds a map key's [`Order`], once serde_json has accepted the key.
pub(super) struct Classify;

macro_rules! classify_int {
    ($($method:ident($ty:ty) => $wide:ident),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<Order, Error> {
            Ok(Order::Int(Int::from($wide::from(v))))
        })*
    };
}

macro_rules! classify_other {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _v: $ty) -> Result<Order, Error> {
            Ok(Order::Other)
        })*
    };
}

impl ser::Serializer for Classify {
    type Ok = Order;
    type Error = Error;
    type SerializeSeq = Impossible<Order, Error>;
    type SerializeTuple = Impossible<Order, Error>;
    type SerializeTupleStruct = Impossible<Order, Error>;
    type SerializeTupleVariant = Impossible<Order, Error>;
    type SerializeMap = Impossible<Order, Error>;
    type SerializeStruct = Impossible<Order, Error>;
    type SerializeStructVariant = Impossible<Order, Error>;

    classify_int! {
        serialize_i8(i8) => i128, serialize_i16(i16) => i128, serialize_i32(i32) => i128,
        serialize_i64(i64) => i128, serialize_i128(i128) => i128,
        serialize_u8(u8) => i128, serialize_u16(u16) => i128, serialize_u32(u32) => i128,
        serialize_u64(u64) => i128,
    }

    classify_other!(serialize_bytes(&[u8]));

    fn serialize_u128(self, v: u128) -> Result<Order, Error> {
        Ok(Order::Int(Int::NonNegative(v)))
    }

    fn serialize_bool(self, v: bool) -> Result<Order, Error> {
        Ok(Order::Bool(v))
    }

    fn serialize_f32(self, v: f32) -> Result<Order, Error> {
        self.serialize_f64(f64::from(v))
    }

    fn serialize_f64(self, v: f64) -> Result<Order, Error> {
        // The usual total order trick: flip the magnitude bits of negatives.
        let bits = v.to_bits() as i64;
        Ok(Order::Float(bits ^ ((((bits >> 63) as u64) >> 1) as i64)))
    }

    fn serialize_char(self, v: char) -> Result<Order, Error> {
        Ok(Order::Str(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Order, Error> {
        Ok(Order::Str(v.to_owned()))
    }

    fn serialize_none(self) -> Result<Order, Error> {
        Ok(Order::Other)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<Order, Error> {
        Ok(Order::Other)
    }

    fn serialize_unit(self) -> Result<Order, Error> {
        Ok(Order::Other)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Order, Error> {
        Ok(Order::Other)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        index: u32,
        _variant: &'static str,
    ) -> Result<Order, Error> {
        Ok(Order::Variant(index))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Order, Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Order, Error> {
        Ok(Order::Other)
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Error> {
        Err(key_must_be_a_string())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(key_must_be_a_string())
    }
}

/// Unreachable in practice: serde_json refused such a key before it is classified.
fn key_must_be_a_string() -> Error {
    <Error as ser::Error>::custom("key must be a string")
}
