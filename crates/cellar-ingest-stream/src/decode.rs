//! Decoding an event's JSON payload into what the ingestions of its topic read.
//!
//! Most ingestions read only top-level members named by their paths (`$.user_id`, `$.a.b`).
//! For those topics an event is decoded into just the members some ingestion names, keys
//! borrowed from the payload: building the whole `serde_json::Value` tree (a map with an
//! owned key per member) costs more than mapping the event. The rest of the document is still
//! checked exactly as `serde_json::from_slice::<Value>` checks it, so an event is malformed, and
//! dead-lettered with the same reason, in the same cases as when it was decoded whole.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// What the paths of an ingestion read from an event.
pub trait EventFields {
    /// The top-level member `name`, if the event is an object that has it.
    fn member(&self, name: &str) -> Option<&Value>;

    /// The whole document, when it was decoded whole.
    fn document(&self) -> Option<&Value>;
}

impl EventFields for Value {
    fn member(&self, name: &str) -> Option<&Value> {
        self.as_object()?.get(name)
    }

    fn document(&self) -> Option<&Value> {
        Some(self)
    }
}

/// An event decoded for the ingestions of its topic.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedEvent<'a> {
    /// The whole document: some ingestion of the topic has a path that is not member names.
    Document(Value),
    /// Only the top-level members the topic's ingestions name, each once (the last one, as in
    /// a decoded object); empty when the document is not an object.
    Members(Vec<(Cow<'a, str>, Value)>),
}

impl DecodedEvent<'_> {
    /// Decodes `payload` whole.
    pub fn document(payload: &[u8]) -> Result<DecodedEvent<'_>, serde_json::Error> {
        serde_json::from_slice(payload).map(DecodedEvent::Document)
    }

    /// Decodes the top-level members of `payload` named in `wanted`, checking the rest.
    pub fn members<'a>(
        payload: &'a [u8],
        wanted: &[String],
    ) -> Result<DecodedEvent<'a>, serde_json::Error> {
        let members = match std::str::from_utf8(payload) {
            // Checked as UTF-8 once, rather than string by string.
            Ok(text) => {
                let mut de = serde_json::Deserializer::from_str(text);
                let members = Members { wanted }.deserialize(&mut de)?;
                de.end()?;
                members
            }
            // Decoded from bytes, to fail with the same error as decoding them whole.
            Err(_) => {
                let mut de = serde_json::Deserializer::from_slice(payload);
                let members = Members { wanted }.deserialize(&mut de)?;
                de.end()?;
                members
            }
        };
        Ok(DecodedEvent::Members(members))
    }
}

impl EventFields for DecodedEvent<'_> {
    fn member(&self, name: &str) -> Option<&Value> {
        match self {
            DecodedEvent::Document(value) => value.member(name),
            DecodedEvent::Members(members) => members
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value),
        }
    }

    fn document(&self) -> Option<&Value> {
        match self {
            DecodedEvent::Document(value) => Some(value),
            DecodedEvent::Members(_) => None,
        }
    }
}

