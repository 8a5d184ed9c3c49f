//! The hostile-input suite: the `fieldtune` binary against crafted damage to each thing it
//! reads (models, model.toml, images, checkpoints, run configs, board profiles, state
//! folders, command-line numbers). One table of cases, one runner. Each case damages a fresh
//! sandbox (`common/sandbox.rs`), runs one command and asserts:
//!
//! - an exit code (no death by a signal), non-zero unless the case documents a recovery;
//! - no panic (`panicked` is not in stderr) and at most 64 KiB of stderr;
//! - the message names the file, key or flag at fault (every needle is in stderr);
//! - the model folder is byte-identical afterwards, and the state folder too unless the case
//!   expects a file moved aside; a case that recovers says which file it moved.
//!
//! Cases already held by `cli.rs` and `hostile_outputs.rs` are not repeated here.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::root;
#[path = "common/sandbox.rs"]
mod sandbox;
use sandbox::Sandbox;

/// What a case expects.
enum Expect {
    /// A non-zero exit with every needle in stderr; model and state unchanged.
    Fails(&'static [&'static str]),
    /// Exit 0 with every needle in stdout or stderr (the documented recovery); the model
    /// unchanged, and the state files other than the named ones unchanged.
    Recovers(&'static [&'static str], &'static [&'static str]),
}
use Expect::{Fails, Recovers};

struct Case {
    name: &'static str,
    damage: fn(&Sandbox),
    /// `{d}` stands for the sandbox folder.
    args: &'static [&'static str],
    expect: Expect,
}

const EVAL: &[&str] = &[
    "eval",
    "--model",
    "{d}/model",
    "--data",
    "{d}/data",
    "--engine",
    "tract",
];
const COMPILE: &[&str] = &["compile", "--model", "{d}/model", "--out", "{d}/step.onnx"];
const CHECK: &[&str] = &["run", "--config", "{d}/run.toml", "--check-state"];
const PRINT: &[&str] = &["run", "--config", "{d}/run.toml", "--print-config"];
const RUN: &[&str] = &[
    "run",
    "--config",
    "{d}/run.toml",
    "--engine",
    "tract",
    "--max-frames",
    "2",
];

const ONNX: &str = "model/model.onnx";
const TOML: &str = "model/model.toml";
const LAST: &str = "state/last-good.safetensors";
const PREV: &str = "state/previous.safetensors";

fn case(
    name: &'static str,
    damage: fn(&Sandbox),
    args: &'static [&'static str],
    expect: Expect,
) -> Case {
    Case {
        name,
        damage,
        args,
        expect,
    }
}

/// A PNG of `w` x `h` 8-bit gray pixels whose data stream holds a few bytes (a decompression
/// bomb when the size is large).
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = v.len();
        v.extend_from_slice(kind);
        v.extend_from_slice(data);
        let crc = crc32fast::hash(&v[start..]);
        v.extend_from_slice(&crc.to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    // zlib stream of a run of zero bytes (stored block), far shorter than the image.
    chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0],
    );
    chunk(b"IEND", &[]);
    v
}

/// The first PNG of a class folder of the sandbox's labeled data.
fn data_png(s: &Sandbox, class: &str) -> String {
    let dir = s.path(&format!("data/{class}"));
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    format!("data/{class}/{}", v[0])
}

