//! A corpus of hostile payloads for the hostile-input scenario (`tests/hostile_input.rs`): for one
//! valid message shape (a JSON object standing for the MessagePack map the protocol sends, see
//! `docs/protocol.md` §3) it derives empty, random and 1 MB payloads, truncated MessagePack, deep
//! nesting, unknown schemas, wrong types and extreme numbers. Forged ids are specific to each
//! subject and bucket, so the scenario adds its own.

use serde_json::{Value, json};

/// One hostile payload and what it is, for assertion messages.
#[derive(Debug, Clone)]
pub struct Hostile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Hostile {
    pub fn new(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            bytes,
        }
    }

    /// `value` encoded the way the protocol encodes messages: a MessagePack map with named fields.
    pub fn encoded(name: impl Into<String>, value: &Value) -> Self {
        Self::new(name, msgpack(value))
    }
}

/// `value` as MessagePack with string keys (what `rmp_serde::to_vec_named` writes for structs).
pub fn msgpack(value: &Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("a JSON value encodes as MessagePack")
}

/// Size of the "1 MB" payloads: under the server's default 1 MiB `max_payload`, so the server
/// accepts them and the services have to deal with them.
pub const LARGE_PAYLOAD: usize = 1_000_000;
/// Nesting depth of the deep-nesting payloads (arrays of one element).
pub const DEEP_NESTING: usize = 100_000;

/// Deterministic pseudo-random bytes (xorshift64*): the corpus is the same on every run.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// `depth` nested one-element MessagePack arrays around a nil.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut bytes = vec![0x91; depth];
    bytes.push(0xc0);
    bytes
}

/// `sample` (a JSON object) encoded with one more field, `key`, whose value is the raw MessagePack
/// `raw` (which a JSON value could not express: deep nesting without recursion, big strings).
pub fn with_raw_field(sample: &Value, key: &str, raw: &[u8]) -> Vec<u8> {
    let fields = sample.as_object().expect("the sample is an object");
    let count = fields.len() + 1;
    let mut bytes = Vec::new();
    if count < 16 {
        bytes.push(0x80 | count as u8);
    } else {
        bytes.push(0xde);
        bytes.extend_from_slice(&(count as u16).to_be_bytes());
    }
    for (name, value) in fields {
        bytes.extend(msgpack(&Value::String(name.clone())));
        bytes.extend(msgpack(value));
    }
    bytes.extend(msgpack(&Value::String(key.to_owned())));
    bytes.extend_from_slice(raw);
    bytes
}

/// A MessagePack `str 32` of `len` bytes of `x`.
fn big_string(len: usize) -> Vec<u8> {
    let mut bytes = vec![0xdb];
    bytes.extend_from_slice(&(len as u32).to_be_bytes());
    bytes.resize(5 + len, b'x');
    bytes
}

/// `sample` with `key` set to `value`.
fn replaced(sample: &Value, key: &str, value: Value) -> Value {
    let mut changed = sample.clone();
    changed[key] = value;
    changed
}

/// The generic corpus derived from `sample`, a valid message as a JSON object:
///
/// * empty; 4 KiB and 1 MB of random bytes;
/// * truncated MessagePack (the encoded sample cut in half, and missing its last byte);
/// * deep nesting (alone, and as an extra field of the sample);
/// * a 1 MB message (the sample plus a 1 MB string field);
/// * unknown schemas (0, 2, 65,535, 70,000, -1), a missing `schema`, an array instead of a map,
///   unknown fields only;
/// * wrong types: every field in turn as a string, a map and nil;
/// * extreme numbers: every numeric field in turn as 0, `u64::MAX`, -1, `i64::MIN` and a float.
pub fn corpus(sample: &Value) -> Vec<Hostile> {
    let encoded = msgpack(sample);
    let mut corpus = vec![
        Hostile::new("empty", Vec::new()),
        Hostile::new("random 4 KiB", random_bytes(7, 4096)),
        Hostile::new("random 1 MB", random_bytes(11, LARGE_PAYLOAD)),
        Hostile::new("truncated half", encoded[..encoded.len() / 2].to_vec()),
        Hostile::new("truncated last byte", encoded[..encoded.len() - 1].to_vec()),
        Hostile::new("deep nesting", nested_arrays(DEEP_NESTING)),
        Hostile::new(
            "deep nesting in a field",
            with_raw_field(sample, "nested", &nested_arrays(DEEP_NESTING)),
        ),
        Hostile::new(
            "1 MB field",
            with_raw_field(sample, "padding", &big_string(LARGE_PAYLOAD)),
        ),
        Hostile::encoded("array instead of map", &json!([sample.clone()])),
        Hostile::encoded("unknown fields only", &json!({"hello": "world", "n": 1})),
    ];
    for schema in [json!(0), json!(2), json!(65_535), json!(70_000), json!(-1)] {
        corpus.push(Hostile::encoded(
            format!("schema {schema}"),
            &replaced(sample, "schema", schema),
        ));
    }
    let mut without_schema = sample.clone();
    without_schema
        .as_object_mut()
        .expect("object")
        .remove("schema");
    corpus.push(Hostile::encoded("no schema field", &without_schema));
    let fields: Vec<(String, Value)> = sample
        .as_object()
        .expect("object")
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    for (key, value) in &fields {
        let wrong = if value.is_string() {
            json!(12_345)
        } else {
            json!("wrong type")
        };
        for (kind, replacement) in [
            ("scalar", wrong),
            ("map", json!({"x": 1})),
            ("nil", json!(null)),
        ] {
            corpus.push(Hostile::encoded(
                format!("{key} of the wrong type ({kind})"),
                &replaced(sample, key, replacement),
            ));
        }
        if value.is_number() && key != "schema" {
            for extreme in [
                json!(0),
                json!(u64::MAX),
                json!(-1),
                json!(i64::MIN),
                json!(1.0e300),
            ] {
                corpus.push(Hostile::encoded(
                    format!("{key} = {extreme}"),
                    &replaced(sample, key, extreme),
                ));
            }
        }
    }
    corpus
}
