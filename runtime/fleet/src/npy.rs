//! `.npy` v1.0 bytes, as `np.save(.., allow_pickle=False)` writes them and `np.load` reads
//! them on the server: the Array payload of Flower's object store. Little-endian float32
//! and int64 in C order only; anything else is refused by name.

use fieldtune_tensor::{Tensor, TensorData};

const MAGIC: &[u8] = b"\x93NUMPY";

/// `t` as .npy v1.0 bytes; the dtype name Flower records ("float32" / "int64").
pub fn encode(t: &Tensor) -> (Vec<u8>, &'static str) {
    let (descr, dtype, body): (&str, &str, Vec<u8>) = match t.data() {
        TensorData::F32(a) => (
            "<f4",
            "float32",
            a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        TensorData::I64(a) => (
            "<i8",
            "int64",
            a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    };
    let shape = match t.shape() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    (out, dtype)
}

/// Parses .npy bytes (v1.0-v3.0 headers) into a tensor; errors say what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not .npy bytes (no \\x93NUMPY magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy version {v} is not supported")),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or("the .npy header runs past the end")?;
    let header =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("the .npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_s = field("shape")?;
    let close = shape_s.find(')').ok_or("the .npy shape is not a tuple")?;
    let mut shape = Vec::new();
    let mut count: usize = 1;
    for d in shape_s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let d: usize = d.parse().map_err(|_| format!("bad .npy dimension '{d}'"))?;
        count = count.checked_mul(d).ok_or("the .npy shape overflows")?;
        shape.push(d);
    }
    let body = &bytes[end..];
    let (width, is_f32) = if descr.starts_with("'<f4'") {
        (4, true)
    } else if descr.starts_with("'<i8'") {
        (8, false)
    } else {
        let d = descr.split(',').next().unwrap_or(descr);
        return Err(format!(
            "dtype {d} is not supported (float32 or int64 expected)"
        ));
    };
    // The declared shape must match the bytes actually present: nothing is allocated
    // from the declared size alone.
    if count.checked_mul(width) != Some(body.len()) {
        return Err(format!(
            "shape {shape:?} needs {} bytes, the array holds {}",
            count.saturating_mul(width),
            body.len()
        ));
    }
    let t = if is_f32 {
        let v = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::f32(shape, v)
    } else {
        let v = body
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Tensor::i64(shape, v)
    };
    t.map_err(|e| e.to_string())
}
