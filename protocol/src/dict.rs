//! Dictionaries over HTTP.
//!
//! Every request and response body of the federation protocol is a dictionary with
//! string keys whose values are strings, 64-bit integers, booleans, binary data, arrays
//! and nested dictionaries. Bodies are XML property lists by default, or JSON when the
//! peer asks for `application/json`.
//!
//! JSON has no binary type, so data travels as a base64 string (standard alphabet, with
//! padding); the typed getters ([`Dict::data`]) accept either form, so handlers read a
//! field the same way whatever the encoding was.
//!
//! Decoding is strict: floating-point numbers, dates, UIDs and JSON `null` are rejected
//! rather than coerced, and nesting is limited to [`MAX_DEPTH`] levels so hostile bodies
//! cannot exhaust the stack. Property lists must be XML (not binary) without CDATA
//! sections. A duplicated key keeps its last value, as the plist crate does (and the JSON
//! reading here, as serde_json would).

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Deepest nesting of dictionaries and arrays a decoded body may have; the top-level
/// dictionary counts as level 1.
pub const MAX_DEPTH: usize = 32;

/// How a body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// XML property list, the protocol's default.
    Plist,
    Json,
}

impl Encoding {
    pub const PLIST_CONTENT_TYPE: &'static str = "application/x-plist";
    pub const JSON_CONTENT_TYPE: &'static str = "application/json";

    /// The encoding named by a `Content-Type` (or `Accept`) header value.
    ///
    /// Parameters such as `; charset=utf-8` are ignored. `application/json` and any
    /// `+json` type select JSON; `application/x-plist`, `application/xml`, `text/xml`, a
    /// missing or empty header, and the wildcards `*/*` and `application/*` select the
    /// property list default. For a comma-separated `Accept` list the first supported
    /// entry wins (quality values are not weighed).
    pub fn from_content_type(value: Option<&str>) -> Result<Self, DictError> {
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            return Ok(Self::Plist);
        };
        for range in value.split(',') {
            let media_type = range.split(';').next().unwrap_or_default();
            let media_type = media_type.trim().to_ascii_lowercase();
            match media_type.as_str() {
                "application/json" => return Ok(Self::Json),
                "application/x-plist"
                | "application/xml"
                | "text/xml"
                | "*/*"
                | "application/*" => return Ok(Self::Plist),
                t if t.ends_with("+json") => return Ok(Self::Json),
                _ => {}
            }
        }
        Err(DictError::UnsupportedMediaType(value.to_owned()))
    }

    /// The `Content-Type` header value for bodies in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Plist => Self::PLIST_CONTENT_TYPE,
            Self::Json => Self::JSON_CONTENT_TYPE,
        }
    }

    /// The name used in [`DictError::Malformed`] messages.
    fn name(self) -> &'static str {
        match self {
            Self::Plist => "property list",
            Self::Json => "JSON",
        }
    }
}

/// A dictionary value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Boolean(bool),
    Data(Vec<u8>),
    Array(Vec<Value>),
    Dict(Dict),
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Integer(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Boolean(value)
    }
}

impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Self {
        Self::Data(value)
    }
}

impl From<Dict> for Value {
    fn from(value: Dict) -> Self {
        Self::Dict(value)
    }
}

impl From<Vec<Value>> for Value {
    fn from(value: Vec<Value>) -> Self {
        Self::Array(value)
    }
}

impl From<Vec<String>> for Value {
    fn from(value: Vec<String>) -> Self {
        Self::Array(value.into_iter().map(Value::String).collect())
    }
}

/// A dictionary with string keys, kept in insertion order so encoded bodies read in
/// the order they were built.
///
/// Equality ignores key order: JSON decoding does not preserve it, and two
/// dictionaries with the same entries mean the same thing.
#[derive(Clone, Default)]
pub struct Dict {
    /// Keys are unique: `insert` replaces, and the parsers keep the last duplicate.
    entries: Vec<(String, Value)>,
}

impl Dict {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`, replacing (in place) any existing value for `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => self.entries.push((key, value)),
        }
    }

    /// Builder form of [`Dict::insert`].
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Required string.
    pub fn str(&self, key: &str) -> Result<&str, DictError> {
        required(key, self.opt_str(key)?)
    }

    /// Optional string: `Ok(None)` when absent, an error when present with another type.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, DictError> {
        self.typed(key, "a string", |v| match v {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn int(&self, key: &str) -> Result<i64, DictError> {
        required(key, self.opt_int(key)?)
    }

    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, DictError> {
        self.typed(key, "an integer", |v| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        })
    }

    pub fn bool(&self, key: &str) -> Result<bool, DictError> {
        required(key, self.opt_bool(key)?)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, DictError> {
        self.typed(key, "a boolean", |v| match v {
            Value::Boolean(b) => Some(*b),
            _ => None,
        })
    }

    /// Required data: [`Value::Data`], or a base64 string (standard alphabet, padded)
    /// as JSON carries it.
    pub fn data(&self, key: &str) -> Result<Vec<u8>, DictError> {
        required(key, self.opt_data(key)?)
    }

    pub fn opt_data(&self, key: &str) -> Result<Option<Vec<u8>>, DictError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Data(data)) => Ok(Some(data.clone())),
            Some(Value::String(encoded)) => {
                BASE64
                    .decode(encoded)
                    .map(Some)
                    .map_err(|e| DictError::InvalidData {
                        field: key.to_owned(),
                        reason: format!("not valid base64: {e}"),
                    })
            }
            Some(_) => Err(wrong_type(key, "data (or a base64 string)")),
        }
    }

    pub fn array(&self, key: &str) -> Result<&[Value], DictError> {
        required(key, self.opt_array(key)?)
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&[Value]>, DictError> {
        self.typed(key, "an array", |v| match v {
            Value::Array(items) => Some(items.as_slice()),
            _ => None,
        })
    }

    /// Required array of strings; an element of another type is reported as `key[i]`.
    pub fn string_array(&self, key: &str) -> Result<Vec<String>, DictError> {
        required(key, self.opt_string_array(key)?)
    }

    pub fn opt_string_array(&self, key: &str) -> Result<Option<Vec<String>>, DictError> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(wrong_type(&index_path(key, i), "a string")),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    pub fn dict(&self, key: &str) -> Result<&Dict, DictError> {
        required(key, self.opt_dict(key)?)
    }

    pub fn opt_dict(&self, key: &str) -> Result<Option<&Dict>, DictError> {
        self.typed(key, "a dictionary", |v| match v {
            Value::Dict(d) => Some(d),
            _ => None,
        })
    }

    /// Looks up `key` and converts it with `extract`, which returns `None` on a type
    /// mismatch.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        extract: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, DictError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => extract(value)
                .map(Some)
                .ok_or_else(|| wrong_type(key, expected)),
        }
    }

    /// Encodes as an XML property list (with the XML declaration and plist DOCTYPE) or
    /// as compact JSON, keeping insertion order.
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::Plist => {
                let mut out = Vec::new();
                // Every `Value` maps to a plist type and a `Vec` never fails to grow, so
                // the writer has nothing to report.
                plist::Value::Dictionary(plist_from_dict(self))
                    .to_writer_xml(&mut out)
                    .expect("writing a plist to memory failed");
                out
            }
            Encoding::Json => {
                let mut out = String::new();
                write_json_dict(self, &mut out);
                out.into_bytes()
            }
        }
    }

    /// Decodes a body; the top level must be a dictionary. An empty (or all-whitespace)
    /// body decodes to an empty dictionary, as GET requests carry no body.
    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<Dict, DictError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Dict::new());
        }
        let decoded = match encoding {
            Encoding::Plist => decode_plist(bytes),
            Encoding::Json => decode_json(bytes),
        };
        decoded.map_err(|reason| DictError::Malformed {
            encoding: encoding.name(),
            reason,
        })
    }
}

