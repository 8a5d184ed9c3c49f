//! Generic mutations: bytes (flips, interesting integers, truncation, splices, inserted and
//! deleted ranges, protobuf-style varints) and TOML (a key's value replaced by an interesting
//! one of any type, keys removed, unknown keys added, lines shuffled).

use rand::Rng;

use super::{Corpus, Rng8};

/// Integers that break size arithmetic: zero, one, sign and width edges, huge products.
pub const INTERESTING: [i64; 20] = [
    0,
    1,
    -1,
    2,
    7,
    255,
    256,
    65_535,
    65_536,
    i32::MAX as i64,
    i32::MIN as i64,
    u32::MAX as i64,
    1 << 32,
    1 << 40,
    1 << 53,
    (1 << 53) + 1,
    1 << 62,
    i64::MAX,
    i64::MIN,
    60_000,
];

/// An interesting integer, or a small random one.
pub fn int(rng: &mut Rng8) -> i64 {
    if rng.gen_bool(0.8) {
        INTERESTING[rng.gen_range(0..INTERESTING.len())]
    } else {
        rng.gen_range(-4..100_000)
    }
}

/// One generic byte mutation of `d`.
pub fn bytes(d: &[u8], c: &Corpus, rng: &mut Rng8) -> Vec<u8> {
    let mut v = d.to_vec();
    if v.is_empty() {
        v.extend_from_slice(c.pick(rng));
        return v;
    }
    let at = |rng: &mut Rng8, len: usize| rng.gen_range(0..len.max(1));
    match rng.gen_range(0..10) {
        0 => {
            let i = at(rng, v.len());
            v[i] ^= 1 << rng.gen_range(0..8);
        }
        1 => {
            for _ in 0..rng.gen_range(1..16) {
                let i = at(rng, v.len());
                v[i] = rng.gen();
            }
        }
        2 => {
            let i = at(rng, v.len());
            v[i] = [0u8, 0xff, 0x7f, 0x80, 1][rng.gen_range(0..5)];
        }
        3 => {
            // An interesting integer, 1 to 8 bytes wide, either endianness.
            let w = [1, 2, 4, 8][rng.gen_range(0..4)];
            let n = int(rng);
            let b = if rng.gen_bool(0.5) {
                n.to_le_bytes()
            } else {
                n.to_be_bytes()
            };
            let b = if rng.gen_bool(0.5) {
                &b[..w]
            } else {
                &b[8 - w..]
            };
            let i = at(rng, v.len().saturating_sub(w));
            let end = (i + w).min(v.len());
            v[i..end].copy_from_slice(&b[..end - i]);
        }
        4 => v.truncate(at(rng, v.len())),
        5 => {
            let (a, b) = span(rng, v.len());
            v.drain(a..b);
        }
        6 => {
            // Duplicate a range in place.
            let (a, b) = span(rng, v.len());
            let chunk = v[a..b].to_vec();
            let i = at(rng, v.len());
            v.splice(i..i, chunk);
        }
        7 => {
            // Splice: our head, another entry's tail.
            let other = c.pick(rng);
            let i = at(rng, v.len());
            let j = at(rng, other.len());
            v.truncate(i);
            v.extend_from_slice(&other[j.min(other.len())..]);
        }
        8 => {
            // A varint (protobuf lengths and integers) of an interesting value.
            let i = at(rng, v.len());
            let enc = varint(int(rng) as u64);
            let end = (i + rng.gen_range(1..=enc.len())).min(v.len());
            v.splice(i..end, enc);
        }
        _ => {
            let i = at(rng, v.len());
            let n = rng.gen_range(1..64);
            let fill: u8 = rng.gen();
            v.splice(i..i, std::iter::repeat_n(fill, n));
        }
    }
    v
}

fn span(rng: &mut Rng8, len: usize) -> (usize, usize) {
    let a = rng.gen_range(0..len.max(1));
    let b = (a + rng.gen_range(0..=len.min(4096))).min(len);
    (a.min(b), b)
}