fn run_toml(s: &Sandbox, extra: &str) {
    s.append("run.toml", extra);
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // --- model.onnx
        case("empty model.onnx", |s| s.write(ONNX, b""), EVAL, Fails(&["model.onnx"])),
        case("model.onnx of one byte", |s| s.truncate(ONNX, 1), EVAL, Fails(&["model.onnx"])),
        case("model.onnx without its last byte", |s| s.chop(ONNX, 1), EVAL, Fails(&["model.onnx"])),
        case("model.onnx cut at 4 KiB", |s| s.truncate(ONNX, 4096), COMPILE, Fails(&["model.onnx"])),
        case("model.onnx is a PNG", |s| { let p = s.read(&data_png(s, "0")); s.write(ONNX, p) }, EVAL, Fails(&["model.onnx"])),
        case("model.onnx is a folder", |s| s.folder(ONNX), EVAL, Fails(&["model.onnx"])),
        case("model.onnx missing", |s| s.remove(ONNX), EVAL, Fails(&["model.onnx"])),
        case("model.onnx a dangling link", |s| s.symlink(ONNX, Path::new("/nonexistent/model.onnx")), EVAL, Fails(&["model.onnx"])),
        case("opset 9", |s| s.graph(|g| g.opset = 9), EVAL, Fails(&["opset"])),
        case("input declared 2^40 wide", |s| s.graph(|g| g.inputs[0].dims[3] = fieldtune_graph::ir::Dim::Fixed(1 << 40)), EVAL, Fails(&["model.onnx", "input"])),
        case("op of another domain", |s| s.graph(|g| g.nodes[0].domain = "com.microsoft".into()), COMPILE, Fails(&["com.microsoft"])),
        case("initializer of float16", |s| s.proto(|m| m.graph.as_mut().unwrap().initializer[0].data_type = 10), COMPILE, Fails(&["model.onnx", "element type"])),
        case("initializer stored outside the file", |s| s.proto(|m| m.graph.as_mut().unwrap().initializer[0].data_location = Some(1)), EVAL, Fails(&["model.onnx", "outside"])),
        case("initializer data too short", |s| s.proto(|m| m.graph.as_mut().unwrap().initializer[0].raw_data.truncate(3)), EVAL, Fails(&["model.onnx", "raw data"])),
        case("node reading an undefined tensor", |s| s.graph(|g| g.nodes[1].inputs[0] = "nowhere".into()), COMPILE, Fails(&["nowhere"])),
        case("Conv group i64::MAX", |s| s.graph(|g| { let n = g.nodes.iter_mut().find(|n| n.op == "Conv").unwrap(); n.attrs.retain(|a| a.name != "group"); n.attrs.push(fieldtune_graph::ir::attr::int("group", i64::MAX)) }), COMPILE, Fails(&["group"])),
        case("MaxPool kernel 0", |s| s.graph(|g| { let n = g.nodes.iter_mut().find(|n| n.op == "MaxPool").unwrap(); n.attrs.retain(|a| a.name != "kernel_shape"); n.attrs.push(fieldtune_graph::ir::attr::ints("kernel_shape", &[0, 2])) }), COMPILE, Fails(&["kernel"])),
        case("bare .onnx with 2^62 classes", |s| { s.graph(|g| g.outputs[0].dims[1] = fieldtune_graph::ir::Dim::Fixed(1 << 62)); s.remove(TOML) }, &["eval", "--model", "{d}/model/model.onnx", "--raw-input", "--data", "{d}/data", "--engine", "tract"], Fails(&["model.onnx", "classes"])),
        case(".onnx with 2^62 classes, model.toml beside", |s| s.graph(|g| g.outputs[0].dims[1] = fieldtune_graph::ir::Dim::Fixed(1 << 62)), &["eval", "--model", "{d}/model/model.onnx", "--data", "{d}/data", "--engine", "tract"], Fails(&["model.onnx", "model.toml", "4611686018427387904 classes", "names 10"])),
        case("compile --out onto model.toml", |_| {}, &["compile", "--model", "{d}/model", "--out", "{d}/model/model.toml"], Fails(&["would overwrite", "model.toml"])),
        // --- model.toml
        case("model.toml missing", |s| s.remove(TOML), EVAL, Fails(&["model.toml"])),
        case("model.toml empty", |s| s.write(TOML, b""), EVAL, Fails(&["model.toml", "input"])),
        case("model.toml not TOML", |s| s.write(TOML, b"input = [unclosed\n"), EVAL, Fails(&["model.toml"])),
        case("model.toml not UTF-8", |s| s.write(TOML, b"input = \"\xff\xfe\"\n"), EVAL, Fails(&["model.toml"])),
        case("model.toml unknown key", |s| s.append(TOML, "colour = true\n"), EVAL, Fails(&["model.toml", "colour"])),
        case("model.toml channels 300", |s| s.edit(TOML, "channels = 1", "channels = 300"), EVAL, Fails(&["model.toml", "channels"])),
        case("model.toml height 0", |s| s.edit(TOML, "height = 28", "height = 0"), EVAL, Fails(&["model.toml", "height"])),
        case("model.toml height -1", |s| s.edit(TOML, "height = 28", "height = -1"), EVAL, Fails(&["model.toml", "height"])),
        case("model.toml width 2^32", |s| s.edit(TOML, "width = 28", "width = 4294967296"), EVAL, Fails(&["model.toml", "width"])),
        case("model.toml and model.onnx 60000 x 60000", |s| { s.edit(TOML, "height = 28", "height = 60000"); s.edit(TOML, "width = 28", "width = 60000"); s.graph(|g| { g.inputs[0].dims[2] = fieldtune_graph::ir::Dim::Fixed(60_000); g.inputs[0].dims[3] = fieldtune_graph::ir::Dim::Fixed(60_000) }) }, EVAL, Fails(&["model.toml", "height"])),
        case("bare .onnx 60000 x 60000", |s| { s.graph(|g| { g.inputs[0].dims[2] = fieldtune_graph::ir::Dim::Fixed(60_000); g.inputs[0].dims[3] = fieldtune_graph::ir::Dim::Fixed(60_000) }); s.remove(TOML) }, &["eval", "--model", "{d}/model/model.onnx", "--mean", "0.5", "--std", "0.25", "--data", "{d}/data", "--engine", "tract"], Fails(&["model.onnx", "60000"])),
        case("model.toml mean nan", |s| s.edit(TOML, "mean = [0.1307]", "mean = [nan]"), EVAL, Fails(&["model.toml", "mean"])),
        case("model.toml std 0", |s| s.edit(TOML, "std = [0.3081]", "std = [0.0]"), EVAL, Fails(&["model.toml", "std"])),
        case("model.toml no classes", |s| s.edit(TOML, "classes = [", "classes = []\nunused = ["), EVAL, Fails(&["model.toml"])),
        case("model.toml duplicate class", |s| s.edit(TOML, "\"1\"", "\"0\""), EVAL, Fails(&["model.toml", "classes"])),
        case("model.toml names a missing input", |s| s.edit(TOML, "input = \"input\"", "input = \"image\""), EVAL, Fails(&["model.onnx", "image"])),
        case("model.toml names a missing output", |s| s.edit(TOML, "output = \"logits\"", "output = \"scores\""), EVAL, Fails(&["model.onnx", "scores"])),
        case("model.toml is a folder", |s| s.folder(TOML), EVAL, Fails(&["model.toml"])),
        // --- images
        case("truncated PNG", |s| { let p = data_png(s, "1"); s.truncate(&p, 60) }, EVAL, Fails(&["data/1/"])),
        case("PNG with a bad CRC", |s| { let p = data_png(s, "2"); let mut b = s.read(&p); b[29] ^= 0xff; s.write(&p, b) }, EVAL, Fails(&["data/2/"])),
        case("empty PNG", |s| s.write("data/3/empty.png", b""), EVAL, Fails(&["empty.png"])),
        case("PNG bomb 60000 x 60000", |s| s.write("data/4/bomb.png", png_declaring(60_000, 60_000)), EVAL, Fails(&["bomb.png"])),
        case("PNG bomb 8192 x 65535", |s| s.write("data/4/tall.png", png_declaring(8192, 65_535)), EVAL, Fails(&["tall.png"])),
        case("JPEG bomb 5209 x 65535", |s| s.write("data/5/bomb.jpg", std::fs::read(root().join("tests/fuzz/corpus/frames/regress-jpeg-bomb-5209x65535.jpg")).unwrap()), EVAL, Fails(&["bomb.jpg"])),
        case("truncated JPEG", |s| { let j = std::fs::read(root().join("tests/fuzz/corpus/frames/digit-rgb.jpg")).unwrap(); s.write("data/6/cut.jpg", &j[..j.len() / 3]) }, EVAL, Fails(&["cut.jpg"])),
        case("a folder named like an image", |s| s.folder("data/7/x.png"), EVAL, Fails(&["x.png"])),
        case("labeled folder missing", |s| s.remove("data"), EVAL, Fails(&["data"])),
        case("labeled folder empty", |s| { s.remove("data"); s.folder("data") }, EVAL, Fails(&["data"])),
        case("image a dangling link", |s| s.symlink("data/8/gone.png", Path::new("/nonexistent.png")), EVAL, Fails(&["gone.png"])),
        // --- checkpoints (run --check-state checks without changing anything)
        case("last-good truncated", |s| s.chop(LAST, 100), CHECK, Fails(&["last-good.safetensors"])),
        case("last-good empty", |s| s.write(LAST, b""), CHECK, Fails(&["last-good.safetensors"])),
        case("header length u64::MAX", |s| { let mut b = s.read(LAST); b[..8].copy_from_slice(&u64::MAX.to_le_bytes()); s.write(LAST, b) }, CHECK, Fails(&["last-good.safetensors"])),
        case("header length past the end", |s| { let mut b = s.read(LAST); let n = b.len() as u64; b[..8].copy_from_slice(&n.to_le_bytes()); s.write(LAST, b) }, CHECK, Fails(&["last-good.safetensors"])),
        case("header not JSON", |s| { let mut b = s.read(PREV); b[8] = b'!'; s.write(PREV, b) }, CHECK, Fails(&["previous.safetensors"])),
        case("a flipped weight byte", |s| { let mut b = s.read(LAST); let n = b.len(); b[n - 5] ^= 0x40; s.write(LAST, b) }, CHECK, Fails(&["last-good.safetensors", "checksum"])),
        case("float16 tensor", |s| { let mut b = s.read(LAST); let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize; let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap().replacen("\"F32\"", "\"F16\"", 1); b.splice(8..8 + n, h.into_bytes()); s.write(LAST, b) }, CHECK, Fails(&["last-good.safetensors"])),
        case("int64 in place of a weight", |s| s.checkpoint(LAST, |t, _| { let n = t["features.0.bias"].len(); t.insert("features.0.bias".into(), fieldtune_tensor::Tensor::i64(vec![n], vec![0; n]).unwrap()); }), CHECK, Fails(&["last-good.safetensors", "features.0.bias"])),
        case("an extra tensor", |s| s.checkpoint(PREV, |t, _| { t.insert("extra".into(), fieldtune_tensor::Tensor::zeros_f32(vec![2])); }), CHECK, Fails(&["previous.safetensors", "extra"])),
        case("a missing tensor", |s| s.checkpoint(LAST, |t, _| { t.remove("features.0.bias"); }), CHECK, Fails(&["last-good.safetensors", "features.0.bias"])),
        case("infinite weights", |s| s.checkpoint(PREV, |t, _| { let n = t["features.0.bias"].len(); t.insert("features.0.bias".into(), fieldtune_tensor::Tensor::f32(vec![n], vec![f32::INFINITY; n]).unwrap()); }), CHECK, Fails(&["previous.safetensors"])),
        case("version u64::MAX", |s| s.checkpoint(LAST, |_, m| { m.insert("fieldtune.version".into(), u64::MAX.to_string()); }), CHECK, Fails(&["last-good.safetensors", "fieldtune.version"])),
        case("version not a number", |s| s.checkpoint(LAST, |_, m| { m.insert("fieldtune.version".into(), "two".into()); }), CHECK, Fails(&["last-good.safetensors", "fieldtune.version"])),
        case("metadata without kind", |s| s.checkpoint(PREV, |_, m| { m.remove("kind"); }), CHECK, Fails(&["previous.safetensors", "kind"])),
        case("checkpoint of another model", |s| s.checkpoint(LAST, |_, m| { m.insert("source_model_sha256".into(), "0".repeat(64)); }), CHECK, Fails(&["last-good.safetensors"])),
        case("no checksum", |s| { let (t, mut m) = fieldtune_tensor::st::from_bytes(&s.read(LAST)).unwrap(); m.remove("fieldtune.sha256"); s.write(LAST, fieldtune_tensor::st::to_bytes(&t, &m)) }, CHECK, Fails(&["last-good.safetensors", "fieldtune.sha256"])),
        case("last-good a link", |s| s.symlink(LAST, Path::new("previous.safetensors")), CHECK, Fails(&["last-good.safetensors", "link"])),
        case("last-good a FIFO", |s| s.fifo(LAST), CHECK, Fails(&["last-good.safetensors"])),
        case("last-good a folder", |s| s.folder(LAST), CHECK, Fails(&["last-good.safetensors"])),
        case("source truncated", |s| s.chop("state/source.safetensors", 7), CHECK, Fails(&["source.safetensors"])),
        // --- recovery: a start moves the damaged file aside and serves the next good one
        case("run with a truncated last-good", |s| s.chop(LAST, 100), RUN, Recovers(&[], &["last-good.safetensors"])),
        case("run with NaN previous and last-good", |s| { for p in [LAST, PREV] { s.checkpoint(p, |t, _| { let n = t["features.0.bias"].len(); t.insert("features.0.bias".into(), fieldtune_tensor::Tensor::f32(vec![n], vec![f32::NAN; n]).unwrap()); }) } }, RUN, Recovers(&[], &["last-good.safetensors", "previous.safetensors"])),
        // --- run configs
        case("config not TOML", |s| s.write("run.toml", b"model = \n"), PRINT, Fails(&["run.toml", "line 1"])),
        case("config not UTF-8", |s| s.append("run.toml", "name = \"\u{fffd}\"\n\u{0}"), PRINT, Fails(&["run.toml"])),
        case("config unknown key", |s| s.edit("run.toml", "paths =", "pathz ="), PRINT, Fails(&["run.toml", "pathz"])),
        case("config unknown section", |s| run_toml(s, "[turbo]\nx = 1\n"), PRINT, Fails(&["run.toml", "turbo"])),
        case("replay.capacity 0", |s| run_toml(s, "[replay]\ncapacity = 0\n"), PRINT, Fails(&["run.toml", "replay.capacity"])),
        case("replay.capacity -1", |s| run_toml(s, "[replay]\ncapacity = -1\n"), PRINT, Fails(&["run.toml", "capacity"])),
        case("capture_queue 0", |s| run_toml(s, "[pipeline]\ncapture_queue = 0\n"), PRINT, Fails(&["run.toml", "pipeline.capture_queue"])),
        case("inference_threads 257", |s| run_toml(s, "[engine]\ninference_threads = 257\n"), PRINT, Fails(&["run.toml", "engine.inference_threads"])),
        case("recent_fraction nan", |s| run_toml(s, "[replay]\nrecent_fraction = nan\n"), PRINT, Fails(&["run.toml", "replay.recent_fraction"])),
        case("trigger.ema_alpha 0", |s| run_toml(s, "[trigger]\nema_alpha = 0.0\n"), PRINT, Fails(&["run.toml", "trigger.ema_alpha"])),
        case("budget.duty_cycle 2", |s| run_toml(s, "[budget]\nduty_cycle = 2.0\n"), PRINT, Fails(&["run.toml", "budget.duty_cycle"])),
        case("gate.min_agreement -1", |s| run_toml(s, "[gate]\nmin_agreement = -1.0\n"), PRINT, Fails(&["run.toml", "gate.min_agreement"])),
        case("engine.retry_s 1e308", |s| run_toml(s, "[engine]\nretry_s = 1e308\n"), PRINT, Fails(&["run.toml", "engine.retry_s"])),
        case("stats_every_s inf", |s| run_toml(s, "[pipeline]\nstats_every_s = inf\n"), PRINT, Fails(&["run.toml", "pipeline.stats_every_s"])),
        case("source.fps 1e-300", |s| s.edit("run.toml", "[source]\n", "[source]\nfps = 1e-300\n"), PRINT, Fails(&["run.toml", "source.fps"])),
        case("budget.duty_cycle 1e-300", |s| run_toml(s, "[budget]\nduty_cycle = 1e-300\n"), PRINT, Fails(&["run.toml", "budget.duty_cycle"])),
        case("metrics on a public address", |s| run_toml(s, "[metrics]\nlisten = \"0.0.0.0:9464\"\n"), PRINT, Fails(&["run.toml", "metrics"])),
        case("daily_utc 25:00", |s| run_toml(s, "[trigger]\ndaily_utc = [\"25:00\"]\n"), PRINT, Fails(&["run.toml", "trigger.daily_utc"])),
        case("output onto the config", |s| run_toml(s, "[output]\npath = \"run.toml\"\n"), PRINT, Fails(&["run.toml", "output.path"])),
        case("events onto last-good", |s| run_toml(s, "[events]\npath = \"state/last-good.safetensors\"\n"), PRINT, Fails(&["events.path", "would overwrite"])),
        case("unknown board", |s| run_toml(s, "[budget]\nboard = \"no-such-board\"\n"), PRINT, Fails(&["run.toml", "budget.board", "no-such-board"])),
        case("board profile not TOML", |s| { s.write("board.toml", b"[board\n"); run_toml(s, &format!("[budget]\nboard = \"{}\"\n", s.path("board.toml").display())) }, PRINT, Fails(&["budget.board", "board.toml"])),
        case("config missing", |s| s.remove("run.toml"), PRINT, Fails(&["run.toml"])),
        case("config a folder", |s| s.folder("run.toml"), PRINT, Fails(&["run.toml"])),
        case("model folder missing", |s| s.edit("run.toml", "model = \"model\"", "model = \"nomodel\""), CHECK, Fails(&["nomodel"])),
        case("state_dir a link", |s| { std::fs::rename(s.path("state"), s.path("real-state")).unwrap(); s.symlink("state", Path::new("real-state")) }, RUN, Fails(&["state", "link"])),
        case("state_dir a file", |s| { s.remove("state"); s.write("state", b"not a folder") }, RUN, Fails(&["state"])),
        case("frame folder missing", |s| s.remove("frames"), RUN, Fails(&["frames"])),
        // --- command-line numbers and files
        case("--threads 0", |_| {}, &["--threads", "0", "doctor"], Fails(&["--threads"])),
        case("eval --batch 0", |_| {}, &["eval", "--model", "{d}/model", "--data", "{d}/data", "--batch", "0"], Fails(&["--batch"])),
        case("tta --batch 5000", |_| {}, &["tta", "--model", "{d}/model", "--data", "{d}/data", "--batch", "5000"], Fails(&["--batch"])),
        case("adapt --steps 0", |_| {}, &["adapt", "--model", "{d}/model", "--unlabeled", "{d}/frames", "--out", "{d}/out", "--steps", "0"], Fails(&["steps"])),
        case("adapt --batch-labeled 5000", |_| {}, &["adapt", "--model", "{d}/model", "--unlabeled", "{d}/frames", "--out", "{d}/out", "--batch-labeled", "5000"], Fails(&["batch"])),
        case("run --max-frames -1", |_| {}, &["run", "--config", "{d}/run.toml", "--max-frames", "-1"], Fails(&["'-1'"])),
        case("report --height 10", |_| {}, &["report", "--events", "{d}/run.toml", "--height", "10"], Fails(&["--height"])),
        case("report of a missing event log", |_| {}, &["report", "--events", "{d}/none.jsonl", "--out", "{d}/r.png"], Fails(&["none.jsonl"])),
        case("report of a log that is not JSON", |s| s.write("events.jsonl", b"{\"kind\": \n\x00\x01"), &["report", "--events", "{d}/events.jsonl", "--out", "{d}/r.png"], Fails(&["events.jsonl"])),
        case("doctor --board missing file", |_| {}, &["doctor", "--board", "{d}/none.toml"], Fails(&["none.toml"])),
        case("--ort-lib not a library", |_| {}, &["--ort-lib", "{d}/run.toml", "--engine", "ort", "eval", "--model", "{d}/model", "--data", "{d}/data"], Fails(&["run.toml"])),
        case("unknown command", |_| {}, &["frobnicate"], Fails(&["frobnicate"])),
    ]
}

