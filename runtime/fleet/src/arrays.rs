//! The server's arrays against the device's model: names, shapes, dtypes and finiteness
//! checked before anything runs (a message for another model gets an error reply naming the
//! array), and the arrays a reply sends ([`SendSet`]).

use std::collections::HashMap;

use fieldtune_tensor::Tensor;

use crate::config::SendSet;

/// Whether `name` is a BatchNorm running statistic (PyTorch's export names), kept on the
/// device under FedBN.
pub fn is_bn_stat(name: &str) -> bool {
    name.contains("running_mean")
        || name.contains("running_var")
        || name.contains("num_batches_tracked")
}

/// `received` checked against the model's float arrays `model`: each a known name, the same
/// shape, float32, every value finite. Returns the model's arrays overwritten by the received
/// ones; the error names the first array that does not fit.
pub fn checked_params(
    model: &HashMap<String, Tensor>,
    received: &[(String, Tensor)],
) -> Result<HashMap<String, Tensor>, String> {
    let mut out = model.clone();
    for (name, t) in received {
        let Some(s) = model.get(name) else {
            return Err(format!(
                "array '{name}' is not a parameter of this model (another model's message?)"
            ));
        };
        if t.shape() != s.shape() {
            return Err(format!(
                "array '{name}' has shape {:?}, the model's is {:?}",
                t.shape(),
                s.shape()
            ));
        }
        let Some(v) = t.as_f32() else {
            return Err(format!("array '{name}' is not float32"));
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("array '{name}' holds a non-finite value at {i}"));
        }
        out.insert(name.clone(), t.clone());
    }
    Ok(out)
}

/// Whether a reply under `send` carries the array `name`; `trained` says whether the recipe
/// trains it.
pub fn sends(send: SendSet, name: &str, trained: bool) -> bool {
    match send {
        SendSet::All => true,
        SendSet::Fedbn => !is_bn_stat(name),
        SendSet::Trained => trained,
    }
}

/// The arrays of `weights` a reply under `send` carries, sorted by name.
pub fn select(
    send: SendSet,
    weights: &HashMap<String, Tensor>,
    trained: &dyn Fn(&str) -> bool,
) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = weights
        .iter()
        .filter(|(n, _)| sends(send, n, trained(n)))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: f32) -> Tensor {
        Tensor::from(ndarray::ArrayD::from_elem(shape.to_vec(), v))
    }

    #[test]
    fn mismatches_name_the_array() {
        let model: HashMap<String, Tensor> = [
            ("w".to_string(), t(&[2, 3], 1.0)),
            ("bn.running_var".to_string(), t(&[3], 1.0)),
        ]
        .into();
        let ok = checked_params(&model, &[("w".into(), t(&[2, 3], 2.0))]).unwrap();
        assert_eq!(ok["w"].as_f32().unwrap()[0], 2.0);
        assert_eq!(ok.len(), 2);
        let e = checked_params(&model, &[("w".into(), t(&[3, 2], 2.0))]).unwrap_err();
        assert!(e.contains("array 'w' has shape [3, 2]"), "{e}");
        let e = checked_params(&model, &[("x".into(), t(&[1], 2.0))]).unwrap_err();
        assert!(e.contains("'x' is not a parameter"), "{e}");
        let e = checked_params(&model, &[("w".into(), t(&[2, 3], f32::NAN))]).unwrap_err();
        assert!(e.contains("non-finite value at 0"), "{e}");
        let names = |s| {
            select(s, &model, &|n: &str| n == "w")
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(SendSet::All), ["bn.running_var", "w"]);
        assert_eq!(names(SendSet::Fedbn), ["w"]);
        assert_eq!(names(SendSet::Trained), ["w"]);
    }
}