/// Keeps the wanted top-level members of a document and checks everything else.
struct Members<'w> {
    wanted: &'w [String],
}

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Vec<(Cow<'de, str>, Value)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Vec<(Cow<'de, str>, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Self::Value = Vec::with_capacity(self.wanted.len());
        while let Some(key) = map.next_key_seed(Key)? {
            if !self.wanted.iter().any(|w| *w == key) {
                map.next_value::<Checked>()?;
                continue;
            }
            let value: Value = map.next_value()?;
            match members.iter_mut().find(|(k, _)| *k == key) {
                Some((_, earlier)) => *earlier = value,
                None => members.push((key, value)),
            }
        }
        Ok(members)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        CheckedVisitor.visit_seq(seq).map(|_| Vec::new())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

/// A member name, borrowed from the payload unless it has escapes. Read the way a decoded
/// object reads its keys.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// A JSON value checked exactly as decoding it into a `Value` would check it (string escapes,
/// number ranges, nesting depth), and dropped. `serde::de::IgnoredAny` is not enough: serde_json
/// skips what it ignores without those checks.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value::<Checked>()?;
        }
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// Random documents, nested or not, valid or broken by a random edit: decoding some
    /// members answers as decoding the whole document does.
    #[test]
    fn agrees_with_a_whole_decode_on_random_documents() {
        let names = wanted(&["a", "b"]);
        let keys = [r#""a""#, r#""b""#, r#""c""#, r#""\u0061""#];
        let values = [
            r#""x""#,
            r#""\"q\"""#,
            r#""\u00e9""#,
            r#""\ud800""#,
            "0",
            "-0",
            "01",
            "1.5",
            "2e3",
            "1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "true",
            "null",
            "[]",
            r#"[1,{"a":2}]"#,
            r#"{"a":{"b":[]}}"#,
            "{}",
        ];
        for seed in 0..2_000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let members: Vec<String> = (0..rng.random_range(0..5))
                .map(|_| {
                    let key = keys[rng.random_range(0..keys.len())];
                    let value = values[rng.random_range(0..values.len())];
                    format!("{key}:{value}")
                })
                .collect();
            let mut doc = format!("{{{}}}", members.join(",")).into_bytes();
            match rng.random_range(0..3) {
                0 => {
                    doc.remove(rng.random_range(0..doc.len()));
                }
                1 => {
                    let byte = b"{}[]\",:-0e. \\x\x01\xff"[rng.random_range(0..16)];
                    doc.insert(rng.random_range(0..=doc.len()), byte);
                }
                _ => {}
            }
            let text = String::from_utf8_lossy(&doc);
            match (
                serde_json::from_slice::<Value>(&doc),
                DecodedEvent::members(&doc, &names),
            ) {
                (Ok(whole), Ok(some)) => {
                    for name in ["a", "b", "c"] {
                        let expected = whole.member(name).filter(|_| name != "c");
                        assert_eq!(some.member(name), expected, "`{name}` of {text}");
                    }
                }
                (Err(whole), Err(some)) => {
                    assert_eq!(some.to_string(), whole.to_string(), "{text}")
                }
                (whole, some) => panic!("{text}: {some:?} against {whole:?}"),
            }
        }
    }

    #[test]
    fn keeps_the_wanted_members_only_the_last_of_repeated_ones() {
        let payload = br#"{"type": "t", "skip": {"deep": [1, 2.5, null, true]}, "a\u0062": 1, "ab": {"x": "y"}, "n": -3}"#;
        let decoded = DecodedEvent::members(payload, &wanted(&["ab", "n", "missing"])).unwrap();
        assert_eq!(decoded.member("ab"), Some(&serde_json::json!({"x": "y"})));
        assert_eq!(decoded.member("n"), Some(&serde_json::json!(-3)));
        assert_eq!(decoded.member("type"), None);
        assert_eq!(decoded.member("missing"), None);
        assert_eq!(decoded.document(), None);
        let DecodedEvent::Members(members) = decoded else {
            panic!("members")
        };
        assert_eq!(members.len(), 2);
    }

    #[test]
    fn a_document_that_is_not_an_object_has_no_members() {
        for payload in [&b"[1, {\"a\": 2}]"[..], b"\"a\"", b"3", b"null", b"true"] {
            let decoded = DecodedEvent::members(payload, &wanted(&["a"])).unwrap();
            assert_eq!(decoded, DecodedEvent::Members(Vec::new()));
        }
    }

    /// Whatever a whole decode rejects, a decode of some members rejects with the same error,
    /// whether the fault is in a wanted member or not.
    #[test]
    fn rejects_what_a_whole_decode_rejects_with_the_same_error() {
        let deep = format!(
            "{{\"a\": 1, \"b\": {}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let payloads: Vec<Vec<u8>> = [
            r#"{"a": 1, "b": "\ud800"}"#,
            r#"{"a": 1, "b": 1e400}"#,
            r#"{"a": 1, "b": -1e400}"#,
            r#"{"a": 1, "b": "\x"}"#,
            r#"{"a": 1, "b": [1, 2,]}"#,
            r#"{"a": 1, "b": {"c" 1}}"#,
            r#"{"a": 1, "b\ud800": 2}"#,
            r#"{"a": 1} trailing"#,
            r#"{"a": 1, "b": tru}"#,
            r#"{"a": 1, "b": 01}"#,
            r#"{"a": 1"#,
            r#"{"a": 1,}"#,
            r#"["\ud800"]"#,
            r#"1e400"#,
            r#""#,
            &deep,
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .chain([
            b"{\"a\": 1, \"b\": \"\xff\"}".to_vec(),
            b"{\"\xff\": 1}".to_vec(),
        ])
        .collect();
        for payload in &payloads {
            let whole = serde_json::from_slice::<Value>(payload).expect_err("malformed");
            for names in [&["a", "b"][..], &["a"], &[]] {
                let some = DecodedEvent::members(payload, &wanted(names)).expect_err("malformed");
                assert_eq!(
                    some.to_string(),
                    whole.to_string(),
                    "{} with {names:?}",
                    String::from_utf8_lossy(payload)
                );
            }
        }
    }
}
