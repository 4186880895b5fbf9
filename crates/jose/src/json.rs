//! base64url-encoded JSON objects, decoded strictly (RFC 7515 §7.1, RFC 7519 §7.2).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

use crate::Error;

/// Decodes one base64url part (no padding) holding a JSON object, refusing duplicated member
/// names at every depth.
///
/// RFC 7515 §4 lets a recipient either reject duplicate header members or use the lexically
/// last; RFC 7519 §4 says the same of claims. We reject: two parsers reading
/// `{"alg":"ES256","alg":"none"}`, or a `jwk` with two `x`, differently is how verification
/// gets bypassed (one parser keeps the first `x` and thumbprints one key, another keeps the
/// last and verifies with a different one). A JSON array is refused too: a JOSE header or a
/// claims set is always an object, and serde would otherwise map an array onto a struct
/// positionally.
pub fn decode_json_object(part: &str) -> Result<Map<String, Value>, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Error::Malformed)?;
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let object = deserializer
        .deserialize_map(StrictVisitor)
        .map_err(|_| Error::Malformed)?;
    deserializer.end().map_err(|_| Error::Malformed)?;
    match object {
        Value::Object(members) => Ok(members),
        _ => Err(Error::Malformed),
    }
}

/// Builds a [`Value`] as serde_json does, except that an object with a repeated member name is
/// an error.
struct StrictVisitor;

struct Strict(Value);

impl<'de> de::Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without duplicated member names")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this only fails on input serde_json never produces.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            let Strict(value) = access.next_value()?;
            if members.insert(name, value).is_some() {
                return Err(de::Error::custom("duplicate member"));
            }
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<Map<String, Value>, Error> {
        decode_json_object(&URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn decodes_objects_as_serde_json_does() {
        let text = r#"{"a":1,"b":-2,"c":1.5,"d":"s","e":[true,null,{"f":18446744073709551615}]}"#;
        let want: Value = serde_json::from_str(text).unwrap();
        assert_eq!(Value::Object(decode(text).unwrap()), want);
        assert_eq!(decode(" {} ").unwrap(), Map::new());
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        for text in [
            r#"{"alg":"ES256","alg":"none"}"#,
            r#"{"jwk":{"x":"a","x":"b"}}"#,
            r#"{"a":[{"k":1,"k":1}]}"#,
        ] {
            assert_eq!(decode(text), Err(Error::Malformed), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_one_base64url_json_object() {
        for part in [
            URL_SAFE_NO_PAD.encode("[1]"),
            URL_SAFE_NO_PAD.encode("\"s\""),
            URL_SAFE_NO_PAD.encode("not json"),
            URL_SAFE_NO_PAD.encode("{} {}"),
            URL_SAFE_NO_PAD.encode("{\"a\":1"),
            "eyJhbGciOiJFZERTQSJ9==".to_owned(),
            "e30=".to_owned(),
            "!!".to_owned(),
        ] {
            assert_eq!(decode_json_object(&part), Err(Error::Malformed), "{part}");
        }
    }
}