impl fmt::Debug for Dict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Dict {
    fn eq(&self, other: &Self) -> bool {
        // Keys are unique, so equal lengths plus every entry found in `other` means the
        // same entries.
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// Why a dictionary could not be decoded or a field could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DictError {
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("field `{field}`: {reason}")]
    InvalidData { field: String, reason: String },
    /// `encoding` is "property list" or "JSON".
    #[error("body is not a valid {encoding} dictionary: {reason}")]
    Malformed {
        encoding: &'static str,
        reason: String,
    },
    #[error("unsupported media type `{0}`; use application/x-plist or application/json")]
    UnsupportedMediaType(String),
}

impl DictError {
    /// The field the error is about, if any (for array elements, `key[i]`).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::MissingField(field)
            | Self::WrongType { field, .. }
            | Self::InvalidData { field, .. } => Some(field),
            Self::Malformed { .. } | Self::UnsupportedMediaType(_) => None,
        }
    }
}

fn required<T>(key: &str, value: Option<T>) -> Result<T, DictError> {
    value.ok_or_else(|| DictError::MissingField(key.to_owned()))
}

fn wrong_type(field: &str, expected: &'static str) -> DictError {
    DictError::WrongType {
        field: field.to_owned(),
        expected,
    }
}

/// Paths name nested values in error messages: `a.b[2].c`.
fn key_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Where a problem is, for `Malformed` reasons.
fn at(path: &str) -> String {
    if path.is_empty() {
        "the top-level dictionary".to_owned()
    } else {
        format!("`{path}`")
    }
}

fn too_deep(path: &str) -> String {
    format!("{}: nested more than {MAX_DEPTH} levels deep", at(path))
}

fn unsupported(path: &str, what: &str) -> String {
    format!("{}: {what} are not supported", at(path))
}

fn out_of_range(path: &str) -> String {
    format!("{}: integer does not fit in 64 signed bits", at(path))
}

fn not_a_dict(found: &str) -> String {
    format!("the top level must be a dictionary, not {found}")
}

fn plist_from_dict(dict: &Dict) -> plist::Dictionary {
    dict.iter()
        .map(|(key, value)| (key, plist_from_value(value)))
        .collect()
}

fn plist_from_value(value: &Value) -> plist::Value {
    match value {
        Value::String(s) => plist::Value::String(s.clone()),
        Value::Integer(i) => plist::Value::Integer((*i).into()),
        Value::Boolean(b) => plist::Value::Boolean(*b),
        Value::Data(data) => plist::Value::Data(data.clone()),
        Value::Array(items) => plist::Value::Array(items.iter().map(plist_from_value).collect()),
        Value::Dict(dict) => plist::Value::Dictionary(plist_from_dict(dict)),
    }
}

fn write_json_dict(dict: &Dict, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in dict.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_string(key, out);
        out.push(':');
        write_json_value(value, out);
    }
    out.push('}');
}

fn write_json_value(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => write_json_string(s, out),
        Value::Integer(i) => out.push_str(&i.to_string()),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Data(data) => {
            // Base64 needs no escaping.
            out.push('"');
            BASE64.encode_string(data, out);
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_value(item, out);
            }
            out.push(']');
        }
        Value::Dict(dict) => write_json_dict(dict, out),
    }
}

/// Writes a JSON string literal (RFC 8259 §7): quotes, backslashes and control
/// characters escaped, everything else verbatim UTF-8.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn decode_json(bytes: &[u8]) -> Result<Dict, String> {
    // serde_json stops at its own recursion limit (128) before the stack is at risk;
    // the conversion below enforces the protocol's tighter one.
    match serde_json::from_slice(bytes).map_err(|e| e.to_string())? {
        Json::Object(map) => json_dict(map, "", 1),
        other => Err(not_a_dict(json_kind(&other))),
    }
}

/// A JSON value as a body holds it. Not serde_json's own `Value`: with serde_json's
/// `raw_value` feature, which a dependency turns on, that reads an object whose first key is
/// `$serde_json::private::RawValue` as the JSON text in that key's string, so a body could
/// decode to a dictionary other than the one it spells (found by the `dict_json` fuzz target).
enum Json {
    Null,
    Bool(bool),
    Integer(i64),
    /// An integer above `i64::MAX`.
    TooLarge,
    Float,
    String(String),
    Array(Vec<Json>),
    /// Sorted by key; a duplicated key keeps its last value.
    Object(std::collections::BTreeMap<String, Json>),
}

impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Json, E> {
        Ok(Json::Integer(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Json, E> {
        Ok(i64::try_from(u).map_or(Json::TooLarge, Json::Integer))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Float)
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::String(s))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = std::collections::BTreeMap::new();
        while let Some((key, value)) = map.next_entry::<String, Json>()? {
            entries.insert(key, value);
        }
        Ok(Json::Object(entries))
    }
}

/// Converts a JSON object found at `path`, itself at nesting level `depth`.
fn json_dict(
    map: std::collections::BTreeMap<String, Json>,
    path: &str,
    depth: usize,
) -> Result<Dict, String> {
    let mut entries = Vec::with_capacity(map.len());
    for (key, value) in map {
        let value = json_value(value, &key_path(path, &key), depth)?;
        entries.push((key, value));
    }
    Ok(Dict { entries })
}

