"""Writes the FileDescriptorSet of flwr's Fleet API (the serialized descriptors inside the
installed wheel's generated flwr/proto/*_pb2.py modules) to the path given as argv[1].
Run with the pinned flwr's Python: scripts/fleet/gen_proto.sh does."""
import importlib
import pkgutil
import sys

import flwr
import flwr.proto
from google.protobuf import descriptor_pb2

PINNED = "1.42.0"
if flwr.__version__ != PINNED:
    sys.exit(f"gen_fds.py: flwr {flwr.__version__} installed, the vendored schema is {PINNED}")

files = {}
for m in pkgutil.iter_modules(flwr.proto.__path__):
    if m.name.endswith("_pb2"):
        mod = importlib.import_module(f"flwr.proto.{m.name}")
        files[mod.DESCRIPTOR.name] = mod.DESCRIPTOR

out = descriptor_pb2.FileDescriptorSet()
seen = set()


def add(fd):
    # Dependencies first (protoc's --include_imports order).
    if fd.name in seen:
        return
    seen.add(fd.name)
    for dep in fd.dependencies:
        add(dep)
    p = out.file.add()
    fd.CopyToProto(p)


for name in sorted(files):
    add(files[name])
with open(sys.argv[1], "wb") as f:
    f.write(out.SerializeToString(deterministic=True))
print(f"{sys.argv[1]}: {len(out.file)} files ({', '.join(sorted(seen))})")