/// Runs one case in its own sandbox; returns what went wrong.
fn check(c: &Case) -> Result<(), String> {
    let s = Sandbox::new();
    let model = s.snapshot(&["model"]);
    let state = s.snapshot(&["state"]);
    (c.damage)(&s);
    let model = if s.snapshot(&["model"]) == model {
        model
    } else {
        s.snapshot(&["model"]) // the case damaged the model itself
    };
    let state = if s.snapshot(&["state"]) == state {
        state
    } else {
        s.snapshot(&["state"])
    };
    let d = s.dir.path().display().to_string();
    let args: Vec<String> = c.args.iter().map(|a| a.replace("{d}", &d)).collect();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldtune"))
        .args(&args)
        .current_dir(s.dir.path())
        .env("RUST_LOG", "warn")
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().ok();
            return Err("no exit within 20 s (hang)".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    let Some(code) = out.status.code() else {
        return Err(format!("died by a signal: {:?}\n{err}", out.status));
    };
    if err.contains("panicked") {
        return Err(format!("panicked:\n{err}"));
    }
    if err.len() > 64 << 10 {
        return Err(format!("{} bytes of stderr", err.len()));
    }
    let (needles, haystack, moved): (&[&str], &str, &[&str]) = match c.expect {
        Fails(n) => {
            if code == 0 {
                return Err(format!("exit 0, expected an error\n{all}"));
            }
            (n, &err, &[])
        }
        Recovers(n, moved) => {
            if code != 0 {
                return Err(format!("exit {code}, expected a recovery\n{err}"));
            }
            (n, &all, moved)
        }
    };
    for n in needles.iter().chain(moved) {
        if !haystack.contains(n) {
            return Err(format!("exit {code}; the message lacks '{n}':\n{err}"));
        }
    }
    if s.snapshot(&["model"]) != model {
        return Err("the model folder changed".into());
    }
    let now = s.snapshot(&["state"]);
    let mut changed: Vec<&String> = state
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    changed.retain(|k| !moved.iter().any(|m| k.ends_with(m)));
    if !changed.is_empty() {
        return Err(format!("state files changed: {changed:?}"));
    }
    for m in moved {
        let aside = now.keys().any(|k| k.contains(&format!("{m}.corrupt-")));
        if !aside {
            return Err(format!("{m} was not moved aside: {:?}", now.keys()));
        }
    }
    Ok(())
}

#[test]
fn hostile_inputs_end_in_a_clear_error_or_a_documented_recovery() {
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    for c in &cases {
        *names.entry(c.name).or_default() += 1;
    }
    assert!(names.values().all(|&n| n == 1), "case names repeat");
    let started = Instant::now();
    // Four at a time: most cases wait on process start and the file system.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<Vec<&Case>> = (0..4)
            .map(|k| cases.iter().skip(k).step_by(4).collect())
            .collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .into_iter()
                        .filter_map(|c| check(c).err().map(|e| format!("[{}] {e}", c.name)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    println!(
        "{} hostile cases in {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
