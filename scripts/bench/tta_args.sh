# Shared by the Fashion-MNIST-C benchmarks (bench_fmnist_c.sh, bench_folded.sh): parses
#   [--seeds LIST] [--severities LIST] [--engine ort|tract] [--methods LIST] [--limit N]
#   [--method-config METHOD[:LABEL]=FILE]... [--out FILE]
# into $seeds $severities $engine $methods $limit, the array $method_configs (`fieldtune tta
# --method-config` arguments, repeatable; bench_fmnist_c.sh passes them on) and $out (bench_fmnist_c.sh:
# its results file; the caller sets the defaults first), and checks
# that the fieldtune binary ($bin) and data/fmnist-c exist. Source it; do not run it.
method_configs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds=$2; shift 2 ;;
        --severities) severities=$2; shift 2 ;;
        --engine) engine=$2; shift 2 ;;
        --methods) methods=$2; shift 2 ;;
        --limit) limit=$2; shift 2 ;;
        --method-config) method_configs+=("$2"); shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "build first: cargo build --release (or set FIELDTUNE_BIN)" >&2; exit 1; }
[ -d data/fmnist-c/clean ] || { echo "generate data/fmnist-c first (data/fmnist-c/DATA.md)" >&2; exit 1; }