/// Converts the JSON value at `path`, inside a container at nesting level `depth`.
fn json_value(value: Json, path: &str, depth: usize) -> Result<Value, String> {
    Ok(match value {
        Json::Null => {
            return Err(format!(
                "{}: null is not supported; omit the field instead",
                at(path)
            ))
        }
        Json::Bool(b) => Value::Boolean(b),
        Json::Integer(i) => Value::Integer(i),
        Json::Float => return Err(unsupported(path, "floating-point numbers")),
        Json::TooLarge => return Err(out_of_range(path)),
        Json::String(s) => Value::String(s),
        Json::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(path));
            }
            let items = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| json_value(item, &index_path(path, i), depth + 1))
                .collect::<Result<_, _>>()?;
            Value::Array(items)
        }
        Json::Object(map) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(path));
            }
            Value::Dict(json_dict(map, path, depth + 1)?)
        }
    })
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Integer(_) | Json::TooLarge | Json::Float => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn decode_plist(bytes: &[u8]) -> Result<Dict, String> {
    let invalid = |reason: String| format!("invalid XML property list: {reason}");
    check_xml_nesting(bytes).map_err(invalid)?;
    match plist::Value::from_reader_xml(bytes).map_err(|e| invalid(e.to_string()))? {
        plist::Value::Dictionary(dict) => plist_dict(dict, "", 1),
        other => Err(not_a_dict(plist_kind(&other))),
    }
}

/// Converts a plist dictionary found at `path`, itself at nesting level `depth`.
fn plist_dict(dict: plist::Dictionary, path: &str, depth: usize) -> Result<Dict, String> {
    let mut entries = Vec::with_capacity(dict.len());
    for (key, value) in dict {
        let value = plist_value(value, &key_path(path, &key), depth)?;
        entries.push((key, value));
    }
    // A plist dictionary's keys are already unique (the plist crate keeps the last
    // duplicate).
    Ok(Dict { entries })
}

/// Converts the plist value at `path`, inside a container at nesting level `depth`.
fn plist_value(value: plist::Value, path: &str, depth: usize) -> Result<Value, String> {
    use plist::Value as Plist;
    Ok(match value {
        Plist::String(s) => Value::String(s),
        Plist::Integer(i) => Value::Integer(i.as_signed().ok_or_else(|| out_of_range(path))?),
        Plist::Boolean(b) => Value::Boolean(b),
        Plist::Data(data) => Value::Data(data),
        Plist::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(path));
            }
            let items = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| plist_value(item, &index_path(path, i), depth + 1))
                .collect::<Result<_, _>>()?;
            Value::Array(items)
        }
        Plist::Dictionary(dict) => {
            if depth >= MAX_DEPTH {
                return Err(too_deep(path));
            }
            Value::Dict(plist_dict(dict, path, depth + 1)?)
        }
        other => {
            return Err(format!(
                "{}: {} are not supported",
                at(path),
                plist_kind(&other)
            ))
        }
    })
}

/// What a plist value other than a dictionary is: singular for top-level messages, and read
/// as plural ("… are not supported") only for the unsupported kinds. An XML property list
/// cannot hold the other kinds (UIDs are binary-only).
fn plist_kind(value: &plist::Value) -> &'static str {
    use plist::Value as Plist;
    match value {
        Plist::String(_) => "a string",
        Plist::Integer(_) => "an integer",
        Plist::Boolean(_) => "a boolean",
        Plist::Data(_) => "data",
        Plist::Array(_) => "an array",
        Plist::Real(_) => "floating-point numbers (<real>)",
        Plist::Date(_) => "dates (<date>)",
        _ => "values of this kind",
    }
}

/// Nesting beyond which an XML body is rejected before the plist crate parses it.
///
/// The plist crate parses without recursion but drops its value tree recursively, so a
/// few hundred kilobytes of `<array>` tags would abort the process with a stack
/// overflow. This bound only has to be safe; [`MAX_DEPTH`] is enforced afterwards with a
/// precise path.
const XML_NESTING_LIMIT: usize = 128;

