//! The object store codec: a reply built here decodes back to the same arrays and metrics;
//! ids are SHA-256 of the bytes; and the decoder survives mutated input (fuzz-style, seeded):
//! every mutation is either decoded or refused with an error naming an object, never a panic
//! or an allocation from a declared length.

use std::collections::HashMap;

use fieldtune_fleet::objects::{self, decode_message, Builder};
use fieldtune_fleet::{npy, proto};
use fieldtune_tensor::Tensor;

type Sample = (HashMap<String, Vec<u8>>, String, Vec<(String, Tensor)>);

fn sample() -> Sample {
    let arrays = vec![
        (
            "conv.weight".to_string(),
            Tensor::f32(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, 7.0]).unwrap(),
        ),
        (
            "bn.num_batches".to_string(),
            Tensor::i64(vec![], vec![42]).unwrap(),
        ),
        (
            "zeros".to_string(),
            Tensor::f32(vec![4], vec![0.0; 4]).unwrap(),
        ),
    ];
    let mut b = Builder::default();
    let a = b.array_record(&arrays);
    let m = b.metric_record(&[("num-examples".into(), 300.0), ("loss".into(), 0.25)]);
    let rd = b.record_dict(vec![("arrays".into(), a), ("metrics".into(), m)]);
    let meta = proto::Metadata {
        run_id: 7,
        message_type: "train".into(),
        ..Default::default()
    };
    let root = b.message(meta, Some(rd), None);
    (b.objects, root.object_id, arrays)
}

#[test]
fn a_built_message_decodes_to_the_same_records() {
    let (store, root, arrays) = sample();
    let (msg, rec) = decode_message(&root, &store).unwrap();
    assert_eq!(msg.metadata.unwrap().message_type, "train");
    // Records are JSON maps: arrays come back by name (sorted), not in sent order.
    let mut want = arrays.clone();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(rec.arrays["arrays"], want);
    assert_eq!(
        rec.metrics["metrics"],
        vec![
            ("num-examples".to_string(), 300.0),
            ("loss".to_string(), 0.25)
        ]
    );
    for (id, bytes) in &store {
        assert_eq!(&objects::object_id(bytes), id);
    }
}

#[test]
fn npy_header_is_v1_and_64_byte_aligned() {
    let (bytes, dtype) = npy::encode(&Tensor::f32(vec![3, 1], vec![1.0, 2.0, 3.0]).unwrap());
    assert_eq!(dtype, "float32");
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    assert!(std::str::from_utf8(&bytes[10..10 + hlen])
        .unwrap()
        .contains("'shape': (3, 1), }"));
    assert_eq!(
        npy::decode(&bytes).unwrap().as_f32().unwrap(),
        &[1.0, 2.0, 3.0]
    );
    // A declared shape larger than the bytes present is refused, not allocated.
    let mut lie = bytes.clone();
    let h = String::from_utf8(lie[10..10 + hlen].to_vec())
        .unwrap()
        .replace("(3, 1)", "(999999999, 999999)");
    if h.len() == hlen {
        lie[10..10 + hlen].copy_from_slice(h.as_bytes());
        assert!(npy::decode(&lie).unwrap_err().contains("needs"));
    }
}

/// xorshift: a seeded stream of mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn the_decoder_survives_mutated_objects() {
    let (store, root, _) = sample();
    let ids: Vec<String> = {
        let mut v: Vec<_> = store.keys().cloned().collect();
        v.sort();
        v
    };
    let mut rng = Rng(0x5eed_f1ee7);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..4000 {
        let mut s = store.clone();
        let id = &ids[rng.next() as usize % ids.len()];
        let bytes = s.get_mut(id).unwrap();
        match rng.next() % 4 {
            0 if !bytes.is_empty() => {
                let i = rng.next() as usize % bytes.len();
                bytes[i] = rng.next() as u8;
            }
            1 => bytes.truncate(rng.next() as usize % (bytes.len() + 1)),
            2 => {
                let i = rng.next() as usize % (bytes.len() + 1);
                bytes.insert(i, rng.next() as u8);
            }
            _ => {
                // Re-key: the content then hashes right, so the structure checks are reached.
                let i = rng.next() as usize % bytes.len().max(1);
                if !bytes.is_empty() {
                    bytes[i] = rng.next() as u8;
                }
                let c = s.remove(id).unwrap();
                s.insert(objects::object_id(&c), c);
            }
        }
        match decode_message(&root, &s) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().starts_with("object "), "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 3000, "ok {ok} refused {refused}");
}

#[test]
fn a_head_that_lies_about_its_length_is_refused() {
    let (id, mut bytes) = objects::make("ArrayChunk", &[], b"abc");
    assert!(objects::parse(&id, &bytes).is_ok());
    bytes.push(b'd');
    let id2 = objects::object_id(&bytes);
    let e = objects::parse(&id2, &bytes).unwrap_err().to_string();
    assert!(e.contains("declares 3 body bytes, 4 present"), "{e}");
    assert!(objects::parse(&id, &bytes)
        .unwrap_err()
        .to_string()
        .contains("does not hash"));
}
