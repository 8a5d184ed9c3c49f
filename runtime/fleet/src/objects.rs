//! Flower's object store encoding (flwr 1.42.0 `supercore/inflatable`): every object is
//! `"<Type> <child ids, comma-separated> <body length>\0<body>"` and its id is the SHA-256
//! hex of those bytes. A Message's child is its RecordDict (JSON `{name: record id}`); an
//! ArrayRecord's children are Arrays (JSON `{name: array id}`); an Array's body is JSON
//! `{"dtype", "shape", "stype", "arraychunk_ids"}` (indices into its unique chunk ids) and
//! its chunks are consecutive slices of the array's `.npy` bytes; Metric and Config
//! records are protobuf bodies without children.

use std::collections::{BTreeMap, HashMap};

use fieldtune_tensor::Tensor;
use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::error::{obj, Result};
use crate::npy;
use crate::proto;

/// Flower's chunk size for Array payloads (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE's default).
pub const CHUNK: usize = 20 * 1024 * 1024;

/// SHA-256 hex of an object's bytes: its id.
pub fn object_id(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One parsed object: type, child ids and body, checked against its header.
#[derive(Debug, PartialEq)]
pub struct Object<'a> {
    pub kind: &'a str,
    pub children: Vec<&'a str>,
    pub body: &'a [u8],
}

/// Parses `content`, checking the id, the head and that the body length matches.
pub fn parse<'a>(id: &str, content: &'a [u8]) -> Result<Object<'a>> {
    if object_id(content) != id {
        return Err(obj(id, "content does not hash to its id"));
    }
    let split = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| obj(id, "no \\0 between head and body"))?;
    let head = std::str::from_utf8(&content[..split]).map_err(|_| obj(id, "head is not UTF-8"))?;
    let parts: Vec<&str> = head.split(' ').collect();
    let [kind, children, len] = parts[..] else {
        return Err(obj(
            id,
            format!("head '{head}' is not '<type> <children> <length>'"),
        ));
    };
    let body = &content[split + 1..];
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err(obj(
            id,
            format!("head declares {len} body bytes, {} present", body.len()),
        ));
    }
    let children: Vec<&str> = if children.is_empty() {
        vec![]
    } else {
        children.split(',').collect()
    };
    if let Some(bad) = children
        .iter()
        .find(|c| c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(obj(
            id,
            format!("child id '{bad}' is not a SHA-256 hex digest"),
        ));
    }
    Ok(Object {
        kind,
        children,
        body,
    })
}

/// Builds an object; returns (id, bytes).
pub fn make(kind: &str, children: &[String], body: &[u8]) -> (String, Vec<u8>) {
    let mut c = format!("{kind} {} {}", children.join(","), body.len()).into_bytes();
    c.push(0);
    c.extend_from_slice(body);
    (object_id(&c), c)
}

/// A ConfigRecord value the client understands.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(String),
    Other,
}

/// A message's records: arrays (in order), metrics and config values, by record name.
#[derive(Debug, Default)]
pub struct Records {
    pub arrays: BTreeMap<String, Vec<(String, Tensor)>>,
    pub metrics: BTreeMap<String, Vec<(String, f64)>>,
    pub configs: BTreeMap<String, Vec<(String, ConfigValue)>>,
}

fn json_map(id: &str, body: &[u8]) -> Result<Vec<(String, String)>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| obj(id, format!("body is not JSON: {e}")))?;
    let m = v
        .as_object()
        .ok_or_else(|| obj(id, "body is not a JSON object"))?;
    m.iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| obj(id, format!("entry '{k}' is not an object id")))
        })
        .collect()
}