/// Rejects XML whose `<dict>`/`<array>` nesting exceeds [`XML_NESTING_LIMIT`].
///
/// The scan must never see less nesting than quick-xml (the plist crate's parser), so it
/// tokenizes the way quick-xml 0.42 does and rejects constructs where the two could
/// disagree about where markup ends (odd comments, DOCTYPE internal subsets, other `<!`
/// markup, `<?>`). None of them occur in property lists.
/// It relies on quick-xml reading UTF-8 only (its `encoding` feature is off), which it
/// also enforces.
fn check_xml_nesting(xml: &[u8]) -> Result<(), String> {
    std::str::from_utf8(xml).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut depth = 0usize;
    let mut rest = xml;
    while let Some(lt) = rest.iter().position(|&b| b == b'<') {
        let markup = &rest[lt..];
        let len = if markup.starts_with(b"<!--") {
            comment_len(markup)?
        } else if markup.starts_with(b"<!DOCTYPE") {
            doctype_len(markup)?
        } else if markup.starts_with(b"<![CDATA[") {
            // The plist crate silently drops CDATA content; refuse rather than lose data.
            return Err("CDATA sections are not supported".to_owned());
        } else if markup.starts_with(b"<!") {
            return Err("unsupported `<!` markup".to_owned());
        } else if markup.starts_with(b"<?") {
            processing_instruction_len(markup)?
        } else {
            let len = tag_len(markup)?;
            let content = &markup[1..len - 1];
            if let Some(name) = content.strip_prefix(b"/") {
                // quick-xml compares end names with trailing whitespace trimmed.
                let name = name.trim_ascii_end();
                if is_collection(name) {
                    depth = depth.saturating_sub(1);
                }
            } else {
                // `<dict/>` is opened and closed at once, but still nests for a moment.
                let (content, empty) = match content.strip_suffix(b"/") {
                    Some(content) => (content, true),
                    None => (content, false),
                };
                let name = content
                    .split(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .next()
                    .unwrap_or_default();
                if is_collection(name) {
                    if depth >= XML_NESTING_LIMIT {
                        return Err(format!("nested more than {MAX_DEPTH} levels deep"));
                    }
                    if !empty {
                        depth += 1;
                    }
                }
            }
            len
        };
        rest = &markup[len..];
    }
    Ok(())
}

/// Whether a tag name is `dict` or `array`, ignoring a namespace prefix as the plist
/// crate does (quick-xml's local name: everything after the first `:`).
fn is_collection(name: &[u8]) -> bool {
    let local = match name.iter().position(|&b| b == b':') {
        Some(colon) => &name[colon + 1..],
        None => name,
    };
    local == b"dict" || local == b"array"
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of `<!--…-->`, ending at the first `--` as XML requires. The body must be
/// non-empty and not start with `-` or `>`, so no `>` inside it can follow a `--` and
/// every parser agrees where the comment ends.
fn comment_len(markup: &[u8]) -> Result<usize, String> {
    let body = &markup[4..];
    let end = find(body, b"--").ok_or("unclosed comment")?;
    if end == 0 || matches!(body[0], b'-' | b'>') || body.get(end + 2) != Some(&b'>') {
        return Err(
            "comments must be non-empty, must not start with `-` or `>`, and must not \
             contain `--`"
                .to_owned(),
        );
    }
    Ok(4 + end + 3)
}

/// Length of `<!DOCTYPE …>`, skipping quoted literals as quick-xml does.
fn doctype_len(markup: &[u8]) -> Result<usize, String> {
    let mut i = 2;
    while let Some(&b) = markup.get(i) {
        match b {
            b'\'' | b'"' => {
                let close = markup[i + 1..]
                    .iter()
                    .position(|&c| c == b)
                    .ok_or("unclosed DOCTYPE")?;
                i += close + 2;
            }
            b'[' => return Err("DOCTYPE internal subsets are not supported".to_owned()),
            b'>' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err("unclosed DOCTYPE".to_owned())
}

/// Length of `<?…?>`; accepted only when the first `>` closes it.
fn processing_instruction_len(markup: &[u8]) -> Result<usize, String> {
    match markup.iter().position(|&b| b == b'>') {
        Some(gt) if gt > 2 && markup[gt - 1] == b'?' => Ok(gt + 1),
        Some(_) => Err("processing instructions must end at their first `>` with `?>`".to_owned()),
        None => Err("unclosed processing instruction".to_owned()),
    }
}

/// Length of a start or end tag: up to the first `>` outside quotes, as quick-xml's
/// element parser finds it.
fn tag_len(markup: &[u8]) -> Result<usize, String> {
    let mut quote = None;
    for (i, &b) in markup.iter().enumerate().skip(1) {
        match (quote, b) {
            (None, b'>') => return Ok(i + 1),
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if q == b => quote = None,
            _ => {}
        }
    }
    Err("unclosed tag".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dict {
        Dict::new()
            .with("name", "Zoë 🚀 <&> \"quoted\" \\ back")
            .with("count", 42i64)
            .with("negative", -7i64)
            .with("max", i64::MAX)
            .with("min", i64::MIN)
            .with("zero", 0i64)
            .with("yes", true)
            .with("no", false)
            .with("blob", vec![0u8, 1, 2, 254, 255])
            .with("empty_blob", Vec::<u8>::new())
            .with("empty_string", "")
            .with("tags", vec!["a".to_owned(), "b".to_owned()])
            .with(
                "mixed",
                vec![
                    Value::from(1i64),
                    Value::from("two"),
                    Value::from(vec![3u8]),
                    Value::from(Dict::new().with("inner", true)),
                    Value::Array(vec![]),
                ],
            )
            .with(
                "nested",
                Dict::new()
                    .with("level", 2i64)
                    .with("deeper", Dict::new().with("level", 3i64))
                    .with("empty", Dict::new()),
            )
            .with("ключ", "значение")
            .with("control", "tab\there\nnewline\r\u{1}\u{1f}")
    }

    fn malformed_reason(bytes: &[u8], encoding: Encoding) -> String {
        match Dict::decode(bytes, encoding) {
            Err(DictError::Malformed {
                encoding: name,
                reason,
            }) => {
                assert_eq!(name, encoding.name());
                reason
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn plist_doc(body: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
             \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">{body}</plist>"
        )
        .into_bytes()
    }

    #[test]
    fn round_trips_in_both_encodings() {
        let dict = sample();
        for encoding in [Encoding::Plist, Encoding::Json] {
            let bytes = dict.encode(encoding);
            let decoded = Dict::decode(&bytes, encoding).unwrap_or_else(|e| {
                panic!("{encoding:?}: {e}\n{}", String::from_utf8_lossy(&bytes))
            });
            // JSON turns data into base64 strings; the typed getter reads both forms.
            assert_eq!(decoded.data("blob").unwrap(), vec![0, 1, 2, 254, 255]);
            assert_eq!(decoded.data("empty_blob").unwrap(), Vec::<u8>::new());
            if encoding == Encoding::Plist {
                assert_eq!(decoded, dict);
                let keys: Vec<_> = decoded.keys().collect();
                assert_eq!(keys, dict.keys().collect::<Vec<_>>());
            }
            assert_eq!(decoded.str("name").unwrap(), dict.str("name").unwrap());
            assert_eq!(
                decoded.str("control").unwrap(),
                dict.str("control").unwrap()
            );
            assert_eq!(decoded.str("ключ").unwrap(), "значение");
            assert_eq!(decoded.int("max").unwrap(), i64::MAX);
            assert_eq!(decoded.int("min").unwrap(), i64::MIN);
            assert_eq!(decoded.int("negative").unwrap(), -7);
            assert!(decoded.bool("yes").unwrap());
            assert!(!decoded.bool("no").unwrap());
            assert_eq!(decoded.string_array("tags").unwrap(), ["a", "b"]);
            let nested = decoded.dict("nested").unwrap();
            assert_eq!(nested.dict("deeper").unwrap().int("level").unwrap(), 3);
            assert!(nested.dict("empty").unwrap().is_empty());
            assert_eq!(decoded.array("mixed").unwrap().len(), 5);
        }
    }

    #[test]
    fn json_round_trip_equals_original_once_data_is_base64() {
        let dict = Dict::new()
            .with("blob", vec![1u8, 2, 3])
            .with("n", 1i64)
            .with("list", vec![Value::from(vec![4u8])]);
        let decoded = Dict::decode(&dict.encode(Encoding::Json), Encoding::Json).unwrap();
        let expected = Dict::new()
            .with("blob", "AQID")
            .with("n", 1i64)
            .with("list", vec![Value::from("BA==")]);
        assert_eq!(decoded, expected);
    }

    #[test]
    fn json_encoding_is_compact_and_ordered() {
        let dict = Dict::new()
            .with("z", 1i64)
            .with("a", "x\"y")
            .with("data", vec![0xffu8])
            .with("list", vec![Value::from(true), Value::from(false)])
            .with("d", Dict::new());
        assert_eq!(
            String::from_utf8(dict.encode(Encoding::Json)).unwrap(),
            r#"{"z":1,"a":"x\"y","data":"/w==","list":[true,false],"d":{}}"#
        );
    }

    #[test]
    fn json_string_escaping_matches_serde_json() {
        let all_controls: String = (0u8..0x20).map(char::from).collect();
        for s in [
            all_controls.as_str(),
            "\"\\/",
            "\u{7f}\u{2028}\u{2029}",
            "😀 é",
        ] {
            let mut out = String::new();
            write_json_string(s, &mut out);
            let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(parsed, serde_json::Value::String(s.to_owned()), "{out}");
        }
    }

    #[test]
    fn plist_encoding_has_the_standard_header() {
        let bytes = Dict::new().with("a", 1i64).encode(Encoding::Plist);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{text}"
        );
        assert!(text.contains("<!DOCTYPE plist PUBLIC"), "{text}");
        assert!(text.contains("<key>a</key>"), "{text}");
        assert!(text.contains("<integer>1</integer>"), "{text}");
        assert!(text.trim_end().ends_with("</plist>"), "{text}");
        let empty = String::from_utf8(Dict::new().encode(Encoding::Plist)).unwrap();
        assert_eq!(
            Dict::decode(empty.as_bytes(), Encoding::Plist).unwrap(),
            Dict::new()
        );
    }

    #[test]
    fn plist_keeps_insertion_order() {
        let dict = Dict::new().with("z", 1i64).with("a", 2i64).with("m", 3i64);
        let text = String::from_utf8(dict.encode(Encoding::Plist)).unwrap();
        let z = text.find("<key>z</key>").unwrap();
        let a = text.find("<key>a</key>").unwrap();
        let m = text.find("<key>m</key>").unwrap();
        assert!(z < a && a < m, "{text}");
    }

    #[test]
    fn decodes_handwritten_plist() {
        let bytes = plist_doc(
            "<dict>\
               <key>user</key><string>tel:+16502530000</string>\
               <key>token</key><data>\n  AAEC\n  /w==\n</data>\
               <key>ttl</key><integer>-3600</integer>\
               <key>push</key><true/>\
               <key>list</key><array><string>a</string><string/></array>\
               <key>empty</key><dict/>\
             </dict>",
        );
        let dict = Dict::decode(&bytes, Encoding::Plist).unwrap();
        assert_eq!(dict.str("user").unwrap(), "tel:+16502530000");
        assert_eq!(dict.data("token").unwrap(), vec![0, 1, 2, 0xff]);
        assert_eq!(dict.int("ttl").unwrap(), -3600);
        assert!(dict.bool("push").unwrap());
        assert_eq!(dict.string_array("list").unwrap(), ["a", ""]);
        assert!(dict.dict("empty").unwrap().is_empty());
        // The `<plist>` wrapper and prologue are optional.
        let bare = Dict::decode(
            b"<dict><key>a</key><integer>1</integer></dict>",
            Encoding::Plist,
        )
        .unwrap();
        assert_eq!(bare, Dict::new().with("a", 1i64));
    }

    #[test]
    fn empty_bodies_decode_to_empty_dicts() {
        for encoding in [Encoding::Plist, Encoding::Json] {
            for body in [&b""[..], b"   ", b"\r\n\t "] {
                assert_eq!(Dict::decode(body, encoding).unwrap(), Dict::new());
            }
        }
        assert_eq!(Dict::decode(b"{}", Encoding::Json).unwrap(), Dict::new());
    }

    #[test]
    fn top_level_must_be_a_dictionary() {
        for (body, found) in [
            (&b"[]"[..], "an array"),
            (b"\"s\"", "a string"),
            (b"1", "a number"),
            (b"true", "a boolean"),
            (b"null", "null"),
        ] {
            assert_eq!(
                malformed_reason(body, Encoding::Json),
                format!("the top level must be a dictionary, not {found}")
            );
        }
        for (body, found) in [
            ("<array/>", "an array"),
            ("<string>s</string>", "a string"),
            ("<integer>1</integer>", "an integer"),
            ("<true/>", "a boolean"),
        ] {
            assert_eq!(
                malformed_reason(&plist_doc(body), Encoding::Plist),
                format!("the top level must be a dictionary, not {found}")
            );
        }
        let reason = malformed_reason(&plist_doc(""), Encoding::Plist);
        assert!(
            reason.starts_with("invalid XML property list: "),
            "{reason}"
        );
    }

    #[test]
    fn rejects_malformed_xml() {
        for body in [
            &b"not xml at all"[..],
            b"<dict><key>a</key><string>x</dict>",
            b"<dict><key>a</key><integer>abc</integer></dict>",
            b"<dict><key>a</key><data>!!!</data></dict>",
            b"<dict><key>a</key><unknown/></dict>",
            b"<dict><key>a</key><array>",
            b"<dict><key>a</key><array></dict>",
            b"<dict><key>a</key><dict><key>b</key></dict></dict>",
            b"<dict><integer>1</integer></dict>",
            b"<dict><dict/></dict>",
            b"<dict/><dict/>",
            b"<dict",
            b"\xff\xfe<dict/>",
        ] {
            let reason = malformed_reason(body, Encoding::Plist);
            assert!(
                reason.starts_with("invalid XML property list: "),
                "{}: {reason}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// serde_json's private token keys are keys like any other: the body reads as it is spelt,
    /// and its own encoding reads back the same.
    #[test]
    fn serde_json_private_keys_are_ordinary_keys() {
        let body = br#"{"$serde_json::private::RawValue":"{\"rung\":1}","b":"x"}"#;
        let dict = Dict::decode(body, Encoding::Json).unwrap();
        assert_eq!(
            dict,
            Dict::new()
                .with("$serde_json::private::RawValue", r#"{"rung":1}"#)
                .with("b", "x")
        );
        let again = Dict::decode(&dict.encode(Encoding::Json), Encoding::Json).unwrap();
        assert_eq!(again, dict);
        let number = br#"{"$serde_json::private::Number":"12"}"#;
        assert_eq!(
            Dict::decode(number, Encoding::Json).unwrap(),
            Dict::new().with("$serde_json::private::Number", "12")
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        // Neither the plist crate nor the JSON reading reports duplicates; both keep the last.
        let plist = plist_doc(
            "<dict><key>a</key><integer>1</integer><key>a</key><integer>2</integer></dict>",
        );
        let json = br#"{"a": 1, "a": 2}"#;
        for (body, encoding) in [(&plist[..], Encoding::Plist), (json, Encoding::Json)] {
            assert_eq!(
                Dict::decode(body, encoding).unwrap(),
                Dict::new().with("a", 2i64)
            );
        }
    }

    #[test]
    fn xml_prescan_accepts_ordinary_markup() {
        let bytes = plist_doc(
            "<!-- a comment with <dict> and > inside -->\n\
             <dict>\
               <?pi data?>\
               <key>s</key><string>&lt;/dict>&lt;/array> &lt;dict></string>\
               <key>quoted</key><array attr=\"</array>\"><dict x='/>'/></array>\
             </dict>",
        );
        let dict = Dict::decode(&bytes, Encoding::Plist).unwrap();
        assert_eq!(dict.str("s").unwrap(), "</dict></array> <dict>");
        assert_eq!(dict.array("quoted").unwrap(), [Value::Dict(Dict::new())]);
    }

    #[test]
    fn xml_prescan_rejects_ambiguous_markup() {
        let cases = [
            ("<!----><dict/>", "comments must be non-empty"),
            ("<!-- a -- b --><dict/>", "comments must be non-empty"),
            ("<!--->--><dict/>", "comments must be non-empty"),
            ("<!-->--><dict/>", "comments must be non-empty"),
            ("<!-- a --->", "comments must be non-empty"),
            ("<!-- unclosed <dict/>", "unclosed comment"),
            ("<!--", "unclosed comment"),
            (
                "<dict><key>a</key><string><![CDATA[x]]></string></dict>",
                "CDATA sections",
            ),
            ("<!ENTITY x 'y'><dict/>", "unsupported `<!` markup"),
            ("<!doctype plist><dict/>", "unsupported `<!` markup"),
            ("<?><dict/>", "processing instructions"),
            ("<?pi > ?><dict/>", "processing instructions"),
            ("<?pi", "unclosed processing instruction"),
            ("<dict attr='>", "unclosed tag"),
        ];
        for (body, expected) in cases {
            let reason = malformed_reason(body.as_bytes(), Encoding::Plist);
            assert!(reason.contains(expected), "{body}: {reason}");
        }
        let reason = malformed_reason(
            b"<!DOCTYPE plist [<!ENTITY x 'y'>]><dict/>",
            Encoding::Plist,
        );
        assert!(reason.contains("internal subsets"), "{reason}");
        let reason = malformed_reason(b"<!DOCTYPE plist 'unclosed>", Encoding::Plist);
        assert!(reason.contains("unclosed DOCTYPE"), "{reason}");
        let reason = malformed_reason(b"<!DOCTYPE plist", Encoding::Plist);
        assert!(reason.contains("unclosed DOCTYPE"), "{reason}");
    }

    #[test]
    fn xml_prescan_counts_what_quick_xml_sees() {
        // End tags hidden in comments or quotes must not offset real nesting.
        let hidden_ends = "<!-- </array> -->".repeat(200) + &"<array x='</array>'>".repeat(200);
        let body = format!("<dict><key>a</key>{hidden_ends}");
        let reason = malformed_reason(body.as_bytes(), Encoding::Plist);
        assert!(reason.contains("nested more than"), "{reason}");
        // Namespace prefixes count too, as the plist crate ignores them.
        let body = format!("<dict><key>a</key>{}", "<p:array>".repeat(200));
        let reason = malformed_reason(body.as_bytes(), Encoding::Plist);
        assert!(reason.contains("nested more than"), "{reason}");
        // Empty collections nest for a moment, but do not accumulate.
        let body = format!(
            "<dict><key>a</key><array>{}</array></dict>",
            "<array/><dict />".repeat(500)
        );
        assert_eq!(
            Dict::decode(body.as_bytes(), Encoding::Plist)
                .unwrap()
                .array("a")
                .unwrap()
                .len(),
            1000
        );
    }

    #[test]
    fn rejects_unsupported_plist_types_naming_the_path() {
        let cases = [
            (
                "<dict><key>a</key><real>1.5</real></dict>",
                "`a`: floating-point numbers (<real>) are not supported",
            ),
            (
                "<dict><key>a</key><dict><key>when</key><date>2024-01-01T00:00:00Z</date></dict></dict>",
                "`a.when`: dates (<date>) are not supported",
            ),
            (
                "<dict><key>a</key><array><true/><real>2</real></array></dict>",
                "`a[1]`: floating-point numbers (<real>) are not supported",
            ),
            (
                "<dict><key>big</key><integer>18446744073709551615</integer></dict>",
                "`big`: integer does not fit in 64 signed bits",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                malformed_reason(&plist_doc(body), Encoding::Plist),
                expected,
                "{body}"
            );
        }
    }

    #[test]
    fn rejects_malformed_json() {
        for body in [
            &b"{\"a\": 1"[..],
            b"{\"a\":",
            b"{\"a\": tru}",
            b"{'a': 1}",
            b"{\"a\": 1} trailing",
            b"\xff",
        ] {
            let reason = malformed_reason(body, Encoding::Json);
            assert!(!reason.is_empty());
        }
        let cases = [
            (
                &br#"{"a": 1.5}"#[..],
                "`a`: floating-point numbers are not supported",
            ),
            (
                br#"{"a": 1e3}"#,
                "`a`: floating-point numbers are not supported",
            ),
            (
                br#"{"a": {"b": [1, null]}}"#,
                "`a.b[1]`: null is not supported; omit the field instead",
            ),
            (
                br#"{"a": null}"#,
                "`a`: null is not supported; omit the field instead",
            ),
            (
                br#"{"big": 9223372036854775808}"#,
                "`big`: integer does not fit in 64 signed bits",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(malformed_reason(body, Encoding::Json), expected);
        }
    }

    #[test]
    fn accepts_i64_extremes_in_json() {
        let dict = Dict::decode(
            br#"{"max": 9223372036854775807, "min": -9223372036854775808}"#,
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(dict.int("max").unwrap(), i64::MAX);
        assert_eq!(dict.int("min").unwrap(), i64::MIN);
    }

    fn nested_json(depth: usize) -> String {
        // `depth` objects including the top level.
        let mut body = String::from("1");
        for _ in 1..depth {
            body = format!("{{\"k\":{body}}}");
        }
        format!("{{\"k\":{body}}}")
    }

    fn nested_plist(depth: usize) -> Vec<u8> {
        let open = "<dict><key>k</key>".repeat(depth);
        let close = "</dict>".repeat(depth);
        plist_doc(&format!("{open}<integer>1</integer>{close}"))
    }

    #[test]
    fn nesting_up_to_the_limit_is_accepted() {
        for encoding in [Encoding::Plist, Encoding::Json] {
            let body = match encoding {
                Encoding::Plist => nested_plist(MAX_DEPTH),
                Encoding::Json => nested_json(MAX_DEPTH).into_bytes(),
            };
            let mut dict = &Dict::decode(&body, encoding).unwrap();
            for _ in 1..MAX_DEPTH {
                dict = dict.dict("k").unwrap();
            }
            assert_eq!(dict.int("k").unwrap(), 1);
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_rejected() {
        let path = vec!["k"; MAX_DEPTH].join(".");
        let expected = format!("`{path}`: nested more than {MAX_DEPTH} levels deep");
        assert_eq!(
            malformed_reason(&nested_plist(MAX_DEPTH + 1), Encoding::Plist),
            expected
        );
        assert_eq!(
            malformed_reason(nested_json(MAX_DEPTH + 1).as_bytes(), Encoding::Json),
            expected
        );
        // Arrays count too.
        let arrays = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        let reason = malformed_reason(arrays.as_bytes(), Encoding::Json);
        assert!(reason.contains("nested more than"), "{reason}");
    }

    #[test]
    fn hostile_nesting_fails_cleanly() {
        // Far deeper than any stack could recurse through if parsing were naive.
        let depth = 100_000;
        let unclosed = format!("<dict><key>a</key>{}", "<array>".repeat(depth));
        let closed = format!("{unclosed}{}</dict>", "</array>".repeat(depth));
        for plist in [unclosed, closed] {
            let reason = malformed_reason(plist.as_bytes(), Encoding::Plist);
            assert!(reason.contains("nested more than"), "{reason}");
        }

        let unclosed = format!("{{\"a\":{}", "[".repeat(depth));
        let closed = format!("{unclosed}{}}}", "]".repeat(depth));
        for json in [unclosed, closed] {
            let reason = malformed_reason(json.as_bytes(), Encoding::Json);
            assert!(reason.contains("recursion limit exceeded"), "{reason}");
        }

        for encoding in [Encoding::Plist, Encoding::Json] {
            let body = match encoding {
                Encoding::Plist => nested_plist(1000),
                Encoding::Json => nested_json(1000).into_bytes(),
            };
            malformed_reason(&body, encoding);
        }
    }

    #[test]
    fn typed_getters_return_values() {
        let dict = sample();
        assert_eq!(
            dict.opt_str("name").unwrap(),
            Some(dict.str("name").unwrap())
        );
        assert_eq!(dict.opt_int("count").unwrap(), Some(42));
        assert_eq!(dict.opt_bool("yes").unwrap(), Some(true));
        assert_eq!(
            dict.opt_data("blob").unwrap(),
            Some(vec![0, 1, 2, 254, 255])
        );
        assert_eq!(dict.opt_array("tags").unwrap().map(<[Value]>::len), Some(2));
        assert_eq!(
            dict.opt_string_array("tags").unwrap(),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        assert!(dict.opt_dict("nested").unwrap().is_some());
        assert_eq!(
            Dict::new().with("b64", "AAEC").data("b64").unwrap(),
            [0, 1, 2]
        );
    }

    #[test]
    fn optional_getters_return_none_when_absent() {
        let dict = Dict::new();
        assert_eq!(dict.opt_str("x"), Ok(None));
        assert_eq!(dict.opt_int("x"), Ok(None));
        assert_eq!(dict.opt_bool("x"), Ok(None));
        assert_eq!(dict.opt_data("x"), Ok(None));
        assert_eq!(dict.opt_array("x"), Ok(None));
        assert_eq!(dict.opt_string_array("x"), Ok(None));
        assert_eq!(dict.opt_dict("x"), Ok(None));
    }

    #[test]
    fn required_getters_report_missing_fields() {
        let dict = Dict::new();
        let missing = Err::<(), _>(DictError::MissingField("x".to_owned()));
        assert_eq!(dict.str("x").map(drop), missing);
        assert_eq!(dict.int("x").map(drop), missing);
        assert_eq!(dict.bool("x").map(drop), missing);
        assert_eq!(dict.data("x").map(drop), missing);
        assert_eq!(dict.array("x").map(drop), missing);
        assert_eq!(dict.string_array("x").map(drop), missing);
        assert_eq!(dict.dict("x").map(drop), missing);
        let err = dict.str("x").unwrap_err();
        assert_eq!(err.to_string(), "missing field `x`");
        assert_eq!(err.field(), Some("x"));
    }

    #[test]
    fn getters_report_wrong_types_naming_the_field() {
        let dict = Dict::new()
            .with("s", "text")
            .with("i", 1i64)
            .with("list", vec![Value::from("ok"), Value::from(2i64)]);
        let wrong = |field: &str, expected| {
            Err::<(), _>(DictError::WrongType {
                field: field.to_owned(),
                expected,
            })
        };
        assert_eq!(dict.str("i").map(drop), wrong("i", "a string"));
        assert_eq!(dict.opt_str("i").map(drop), wrong("i", "a string"));
        assert_eq!(dict.int("s").map(drop), wrong("s", "an integer"));
        assert_eq!(dict.opt_int("s").map(drop), wrong("s", "an integer"));
        assert_eq!(dict.bool("s").map(drop), wrong("s", "a boolean"));
        assert_eq!(dict.opt_bool("i").map(drop), wrong("i", "a boolean"));
        assert_eq!(
            dict.data("i").map(drop),
            wrong("i", "data (or a base64 string)")
        );
        assert_eq!(dict.array("s").map(drop), wrong("s", "an array"));
        assert_eq!(dict.opt_array("s").map(drop), wrong("s", "an array"));
        assert_eq!(dict.dict("s").map(drop), wrong("s", "a dictionary"));
        assert_eq!(dict.opt_dict("i").map(drop), wrong("i", "a dictionary"));
        assert_eq!(dict.string_array("s").map(drop), wrong("s", "an array"));
        assert_eq!(
            dict.string_array("list").map(drop),
            wrong("list[1]", "a string")
        );
        let err = dict.opt_string_array("list").unwrap_err();
        assert_eq!(err.field(), Some("list[1]"));
        assert_eq!(err.to_string(), "field `list[1]` must be a string");
    }

    #[test]
    fn data_getter_rejects_bad_base64() {
        for bad in ["not base64!", "AAE", "AAEC===", "AA EC"] {
            let err = Dict::new().with("d", bad).data("d").unwrap_err();
            assert!(
                matches!(&err, DictError::InvalidData { field, .. } if field == "d"),
                "{bad}: {err:?}"
            );
            assert_eq!(err.field(), Some("d"));
            assert!(
                err.to_string().starts_with("field `d`: not valid base64"),
                "{err}"
            );
        }
    }

    #[test]
    fn insert_replaces_in_place() {
        let mut dict = Dict::new().with("a", 1i64).with("b", 2i64);
        dict.insert("a", "one");
        assert_eq!(dict.len(), 2);
        assert_eq!(dict.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(dict.get("a"), Some(&Value::from("one")));
        assert!(dict.contains_key("b"));
        assert!(!dict.contains_key("c"));
        assert_eq!(dict.get("c"), None);
        assert!(!dict.is_empty());
        assert!(Dict::new().is_empty());
        assert_eq!(
            dict.iter().collect::<Vec<_>>(),
            [("a", &Value::from("one")), ("b", &Value::Integer(2))]
        );
    }

    #[test]
    fn equality_ignores_key_order() {
        let ab = Dict::new().with("a", 1i64).with("b", 2i64);
        let ba = Dict::new().with("b", 2i64).with("a", 1i64);
        assert_eq!(ab, ba);
        assert_ne!(ab, Dict::new().with("a", 1i64));
        assert_ne!(ab, Dict::new().with("a", 1i64).with("b", 3i64));
        assert_ne!(ab, Dict::new().with("a", 1i64).with("c", 2i64));
        assert_eq!(format!("{ab:?}"), r#"{"a": Integer(1), "b": Integer(2)}"#);
    }

    #[test]
    fn value_conversions() {
        assert_eq!(Value::from("s"), Value::String("s".to_owned()));
        assert_eq!(Value::from("s".to_owned()), Value::String("s".to_owned()));
        assert_eq!(Value::from(-1i64), Value::Integer(-1));
        assert_eq!(Value::from(true), Value::Boolean(true));
        assert_eq!(Value::from(vec![1u8]), Value::Data(vec![1]));
        assert_eq!(Value::from(Dict::new()), Value::Dict(Dict::new()));
        assert_eq!(
            Value::from(vec![Value::from(1i64)]),
            Value::Array(vec![Value::Integer(1)])
        );
        assert_eq!(
            Value::from(vec!["x".to_owned()]),
            Value::Array(vec![Value::String("x".to_owned())])
        );
    }

    #[test]
    fn content_types() {
        let cases: &[(Option<&str>, Encoding)] = &[
            (None, Encoding::Plist),
            (Some(""), Encoding::Plist),
            (Some("  "), Encoding::Plist),
            (Some("application/x-plist"), Encoding::Plist),
            (Some("application/xml"), Encoding::Plist),
            (Some("text/xml; charset=utf-8"), Encoding::Plist),
            (Some("Application/X-Plist"), Encoding::Plist),
            (Some("*/*"), Encoding::Plist),
            (Some("application/*"), Encoding::Plist),
            (Some("application/json"), Encoding::Json),
            (Some("application/json; charset=utf-8"), Encoding::Json),
            (Some(" APPLICATION/JSON "), Encoding::Json),
            (Some("application/problem+json"), Encoding::Json),
            (Some("application/vnd.switchyard+json;v=1"), Encoding::Json),
            (Some("text/html, application/json;q=0.9"), Encoding::Json),
            (
                Some("application/json, application/x-plist"),
                Encoding::Json,
            ),
            (
                Some("application/x-plist, application/json"),
                Encoding::Plist,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(
                Encoding::from_content_type(*value),
                Ok(*expected),
                "{value:?}"
            );
        }
        for value in [
            "text/plain",
            "application/octet-stream",
            "multipart/form-data; boundary=x",
            "json",
        ] {
            let err = Encoding::from_content_type(Some(value)).unwrap_err();
            assert_eq!(err, DictError::UnsupportedMediaType(value.to_owned()));
            assert_eq!(err.field(), None);
            assert_eq!(
                err.to_string(),
                format!(
                    "unsupported media type `{value}`; use application/x-plist or application/json"
                )
            );
        }
        assert_eq!(Encoding::Plist.content_type(), "application/x-plist");
        assert_eq!(Encoding::Json.content_type(), "application/json");
        for encoding in [Encoding::Plist, Encoding::Json] {
            assert_eq!(
                Encoding::from_content_type(Some(encoding.content_type())),
                Ok(encoding)
            );
        }
    }

    #[test]
    fn malformed_messages_name_the_encoding() {
        let err = Dict::decode(b"[]", Encoding::Json).unwrap_err();
        assert_eq!(err.field(), None);
        assert_eq!(
            err.to_string(),
            "body is not a valid JSON dictionary: the top level must be a dictionary, not an array"
        );
        let err = Dict::decode(b"<array/>", Encoding::Plist).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("body is not a valid property list dictionary: "));
    }

    #[test]
    fn xml_prescan_measures_each_kind_of_markup_to_its_end() {
        let rest = b"<dict/>";
        let with_rest = |markup: &str| [markup.as_bytes(), rest].concat();
        assert_eq!(comment_len(&with_rest("<!--a-->")), Ok(8));
        assert_eq!(comment_len(&with_rest("<!-- x > y -->")), Ok(14));
        let doctype = "<!DOCTYPE plist PUBLIC \"-//A//>\" 'u>v'>";
        assert_eq!(doctype_len(&with_rest(doctype)), Ok(doctype.len()));
        assert_eq!(doctype_len(&with_rest("<!DOCTYPE x>")), Ok(12));
        assert_eq!(
            processing_instruction_len(&with_rest("<?xml version=\"1.0\"?>")),
            Ok(21)
        );
        assert_eq!(processing_instruction_len(&with_rest("<??>")), Ok(4));
        assert!(processing_instruction_len(&with_rest("<?>")).is_err());
        assert_eq!(tag_len(&with_rest("<a b=\">\">")), Ok(9));
        // A double quote inside single quotes does not end them, nor the reverse.
        assert_eq!(tag_len(&with_rest("<a b='\">'>")), Ok(10));
        assert_eq!(tag_len(&with_rest("<a b=\"'>\">")), Ok(10));
        assert_eq!(tag_len(&with_rest("<a b='x' c=\"y\">")), Ok(15));
    }

    #[test]
    fn only_dict_and_array_nest_whatever_their_prefix() {
        for name in ["dict", "array", "plist:dict", "x:array"] {
            assert!(is_collection(name.as_bytes()), "{name}");
        }
        for name in ["dicts", "arr", "key", "a:b:dict", "dict:", ""] {
            assert!(!is_collection(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn arrays_nest_up_to_the_limit_in_a_property_list() {
        let arrays = |depth: usize| {
            plist_doc(&format!(
                "<dict><key>a</key>{}<integer>1</integer>{}</dict>",
                "<array>".repeat(depth),
                "</array>".repeat(depth)
            ))
        };
        let dict = Dict::decode(&arrays(MAX_DEPTH - 1), Encoding::Plist).unwrap();
        let mut value = dict.get("a").unwrap();
        for _ in 0..MAX_DEPTH - 1 {
            let Value::Array(items) = value else {
                panic!("{value:?}")
            };
            value = &items[0];
        }
        assert_eq!(value, &Value::Integer(1));
        let path = format!("a{}", "[0]".repeat(MAX_DEPTH - 1));
        assert_eq!(
            malformed_reason(&arrays(MAX_DEPTH), Encoding::Plist),
            format!("`{path}`: nested more than {MAX_DEPTH} levels deep")
        );
    }

    #[test]
    fn json_strings_escape_only_quotes_backslashes_and_controls() {
        let mut out = String::new();
        write_json_string("a b\u{1f}\u{7f}~", &mut out);
        assert_eq!(out, "\"a b\\u001f\u{7f}~\"");
    }

    #[test]
    fn top_level_plist_kinds_are_named() {
        for (body, found) in [
            ("<data>AAE=</data>", "data"),
            ("<real>1.5</real>", "floating-point numbers (<real>)"),
            ("<date>2024-01-01T00:00:00Z</date>", "dates (<date>)"),
        ] {
            assert_eq!(
                malformed_reason(&plist_doc(body), Encoding::Plist),
                format!("the top level must be a dictionary, not {found}")
            );
        }
    }

    #[test]
    fn a_json_value_refuses_what_json_cannot_hold() {
        use serde::Deserialize;
        let bytes = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(b"x");
        let err = Json::deserialize(bytes).err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid type: byte array, expected a JSON value"
        );
    }
}
