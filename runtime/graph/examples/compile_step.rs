//! Compiles the train step of an ONNX classifier and writes it: `cargo run -p
//! fieldtune-graph --example compile_step -- MODEL.onnx OUT.onnx`.
use fieldtune_graph::{compile_train_step, encode_model, load_model, TrainSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = load_model(args[1].as_ref())?;
    let step = compile_train_step(&model, &TrainSpec::default())?;
    println!(
        "nodes: {}, params: {}, state: {}, frozen: {:?}",
        step.graph.nodes.len(),
        step.params.len(),
        step.state.len(),
        step.frozen
    );
    std::fs::write(&args[2], encode_model(&step.to_model()))?;
    Ok(())
}
