//! Builds graphs node by node with shapes inferred as it goes, constants folded, unique
//! names, and dead nodes pruned at the end. The autodiff rules, loss and optimizer blocks
//! all emit through it.

use std::collections::{HashMap, HashSet};

use fieldtune_tensor::Tensor;

use crate::error::{GraphError, Result};
use crate::infer::{canonical, folds, infer, Value};
use crate::ir::{attr, Elem, Graph, Io, Node};
use crate::proto::AttributeProto;

/// A vector-Jacobian product given for a whole subgraph, used instead of differentiating its
/// nodes one by one (fewer and cheaper gradient ops).
#[derive(Clone, Debug)]
pub enum CustomVjp {
    /// Batch-statistics BatchNormalization `y = xhat * scale + bias`,
    /// `xhat = (x - mean) * inv_std` over `axes` (`count` elements per channel):
    /// `dbias = sum(dy)`, `dscale = sum(dy * xhat)`,
    /// `dx = scale * inv_std * (dy - dbias / count - xhat * dscale / count)`.
    BatchNormTrain {
        x: String,
        scale: String,
        bias: String,
        xhat: String,
        inv_std: String,
        /// `scale` reshaped to broadcast over `x` ([1, C, 1, ...]).
        scale_b: String,
        axes: Vec<i64>,
        count: usize,
    },
    /// The same, as the fieldtune-domain `BatchNormTrain` node (tuned targets), whose
    /// `mean` and `inv_std` outputs ([C]) feed one `BatchNormTrainGrad` node.
    BatchNormTrainFused {
        x: String,
        scale: String,
        bias: String,
        mean: String,
        inv_std: String,
    },
}

/// The most elements a tensor of a built graph may have (2^34, 64 GiB of f32: far above any
/// model fieldtune serves). A shape read from a file that is larger, or whose element count
/// overflows, is refused before anything is sized or computed from it.
pub const MAX_ELEMENTS: usize = 1 << 34;

/// Refuses a shape of more than [`MAX_ELEMENTS`] elements, naming the tensor.
pub fn check_elements(tensor: &str, shape: &[usize]) -> Result<()> {
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n.is_none_or(|n| n > MAX_ELEMENTS) {
        return Err(GraphError::Tensor {
            tensor: tensor.into(),
            reason: format!("shape {shape:?} has more than {MAX_ELEMENTS} elements"),
        });
    }
    Ok(())
}

/// A graph under construction.
pub struct Builder {
    pub opset: i64,
    nodes: Vec<Node>,
    values: HashMap<String, Value>,
    inits: Vec<(String, Tensor)>,
    inputs: Vec<Io>,
    outputs: Vec<String>,
    names: HashSet<String>,
    counter: usize,
    scalars: HashMap<u32, String>,
    int_consts: HashMap<Vec<i64>, String>,
    no_grad: HashSet<String>,
    custom: HashMap<String, CustomVjp>,
    fieldtune_ops: bool,
}

impl Builder {
    pub fn new(opset: i64) -> Builder {
        Builder {
            opset,
            nodes: Vec::new(),
            values: HashMap::new(),
            inits: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            names: HashSet::new(),
            counter: 0,
            scalars: HashMap::new(),
            int_consts: HashMap::new(),
            no_grad: HashSet::new(),
            custom: HashMap::new(),
            fieldtune_ops: false,
        }
    }

    /// Lets lowering and gradient rules emit fieldtune-domain ops (tuned targets).
    pub fn set_fieldtune_ops(&mut self, on: bool) {
        self.fieldtune_ops = on;
    }

    /// Whether fieldtune-domain ops may be emitted (see [`crate::target::Target`]).
    pub fn fieldtune_ops(&self) -> bool {
        self.fieldtune_ops
    }

    /// Adds a fieldtune-domain node with `outputs` outputs (the first named `first` when
    /// given, the others fresh names after `op`), and returns their names.
    pub fn fused(
        &mut self,
        op: &str,
        inputs: &[&str],
        (first, outputs): (Option<&str>, usize),
        attrs: Vec<AttributeProto>,
    ) -> Result<Vec<String>> {
        let name = self.fresh(op);
        let outs: Vec<String> = (0..outputs)
            .map(|i| match (i, first) {
                (0, Some(y)) => y.to_string(),
                _ => format!("{name}_out{i}"),
            })
            .collect();
        self.add(Node {
            name,
            op: op.into(),
            domain: crate::target::DOMAIN.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outs.clone(),
            attrs,
        })?;
        Ok(outs)
    }

