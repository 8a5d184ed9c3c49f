//! The order in which a model's nodes are read: each after the nodes whose outputs it reads.
//! ONNX requires graphs to be stored in that order and exporters write them so; a graph already
//! in order keeps it exactly, one out of order is sorted, and a cycle is refused naming a node
//! on it, apart from inputs no node defines (those are left to the builder, which names them).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::error::{GraphError, Result};
use crate::proto::NodeProto;

/// Indices into `nodes` in reading order: among the nodes whose inputs are all defined, the
/// first in the file comes first. `names` are the nodes' names as errors give them.
pub(crate) fn order(nodes: &[NodeProto], names: &[String]) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            producer.entry(o.as_str()).or_insert(i);
        }
    }
    // The nodes each node reads from (itself included: a node reading its own output is a
    // cycle of one).
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut d: Vec<usize> = n
                .input
                .iter()
                .filter_map(|x| producer.get(x.as_str()).copied())
                .collect();
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect();
    let mut readers = vec![Vec::new(); nodes.len()];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            readers[p].push(i);
        }
    }
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = (0..nodes.len())
        .filter(|&i| waiting[i] == 0)
        .map(Reverse)
        .collect();
    let mut out = Vec::with_capacity(nodes.len());
    while let Some(Reverse(i)) = ready.pop() {
        out.push(i);
        for &r in &readers[i] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.push(Reverse(r));
            }
        }
    }
    if out.len() == nodes.len() {
        return Ok(out);
    }
    Err(cycle(nodes, names, &deps, &waiting))
}

/// The cycle among the nodes left waiting: each waits on another node left, so walking from
/// a reader to a node it waits on must come back to a node already seen.
fn cycle(
    nodes: &[NodeProto],
    names: &[String],
    deps: &[Vec<usize>],
    waiting: &[usize],
) -> GraphError {
    let left = |i: usize| waiting[i] > 0;
    let mut at = (0..nodes.len()).find(|&i| left(i)).unwrap_or(0);
    let mut seen: HashMap<usize, usize> = HashMap::new();
    let mut walk = Vec::new();
    while !seen.contains_key(&at) {
        seen.insert(at, walk.len());
        walk.push(at);
        match deps[at].iter().copied().find(|&p| left(p)) {
            Some(p) => at = p,
            None => break,
        }
    }
    // The walk runs from readers to what they read; the cycle in data-flow order starts at
    // its first node in the file.
    let mut ring: Vec<usize> = walk[seen.get(&at).copied().unwrap_or(0)..].to_vec();
    ring.reverse();
    let first = ring
        .iter()
        .enumerate()
        .min_by_key(|(_, &i)| i)
        .map_or(0, |(k, _)| k);
    ring.rotate_left(first);
    let mut path: Vec<&str> = ring.iter().map(|&i| names[i].as_str()).collect();
    path.push(path[0]);
    GraphError::Cycle {
        node: names[ring[0]].clone(),
        op: nodes[ring[0]].op_type.clone(),
        path: path.join(" -> "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, ins: &[&str], outs: &[&str]) -> NodeProto {
        NodeProto {
            name: name.into(),
            op_type: "Op".into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn run(nodes: &[NodeProto]) -> Result<Vec<usize>> {
        let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
        order(nodes, &names)
    }

    #[test]
    fn in_order_graphs_keep_their_order_and_others_are_sorted() {
        let g = [
            n("a", &["x"], &["a"]),
            n("b", &["x"], &["b"]),
            n("c", &["a", "b"], &["c"]),
        ];
        assert_eq!(run(&g).unwrap(), [0, 1, 2]);
        let g = [
            n("c", &["a", "b"], &["c"]),
            n("b", &["x", "ghost"], &["b"]),
            n("a", &["x"], &["a"]),
        ];
        assert_eq!(run(&g).unwrap(), [1, 2, 0]);
    }

    #[test]
    fn cycles_name_a_node_on_them() {
        // d reads the cycle b -> c -> b but is not on it.
        let g = [
            n("d", &["c"], &["d"]),
            n("b", &["x", "c"], &["b"]),
            n("c", &["b"], &["c"]),
        ];
        let e = run(&g).unwrap_err().to_string();
        assert_eq!(
            e,
            "node 'b' (Op) is on a cycle (b -> c -> b); an ONNX graph must be acyclic"
        );
        let e = run(&[n("self", &["y"], &["y"])]).unwrap_err().to_string();
        assert!(e.contains("(self -> self)"), "{e}");
    }
}