/// Decodes a pulled message: `root` is the Message object, `store` every pulled object by id.
/// Every reference must resolve to an object of the right type in `store`.
pub fn decode_message(
    root: &str,
    store: &HashMap<String, Vec<u8>>,
) -> Result<(proto::Message, Records)> {
    let get = |id: &str| {
        store
            .get(id)
            .ok_or_else(|| obj(id, "referenced but not pulled"))
    };
    let m = parse(root, get(root)?)?;
    if m.kind != "Message" {
        return Err(obj(
            root,
            format!("a {} where a Message was expected", m.kind),
        ));
    }
    let msg =
        proto::Message::decode(m.body).map_err(|e| obj(root, format!("Message body: {e}")))?;
    let mut rec = Records::default();
    let Some(rd_id) = m.children.first() else {
        return Ok((msg, rec));
    };
    let rd = parse(rd_id, get(rd_id)?)?;
    if rd.kind != "RecordDict" {
        return Err(obj(
            rd_id,
            format!("a {} where a RecordDict was expected", rd.kind),
        ));
    }
    for (name, rid) in json_map(rd_id, rd.body)? {
        let r = parse(&rid, get(&rid)?)?;
        match r.kind {
            "ArrayRecord" => {
                let mut arrays = Vec::new();
                for (aname, aid) in json_map(&rid, r.body)? {
                    arrays.push((aname, decode_array(&aid, store)?));
                }
                rec.arrays.insert(name, arrays);
            }
            "MetricRecord" => {
                let p =
                    proto::MetricRecord::decode(r.body).map_err(|e| obj(&rid, e.to_string()))?;
                use proto::metric_record_value::Value;
                let vals = p
                    .items
                    .into_iter()
                    .filter_map(|i| match i.value?.value? {
                        Value::Double(v) => Some((i.key, v)),
                        Value::Sint64(v) => Some((i.key, v as f64)),
                        Value::Uint64(v) => Some((i.key, v as f64)),
                        _ => None,
                    })
                    .collect();
                rec.metrics.insert(name, vals);
            }
            "ConfigRecord" => {
                let p =
                    proto::ConfigRecord::decode(r.body).map_err(|e| obj(&rid, e.to_string()))?;
                use proto::config_record_value::Value;
                let vals = p
                    .items
                    .into_iter()
                    .map(|i| {
                        let v = match i.value.and_then(|v| v.value) {
                            Some(Value::Double(v)) => ConfigValue::F64(v),
                            Some(Value::Sint64(v)) => ConfigValue::I64(v),
                            Some(Value::Uint64(v)) => ConfigValue::I64(v as i64),
                            Some(Value::Bool(v)) => ConfigValue::Bool(v),
                            Some(Value::String(v)) => ConfigValue::Str(v),
                            _ => ConfigValue::Other,
                        };
                        (i.key, v)
                    })
                    .collect();
                rec.configs.insert(name, vals);
            }
            other => return Err(obj(&rid, format!("unknown record type '{other}'"))),
        }
    }
    Ok((msg, rec))
}