/// A protobuf varint.
pub fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A TOML value of any type, chosen to stress bounds and types.
fn toml_value(rng: &mut Rng8) -> toml::Value {
    use toml::Value;
    match rng.gen_range(0..9) {
        0..=2 => Value::Integer(int(rng)),
        3 => Value::Float(
            [
                f64::NAN,
                f64::INFINITY,
                -0.0,
                1e308,
                -1e-308,
                0.5,
                1.5,
                -3.0,
            ][rng.gen_range(0..8)],
        ),
        4 => Value::String(
            [
                "",
                "x",
                "tract",
                "ort",
                "cuda",
                "auto",
                "..",
                "-",
                "none",
                "\u{0}",
                "a/../../b",
                "x86-cpu",
                "raspberry-pi-5",
                "é\u{202e}",
            ][rng.gen_range(0..14)]
            .to_string(),
        ),
        5 => Value::String("long".repeat(rng.gen_range(1..20_000))),
        6 => Value::Boolean(rng.gen()),
        7 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| Value::Integer(int(rng)))
                .collect(),
        ),
        _ => Value::Table(toml::Table::new()),
    }
}

/// All key paths of a table, tables included.
fn paths(t: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (k, v) in t {
        prefix.push(k.clone());
        out.push(prefix.clone());
        if let toml::Value::Table(sub) = v {
            paths(sub, prefix, out);
        }
        prefix.pop();
    }
}

fn parent<'a>(t: &'a mut toml::Table, path: &[String]) -> Option<&'a mut toml::Table> {
    let mut cur = t;
    for k in &path[..path.len() - 1] {
        cur = cur.get_mut(k)?.as_table_mut()?;
    }
    Some(cur)
}

/// A structure-aware TOML mutation: parse, change one key (value of another type or an
/// interesting one, removal, an unknown sibling, an array grown or emptied), print.
/// Line-level edits when the text does not parse.
pub fn toml_text(d: &[u8], _c: &Corpus, rng: &mut Rng8) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(d).ok()?;
    let Ok(mut t) = text.parse::<toml::Table>() else {
        return Some(lines(text, rng));
    };
    if rng.gen_bool(0.15) {
        return Some(lines(text, rng));
    }
    let mut all = Vec::new();
    paths(&t, &mut Vec::new(), &mut all);
    if all.is_empty() {
        t.insert("unknown".into(), toml_value(rng));
        return Some(t.to_string().into_bytes());
    }
    let path = all[rng.gen_range(0..all.len())].clone();
    let last = path.last().unwrap().clone();
    let p = parent(&mut t, &path)?;
    match rng.gen_range(0..6) {
        0 => {
            p.remove(&last);
        }
        1 => {
            p.insert(format!("{last}_unknown"), toml_value(rng));
        }
        2 => {
            // An array element changed, or the array grown large.
            if let Some(toml::Value::Array(a)) = p.get_mut(&last) {
                if !a.is_empty() && rng.gen_bool(0.5) {
                    let i = rng.gen_range(0..a.len());
                    a[i] = toml_value(rng);
                } else {
                    let fill = a.first().cloned().unwrap_or(toml::Value::Integer(0));
                    a.extend(std::iter::repeat_n(fill, rng.gen_range(0..5000)));
                }
            } else {
                p.insert(last, toml_value(rng));
            }
        }
        _ => {
            p.insert(last, toml_value(rng));
        }
    }
    Some(t.to_string().into_bytes())
}

/// Line edits: one removed, duplicated, or two swapped.
fn lines(text: &str, rng: &mut Rng8) -> Vec<u8> {
    let mut ls: Vec<&str> = text.lines().collect();
    if ls.is_empty() {
        return text.as_bytes().to_vec();
    }
    let i = rng.gen_range(0..ls.len());
    let j = rng.gen_range(0..ls.len());
    match rng.gen_range(0..3) {
        0 => {
            ls.remove(i);
        }
        1 => ls.insert(j, ls[i]),
        _ => ls.swap(i, j),
    }
    ls.join("\n").into_bytes()
}