    /// Declares that the gradient of the subgraph ending in tensor `y` is `vjp`.
    pub fn set_custom_vjp(&mut self, y: &str, vjp: CustomVjp) {
        self.custom.insert(y.to_string(), vjp);
    }

    /// The custom VJP of the subgraph ending in `y`, if one was declared.
    pub fn custom_vjp(&self, y: &str) -> Option<&CustomVjp> {
        self.custom.get(y)
    }

    /// A fresh tensor or node name starting with `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let n = format!("{hint}_{}", self.counter);
            if self.names.insert(n.clone()) {
                return n;
            }
        }
    }

    fn claim(&mut self, name: &str) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(GraphError::Tensor {
                tensor: name.into(),
                reason: "defined twice".into(),
            });
        }
        Ok(())
    }

    /// Declares a graph input with a static shape.
    pub fn input(&mut self, name: &str, elem: Elem, shape: &[usize]) -> Result<String> {
        check_elements(name, shape)?;
        self.claim(name)?;
        self.inputs.push(Io::fixed(name, elem, shape));
        self.values
            .insert(name.into(), Value::new(elem, shape.to_vec()));
        Ok(name.into())
    }

    /// Adds a named initializer (a constant of the graph).
    pub fn initializer(&mut self, name: &str, t: Tensor) -> Result<String> {
        self.claim(name)?;
        self.values.insert(name.into(), Value::konst(t.clone()));
        self.inits.push((name.into(), t));
        Ok(name.into())
    }

    /// Adds an anonymous constant.
    pub fn constant(&mut self, t: Tensor) -> String {
        let n = self.fresh("const");
        self.values.insert(n.clone(), Value::konst(t.clone()));
        self.inits.push((n.clone(), t));
        n
    }

    /// A rank-0 f32 constant, shared between uses.
    pub fn scalar(&mut self, v: f32) -> String {
        if let Some(n) = self.scalars.get(&v.to_bits()) {
            return n.clone();
        }
        let n = self.constant(Tensor::scalar_f32(v));
        self.scalars.insert(v.to_bits(), n.clone());
        n
    }

    /// A 1-D i64 constant, shared between uses.
    pub fn ints(&mut self, v: &[i64]) -> String {
        if let Some(n) = self.int_consts.get(v) {
            return n.clone();
        }
        let n = self.constant(Tensor::i64(vec![v.len()], v.to_vec()).expect("1-D"));
        self.int_consts.insert(v.to_vec(), n.clone());
        n
    }

    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// The static shape of a tensor known to the builder.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.values
            .get(name)
            .map(|v| v.shape.clone())
            .ok_or_else(|| GraphError::Tensor {
                tensor: name.into(),
                reason: "unknown to the builder".into(),
            })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether gradients are blocked at this tensor.
    pub fn is_no_grad(&self, name: &str) -> bool {
        self.no_grad.contains(name)
    }

    /// Adds a node after inferring its outputs; nodes with all-constant results are folded
    /// into initializers instead.
    pub fn add(&mut self, mut node: Node) -> Result<()> {
        let mut ins = Vec::with_capacity(node.inputs.len());
        for i in &node.inputs {
            if i.is_empty() {
                ins.push(None);
            } else {
                ins.push(Some(self.values.get(i).ok_or_else(|| {
                    GraphError::Undefined {
                        node: node.name.clone(),
                        op: node.op.clone(),
                        tensor: i.clone(),
                    }
                })?));
            }
        }
        canonical(&mut node, &ins)?;
        let outs = infer(&node, &ins)?;
        // Element counts are products of dims: a shape whose product overflows or passes the
        // bound is refused here, naming the node, so every later count is exact.
        for (o, v) in node.outputs.iter().zip(&outs) {
            if check_elements(o, &v.shape).is_err() {
                return Err(GraphError::node(
                    &node,
                    format!(
                        "output '{o}' of shape {:?}: the product of its dimensions exceeds {MAX_ELEMENTS} elements",
                        v.shape
                    ),
                ));
            }
        }
        for o in &node.outputs {
            if !o.is_empty() {
                self.claim(o)?;
            }
        }
        // Bool values carry their constant as 0/1 i64s for folding downstream; they are
        // never written as initializers (the i64 would change the tensor's type).
        let fold = folds(&node.op)
            && node.outputs.len() == 1
            && outs[0].konst.is_some()
            && outs[0].elem != Elem::Bool;
        if fold {
            let t = outs[0].konst.clone().expect("checked");
            self.inits.push((node.outputs[0].clone(), t));
            self.values.insert(node.outputs[0].clone(), outs[0].clone());
            return Ok(());
        }
        for (o, v) in node.outputs.iter().zip(outs) {
            if !o.is_empty() {
                self.values.insert(o.clone(), v);
            }
        }
        self.nodes.push(node);
        Ok(())
    }

    /// Gives the node that writes `y` one more output (an optional output of its op, such as
    /// MaxPool's Indices) of the given type, and returns the new output's name.
    pub fn add_output(&mut self, y: &str, hint: &str, value: Value) -> Result<String> {
        let name = self.fresh(hint);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.outputs.first().map(String::as_str) == Some(y))
            .ok_or_else(|| GraphError::Tensor {
                tensor: y.into(),
                reason: "no node writes it".into(),
            })?;
        node.outputs.push(name.clone());
        self.values.insert(name.clone(), value);
        Ok(name)
    }

    /// Adds a one-output node and returns its output name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> Result<String> {
        let name = self.fresh(op);
        let out = format!("{name}_out");
        self.add(Node {
            name,
            op: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
            attrs,
        })?;
        Ok(out)
    }

    /// An Identity whose output blocks gradients (stop-gradient).
    pub fn stop_gradient(&mut self, x: &str) -> Result<String> {
        let y = self.op("Identity", &[x], vec![])?;
        self.no_grad.insert(y.clone());
        Ok(y)
    }

    /// A reduction over `axes`, written in the form this opset wants (axes as input for
    /// ReduceSum from 13 and the others from 18).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> Result<String> {
        let axes_as_input = op == "ReduceSum" || self.opset >= 18;
        let keep = attr::int("keepdims", keepdims as i64);
        if axes_as_input {
            let a = self.ints(axes);
            self.op(op, &[x, &a], vec![keep])
        } else {
            self.op(op, &[x], vec![keep, attr::ints("axes", axes)])
        }
    }

    pub fn reshape(&mut self, x: &str, shape: &[usize]) -> Result<String> {
        if self.shape(x)? == shape {
            return Ok(x.into());
        }
        let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let s = self.ints(&s);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// Marks a tensor as a graph output.
    pub fn output(&mut self, name: &str) -> Result<()> {
        if !self.values.contains_key(name) {
            return Err(GraphError::Tensor {
                tensor: name.into(),
                reason: "output of nothing".into(),
            });
        }
        self.outputs.push(name.into());
        Ok(())
    }

    /// Marks `src` as a graph output under the name `name` (through an Identity).
    pub fn output_as(&mut self, src: &str, name: &str) -> Result<()> {
        let n = self.fresh("out");
        self.add(Node {
            name: n,
            op: "Identity".into(),
            domain: String::new(),
            inputs: vec![src.into()],
            outputs: vec![name.into()],
            attrs: vec![],
        })?;
        // A folded Identity becomes an initializer; graph outputs may be initializers only
        // awkwardly, so keep it a node.
        if !self
            .nodes
            .iter()
            .any(|n| n.outputs.iter().any(|o| o == name))
        {
            let t = self
                .inits
                .iter()
                .position(|(n, _)| n == name)
                .expect("folded");
            let (_, k) = self.inits.remove(t);
            let c = self.constant(k);
            let nn = self.fresh("out");
            self.nodes.push(Node {
                name: nn,
                op: "Identity".into(),
                domain: String::new(),
                inputs: vec![c],
                outputs: vec![name.into()],
                attrs: vec![],
            });
        }
        self.outputs.push(name.into());
        Ok(())
    }

    /// Finishes the graph: drops nodes and initializers nothing needs, keeps inputs as
    /// declared.
    pub fn finish(self, name: &str) -> Graph {
        let mut live: HashSet<&str> = self.outputs.iter().map(String::as_str).collect();
        let mut keep = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| live.contains(o.as_str())) {
                keep[i] = true;
                for inp in &n.inputs {
                    live.insert(inp.as_str());
                }
            }
        }
        let nodes: Vec<Node> = self
            .nodes
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(n, _)| n.clone())
            .collect();
        let initializers = self
            .inits
            .into_iter()
            .filter(|(n, _)| live.contains(n.as_str()))
            .collect();
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let v = &self.values[o];
                Io::fixed(o, v.elem, &v.shape)
            })
            .collect();
        Graph {
            name: name.into(),
            opset: self.opset,
            nodes,
            inputs: self.inputs,
            outputs,
            initializers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exporter_shape_chain_folds_to_a_constant_reshape() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[8, 4, 3, 3]).unwrap();
        let shape = b.op("Shape", &[&x], vec![]).unwrap();
        let zero = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![0]).unwrap());
        let n = b
            .op("Gather", &[&shape, &zero], vec![attr::int("axis", 0)])
            .unwrap();
        let ax = b.ints(&[0]);
        let n1 = b.op("Unsqueeze", &[&n, &ax], vec![]).unwrap();
        let m1 = b.ints(&[-1]);
        let target = b
            .op("Concat", &[&n1, &m1], vec![attr::int("axis", 0)])
            .unwrap();
        let y = b.op("Reshape", &[&x, &target], vec![]).unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![8, 36]);
        assert_eq!(b.value(&target).unwrap().ints(), Some(&[8i64, -1][..]));
        b.output(&y).unwrap();
        let g = b.finish("t");
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Reshape"], "the shape chain folds away");
    }

    /// The exporter's `expand(n, -1, -1)` (Where over Equal) and Swin's window padding (Mod)
    /// fold to constants; Mod takes the divisor's sign, as ONNX's default (fmod=0) does.
    #[test]
    fn equal_where_and_mod_fold_in_shape_chains() {
        let mut b = Builder::new(17);
        let shape = b.ints(&[4, -1, -7, 7]);
        let m1 = b.ints(&[-1]);
        let is_m1 = b.op("Equal", &[&shape, &m1], vec![]).unwrap();
        let one = b.ints(&[1]);
        let fixed = b.op("Where", &[&is_m1, &one, &shape], vec![]).unwrap();
        assert_eq!(b.value(&fixed).unwrap().ints(), Some(&[4i64, 1, -7, 7][..]));
        let three = b.ints(&[3, 3, 3, -3]);
        let r = b.op("Mod", &[&fixed, &three], vec![]).unwrap();
        assert_eq!(b.value(&r).unwrap().ints(), Some(&[1i64, 1, 2, -2][..]));
        // A transposed constant (Swin's pad lists) folds.
        let m =
            b.constant(fieldtune_tensor::Tensor::i64(vec![2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap());
        let t = b
            .op("Transpose", &[&m], vec![attr::ints("perm", &[1, 0])])
            .unwrap();
        assert_eq!(
            b.value(&t).unwrap().ints(),
            Some(&[1i64, 4, 2, 5, 3, 6][..])
        );
        // ... and so does a step -1 slice of a 2-D constant (reversing the pad pairs).
        let (st, en, ax, sp) = (
            b.ints(&[-1]),
            b.ints(&[i64::MIN]),
            b.ints(&[0]),
            b.ints(&[-1]),
        );
        let rev = b.op("Slice", &[&t, &st, &en, &ax, &sp], vec![]).unwrap();
        assert_eq!(
            b.value(&rev).unwrap().ints(),
            Some(&[3i64, 6, 2, 5, 1, 4][..])
        );
        // fmod=1 (the dividend's sign) is not folded.
        let f = b
            .op("Mod", &[&fixed, &three], vec![attr::int("fmod", 1)])
            .unwrap();
        assert_eq!(b.value(&f).unwrap().ints(), None);
        // Where and the default Mod became initializers; of what the output needs, only the
        // fmod=1 Mod stays a node (the comparison is dead once Where folded).
        b.output(&f).unwrap();
        let g = b.finish("t");
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Mod"]);
    }

    /// Swin's export: a bool Constant (Dropout's training_mode) stays a node (an i64
    /// initializer would change its type); Range over integer constants folds; ScatterND
    /// keeps the data's shape and checks the updates'.
    #[test]
    fn bool_constants_stay_nodes_and_range_folds() {
        use crate::proto::{tensor_proto::DataType, TensorProto};
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[2, 3]).unwrap();
        let t = TensorProto {
            data_type: DataType::Bool as i32,
            raw_data: vec![1],
            ..Default::default()
        };
        let on = b
            .op("Constant", &[], vec![attr::tensor("value", t)])
            .unwrap();
        assert_eq!(b.value(&on).unwrap().elem, Elem::Bool);
        assert_eq!(b.value(&on).unwrap().ints(), Some(&[1i64][..]));
        let ratio = b.scalar(0.0);
        let y = b.op("Dropout", &[&x, &ratio, &on], vec![]).unwrap();
        let start = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![7]).unwrap());
        let limit = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![-2]).unwrap());
        let delta = b.constant(fieldtune_tensor::Tensor::i64(vec![], vec![-3]).unwrap());
        let r = b.op("Range", &[&start, &limit, &delta], vec![]).unwrap();
        assert_eq!(b.value(&r).unwrap().ints(), Some(&[7i64, 4, 1][..]));
        let empty = b.op("Range", &[&limit, &start, &delta], vec![]).unwrap();
        assert_eq!(b.shape(&empty).unwrap(), vec![0usize]);
        let data = b.input("data", Elem::F32, &[4, 5]).unwrap();
        let idx = b.constant(fieldtune_tensor::Tensor::i64(vec![2, 1], vec![0, 3]).unwrap());
        let upd = b.input("upd", Elem::F32, &[2, 5]).unwrap();
        let sc = b.op("ScatterND", &[&data, &idx, &upd], vec![]).unwrap();
        assert_eq!(b.shape(&sc).unwrap(), vec![4, 5]);
        let bad = b.input("bad", Elem::F32, &[2, 4]).unwrap();
        let err = b
            .op("ScatterND", &[&data, &idx, &bad], vec![])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 5]"), "{err}");
        b.output(&y).unwrap();
        let g = b.finish("t");
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(
            ops,
            ["Constant", "Dropout"],
            "the bool constant stays a node"
        );
        assert!(g.initializers.iter().all(|(n, _)| n != &on));
    }

    #[test]
    fn conv_and_pool_shapes_resolve_auto_pad() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[1, 3, 11, 11]).unwrap();
        let w = b.input("w", Elem::F32, &[8, 3, 3, 3]).unwrap();
        let y = b
            .op(
                "Conv",
                &[&x, &w],
                vec![
                    attr::string("auto_pad", "SAME_UPPER"),
                    attr::ints("strides", &[2, 2]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&y).unwrap(), vec![1, 8, 6, 6]);
        let p = b
            .op(
                "MaxPool",
                &[&y],
                vec![
                    attr::ints("kernel_shape", &[3, 3]),
                    attr::ints("strides", &[2, 2]),
                    attr::ints("pads", &[1, 1, 1, 1]),
                ],
            )
            .unwrap();
        assert_eq!(b.shape(&p).unwrap(), vec![1, 8, 3, 3]);
        let w2 = b.input("w2", Elem::F32, &[8, 2, 3, 3]).unwrap();
        let err = b.op("Conv", &[&x, &w2], vec![]).unwrap_err().to_string();
        assert!(err.contains("Conv") && err.contains("group"), "{err}");
    }

    /// A Dropout whose mask output nothing reads loses it on load (Swin's export); a read
    /// mask stays.
    #[test]
    fn unread_dropout_masks_are_dropped_on_load() {
        let mut b = Builder::new(17);
        let x = b.input("x", Elem::F32, &[2, 3]).unwrap();
        b.output(&x).unwrap();
        let mut g = b.finish("t");
        let node = |name: &str, outs: &[&str]| Node {
            name: name.into(),
            op: "Dropout".into(),
            domain: String::new(),
            inputs: vec!["x".into()],
            outputs: outs.iter().map(|s| s.to_string()).collect(),
            attrs: vec![],
        };
        g.nodes = vec![node("d0", &["y0", "m0"]), node("d1", &["y1", "m1"])];
        g.outputs = vec![
            crate::ir::Io {
                name: "y0".into(),
                elem: Elem::F32,
                dims: vec![crate::ir::Dim::Fixed(2), crate::ir::Dim::Fixed(3)],
            },
            crate::ir::Io {
                name: "m1".into(),
                elem: Elem::Bool,
                dims: vec![crate::ir::Dim::Fixed(2), crate::ir::Dim::Fixed(3)],
            },
        ];
        let back = crate::ir::Graph::from_model(&g.to_model("test")).unwrap();
        let outs: Vec<usize> = back.nodes.iter().map(|n| n.outputs.len()).collect();
        assert_eq!(outs, [1, 2]);
    }
}