fn decode_array(id: &str, store: &HashMap<String, Vec<u8>>) -> Result<Tensor> {
    let a = parse(
        id,
        store
            .get(id)
            .ok_or_else(|| obj(id, "referenced but not pulled"))?,
    )?;
    if a.kind != "Array" {
        return Err(obj(id, format!("a {} where an Array was expected", a.kind)));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(a.body).map_err(|e| obj(id, format!("Array body: {e}")))?;
    if meta["stype"] != "numpy.ndarray" {
        return Err(obj(
            id,
            format!("Array stype {} is not numpy.ndarray", meta["stype"]),
        ));
    }
    let idx = meta["arraychunk_ids"]
        .as_array()
        .ok_or_else(|| obj(id, "Array body has no arraychunk_ids"))?;
    let mut data = Vec::new();
    for i in idx {
        let c = i
            .as_u64()
            .and_then(|i| a.children.get(i as usize))
            .ok_or_else(|| obj(id, format!("chunk index {i} is out of range")))?;
        let ch = parse(
            c,
            store
                .get(*c)
                .ok_or_else(|| obj(c, "referenced but not pulled"))?,
        )?;
        if ch.kind != "ArrayChunk" {
            return Err(obj(
                c,
                format!("a {} where an ArrayChunk was expected", ch.kind),
            ));
        }
        data.extend_from_slice(ch.body);
    }
    let t = npy::decode(&data).map_err(|e| obj(id, e))?;
    let shape: Option<Vec<usize>> = meta["shape"].as_array().map(|s| {
        s.iter()
            .filter_map(|d| d.as_u64().map(|d| d as usize))
            .collect()
    });
    if shape.as_deref() != Some(t.shape()) {
        return Err(obj(
            id,
            format!(
                "Array shape {} but its .npy holds {:?}",
                meta["shape"],
                t.shape()
            ),
        ));
    }
    Ok(t)
}

/// An object tree being built for a reply: objects by id and the tree of ids.
#[derive(Default)]
pub struct Builder {
    pub objects: HashMap<String, Vec<u8>>,
}

impl Builder {
    fn put(
        &mut self,
        kind: &str,
        children: Vec<proto::ObjectTree>,
        body: &[u8],
    ) -> proto::ObjectTree {
        let ids: Vec<String> = children.iter().map(|c| c.object_id.clone()).collect();
        let (id, bytes) = make(kind, &ids, body);
        self.objects.insert(id.clone(), bytes);
        proto::ObjectTree {
            object_id: id,
            children,
        }
    }

    /// An Array object (and its chunks) for `t`.
    pub fn array(&mut self, t: &Tensor) -> proto::ObjectTree {
        let (bytes, dtype) = npy::encode(t);
        let mut unique: Vec<proto::ObjectTree> = Vec::new();
        let mut idx = Vec::new();
        for chunk in bytes.chunks(CHUNK) {
            let (cid, _) = make("ArrayChunk", &[], chunk);
            let i = match unique.iter().position(|u| u.object_id == cid) {
                Some(i) => i,
                None => {
                    unique.push(self.put("ArrayChunk", vec![], chunk));
                    unique.len() - 1
                }
            };
            idx.push(i);
        }
        let body = serde_json::json!({"dtype": dtype, "shape": t.shape(), "stype": "numpy.ndarray", "arraychunk_ids": idx});
        self.put("Array", unique, body.to_string().as_bytes())
    }

    /// A record holding `items` as a JSON map of child ids.
    fn json_record(
        &mut self,
        kind: &str,
        items: Vec<(String, proto::ObjectTree)>,
    ) -> proto::ObjectTree {
        let mut map = serde_json::Map::new();
        let mut children: Vec<proto::ObjectTree> = Vec::new();
        for (name, t) in items {
            map.insert(name, serde_json::Value::String(t.object_id.clone()));
            if !children.iter().any(|c| c.object_id == t.object_id) {
                children.push(t);
            }
        }
        let body = serde_json::Value::Object(map).to_string();
        self.put(kind, children, body.as_bytes())
    }

    pub fn array_record(&mut self, arrays: &[(String, Tensor)]) -> proto::ObjectTree {
        let items = arrays
            .iter()
            .map(|(n, t)| (n.clone(), self.array(t)))
            .collect();
        self.json_record("ArrayRecord", items)
    }

    /// A MetricRecord; integers (e.g. `num-examples`) go as sint64, others as double.
    pub fn metric_record(&mut self, metrics: &[(String, f64)]) -> proto::ObjectTree {
        use proto::metric_record_value::Value;
        let items = metrics
            .iter()
            .map(|(k, v)| proto::metric_record::Item {
                key: k.clone(),
                value: Some(proto::MetricRecordValue {
                    value: Some(if k == "num-examples" {
                        Value::Sint64(*v as i64)
                    } else {
                        Value::Double(*v)
                    }),
                }),
            })
            .collect();
        let body = proto::MetricRecord { items }.encode_to_vec();
        self.put("MetricRecord", vec![], &body)
    }

    pub fn record_dict(&mut self, records: Vec<(String, proto::ObjectTree)>) -> proto::ObjectTree {
        self.json_record("RecordDict", records)
    }

    /// The Message object: `metadata` (message_id empty, as hashed) plus content or error.
    pub fn message(
        &mut self,
        metadata: proto::Metadata,
        content: Option<proto::ObjectTree>,
        error: Option<proto::Error>,
    ) -> proto::ObjectTree {
        let body = proto::Message {
            metadata: Some(proto::Metadata {
                message_id: String::new(),
                ..metadata
            }),
            content: None,
            error,
        }
        .encode_to_vec();
        self.put("Message", content.into_iter().collect(), &body)
    }
}
