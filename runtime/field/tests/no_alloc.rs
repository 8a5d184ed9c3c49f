//! fieldtune's own per-frame work allocates nothing in steady state: a preloaded folder
//! source, preprocessing into a queue slot, the capture and output queues, normalisation into
//! the reused input tensor, softmax statistics, latency histogram, triggers, the replay buffer
//! and the JSON line. (The engine's `run` and the decoders are outside this claim: see
//! docs/FIELD.md.) Counted with a global allocator wrapper, over 2,000 frames after warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fieldtune_field::config::{Order, Resize, RoundTriggerConfig, SourceConfig, WhenFull};
use fieldtune_field::preprocess::Preprocessor;
use fieldtune_field::queue::SlotQueue;
use fieldtune_field::replay::ReplayBuffer;
use fieldtune_field::runtime::{format_line, PredictionLine};
use fieldtune_field::source::{FrameSource, ImageFolderSource, Next};
use fieldtune_field::stats::{softmax_stats, LatencyHist};
use fieldtune_field::trigger::FrameTriggers;
use fieldtune_frames::{write_normalized, Image8, ModelConfig};
use fieldtune_tensor::Tensor;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// A test-only allocator that counts and defers to the system allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Default)]
struct Pred {
    frame: u64,
    class: usize,
    conf: f32,
}

#[test]
fn the_per_frame_path_does_not_allocate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = ModelConfig::load(root.join("models/mnist-cnn/model.toml")).unwrap();
    let src_cfg = SourceConfig {
        paths: vec![root.join("data/opencv-digits")],
        order: Order::Shuffled,
        fps: 0.0,
        looping: true,
        limit: 300,
        preload: true,
        ..SourceConfig::default()
    };
    let mut source = ImageFolderSource::open(&src_cfg, &model.classes).unwrap();
    let pre = Preprocessor::new(&model, Resize::Stretch);
    struct Slot {
        id: u64,
        label: Option<usize>,
        image: Image8,
    }
    let capture = SlotQueue::new(4, WhenFull::DropOldest, || Slot {
        id: 0,
        label: None,
        image: pre.blank(),
    });
    let output = SlotQueue::new(64, WhenFull::DropOldest, Pred::default);
    let mut input = Tensor::zeros_f32(vec![1, 1, 28, 28]);
    let mut replay = ReplayBuffer::new(model.input_shape(), 256, 0.5, 0);
    let mut hist = LatencyHist::default();
    let mut triggers = FrameTriggers::new(&RoundTriggerConfig {
        every_frames: 100,
        ..RoundTriggerConfig::default()
    });
    let classes: Vec<String> = model.classes.iter().map(|c| format!("\"{c}\"")).collect();
    let mut line = String::with_capacity(256);
    let mut logits = [0f32; 10];

    let mut frame = |n: u64| {
        // capture thread
        let Next::Frame(f) = source.next_frame().unwrap() else {
            panic!("looping source")
        };
        let mut slot = capture.acquire().unwrap();
        assert!(pre.apply(&f, &mut slot.image));
        slot.id = n;
        slot.label = f.label;
        capture.push(slot);
        // inference thread (the engine call is replaced by fixed logits)
        let slot = capture.pop(Duration::ZERO).unwrap();
        write_normalized(&slot.image, &model, 0, input.as_f32_mut().unwrap()).unwrap();
        let x = input.as_f32().unwrap();
        logits
            .iter_mut()
            .enumerate()
            .for_each(|(i, l)| *l = x[i * 70] * 0.1 + i as f32 * 0.01);
        let (class, conf, entropy) = softmax_stats(&logits).unwrap();
        hist.record_us(100.0 + (n % 37) as f64);
        let _ = triggers.observe(entropy, conf);
        replay.push(&slot.image, slot.id);
        if let Some(_free) = output.acquire() {
            output.push(Pred {
                frame: slot.id,
                class,
                conf: conf as f32,
            });
        }
        capture.release(slot);
        // output thread
        let p = output.pop(Duration::ZERO).unwrap();
        output.release(p);
        format_line(
            &mut line,
            &PredictionLine {
                frame: p.frame,
                t_ms: 1_700_000_000_000,
                class_json: &classes[p.class],
                class_id: p.class,
                confidence: p.conf,
                version: 3,
                label_json: Some(&classes[0]),
            },
        );
    };
    for n in 0..400 {
        frame(n); // warm-up: every image seen once, buffers grown
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for n in 400..2400 {
        frame(n);
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "allocations in 2,000 steady-state frames"
    );
    assert!(
        line.starts_with("{\"frame\":2399,") && line.ends_with(",\"label\":\"0\"}\n"),
        "{line}"
    );
    assert_eq!(hist.count(), 2400);
}
