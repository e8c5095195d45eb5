"""Regenerate service/pb from protos/ (needs the dev extra: grpcio-tools, mypy-protobuf).

    python -m service.pb.generate [OUT_DIR]

protoc emits `import duckcast_pb2` for a sibling file; we rewrite it to a package import so
the generated modules work from inside `service.pb`. The public schema's source is copied
beside them: the app serves it at /protos/ (service.api.routes.ops.PUBLIC_PROTOS), and an
installed package has no protos/ directory.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
OUT = Path(__file__).resolve().parent
SERVED = ("duckcast.proto",)  # not store.proto: the internal worker <-> store protocol


def generate(out: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.name) for p in PROTOS.glob("*.proto"))
    # the mypy plugin sits beside the interpreter in a venv that is not on PATH
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    args = ["protoc", f"--plugin=protoc-gen-mypy={plugin}", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={out}", f"--mypy_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for name in SERVED:
        shutil.copyfile(PROTOS / name, out / name)
    for path in out.glob("*_pb2.py*"):
        text = path.read_text()
        fixed = re.sub(r"^import (\w+_pb2)", r"from service.pb import \1", text, flags=re.M)
        path.write_text(fixed)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
