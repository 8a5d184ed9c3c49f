//! The documented starting config that `fieldtune run --print-config` prints without
//! `--config`.

/// A documented starting config (every section with its defaults), for `--print-config`
/// without `--config`.
pub const EXAMPLE: &str = r#"# fieldtune run config. Relative paths are relative to this file's folder.
model = "models/mnist-cnn"          # model folder (model.onnx + model.toml); required
# anchors = "models/mnist-cnn/anchors"  # labeled source anchors; default <model>/anchors
state_dir = "field-state"           # checkpoints, events.jsonl, summary.json

[source]
kind = "folder"                     # "folder" | "gstreamer"
paths = ["data/opencv-digits"]      # folder: played one after the other; required for folders
order = "sorted"                    # "sorted" | "shuffled"
seed = 0
fps = 30.0                          # 0: as fast as the pipeline takes them
loop = false
limit = 0                           # per folder (0: all)
preload = false                     # decode all images at start
max_bad_frames = 100                # unreadable/corrupt frames in a row before the run stops
pipeline = ""                       # gstreamer: "... ! appsink name=sink"

[input]
resize = "stretch"                  # "stretch" | "center-crop"

[pipeline]
capture_queue = 4
output_queue = 256
when_full = "drop-oldest"           # "drop-oldest" | "block"
max_frames = 0                      # 0: until the source ends or SIGINT/SIGTERM (--max-frames)
max_seconds = 0.0                   # (--duration)
stats_every_s = 5.0
shutdown_s = 10.0                   # SIGINT/SIGTERM: seconds to stop before a forced exit

[output]
path = "-"                          # "-": stdout, "none", or a file (--output)
labels = true

[replay]
capacity = 2048
recent_fraction = 0.5
probe_fraction = 0.25
seed = 0

[trigger]
every_frames = 0
drift = true
ema_alpha = 0.01
baseline_frames = 300
entropy_rise = 0.05
confidence_drop = 0.02
drift_sigmas = 0.0                  # >0: thresholds at least this many sd of the EMA's noise (6 suits most models)
every_seconds = 0.0
daily_utc = []                      # e.g. ["02:30"]
manual_signal = true                # SIGUSR1
cooldown_frames = 300
min_replay = 256

[recovery]                          # after a drift trigger (docs/FIELD.md "Recovery after a shift")
enabled = true
arm_frames = 256                    # post-trigger frames before the first round
min_gain = 0.002                    # a committed round gaining less ends the episode (nats)
max_rounds = 30                     # rounds per episode at most
max_rollbacks = 2                   # rollbacks in a row that end it (a retry waits for arm_frames new frames)
round_steps = 0                     # steps of an episode round (0: [adapt] steps)
carry_optimizer = true              # optimizer state carries across the episode's rounds

[budget]
board = ""                          # e.g. "jetson-orin-nano-8gb": fills the keys not set here
adapt_memory_mb = 1024
duty_cycle = 1.0
temperature_ceiling_c = 85.0
temperature_hysteresis_c = 5.0
thermal_root = "/sys/class/thermal"
round_seconds = 300.0
nice = 10

[adapt]                             # any key of `fieldtune adapt --print-config`
recipe = "uda-im"
steps = 100

[gate]
max_anchor_drop = 0.01
min_objective_gain = 0.0
min_agreement = 0.7
agreement_waiver_spread = 0.25      # waive agreement when the new model's predictions spread this much more (nats; 0: never)
max_marginal_entropy_drop = 0.2
max_failures = 3
no_gain_tolerance = 0.02

[engine]                            # docs/FIELD.md "Engine plan"
inference = "auto"                  # "auto" | "tract" | "ort:cpu" | "ort:cuda" | "ort:tensorrt,cuda"
train = "auto"                      # same forms
fallback = "none"                   # "tract" | "none": where serving goes when the primary fails
train_fallback = ""                 # "ort:cpu" | "tract" | "": the round after a failed train step
retry_s = 10.0                      # seconds between probes of a failed primary
inference_deadline_ms = 0.0         # per-frame deadline of the primary (0: none)
deadline_misses = 3                 # misses in a row that move serving to the fallback
trt_cache = ""                      # TensorRT engine/timing cache folder (must be writable)
trt_cache_max_mb = 2048             # oldest files of trt_cache go beyond this (0: no bound)
trt_fp16 = false                    # TensorRT serves FP16 engines
trt_refit = false                   # weight-stripped TensorRT engines refitted per version
gpu_memory_mb = 0                   # CUDA arena limit of CUDA/TensorRT sessions (0: none)
inference_threads = 1
train_threads = 1

[events]
# path = "field-state/events.jsonl"
fsync = "rounds"                    # "every" | "rounds" | "never"

[metrics]
listen = ""                         # e.g. "127.0.0.1:9464"

[fleet]                             # this device as a Flower SuperNode (docs/FLEET.md "In fieldtune run")
superlink = ""                      # the SuperLink's Fleet API, "host:port" or a URL ("": no fleet)
insecure = false                    # plain HTTP: only to a loopback SuperLink
# ca = "fleet-ca.pem"               # PEM CA of the SuperLink's certificate (default: web PKI roots)
# server_name = "link.example"      # the name on that certificate, when not the host of superlink
key = "fleet-node.key"              # node P-384 key, created 0600 when missing (<key>.pub beside it)
heartbeat_s = 30.0
send = "all"                        # "all" | "fedbn" (BatchNorm statistics stay) | "trained"

[fault]                             # deliberate faults (test aids, demonstrations)
nan_rounds = []                     # rounds whose learning rate is NaN
label_noise_rounds = []             # rounds trained on permuted anchor labels
inference_errors = []               # [[FROM, TO], ...] frames where the primary's run errs
inference_stalls = []               # [[FROM, TO], ...] frames where the primary's run stalls
inference_stall_ms = 0              # how long a stalled run sleeps
train_error_rounds = []             # rounds whose train step returns an error
"#;

#[cfg(test)]
mod tests {
    /// docs/FIELD.md "Config keys and defaults" shows this file as `--print-config` prints it.
    #[test]
    fn the_field_guide_shows_the_printed_config() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/FIELD.md"),
        )
        .unwrap();
        let body = super::EXAMPLE.split_once('\n').unwrap().1;
        assert!(
            doc.contains(body),
            "docs/FIELD.md's config block differs from config/example.rs: copy it over"
        );
    }
}
