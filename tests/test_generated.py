"""The generated protobuf code committed in service/pb is up to date with protos/."""

from __future__ import annotations

from pathlib import Path

import service.pb
from service.api.routes.ops import PUBLIC_PROTOS
from service.pb.generate import PROTOS, SERVED, generate

COMMITTED = Path(service.pb.__file__).resolve().parent


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    """Regenerating from protos/ yields exactly the committed *_pb2.py and *_pb2.pyi files and
    the .proto copies the package serves, byte for byte: nobody edited a .proto without
    regenerating, or edited generated code."""
    generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for pattern in ("*_pb2.py*", "*.proto")
        for p in COMMITTED.glob(pattern)
    }
    expected = {
        f"{proto.stem}{ext}" for proto in PROTOS.glob("*.proto") for ext in ("_pb2.py", "_pb2.pyi")
    } | set(SERVED)
    assert {Path(name).stem for name in SERVED} == PUBLIC_PROTOS  # what /protos/ serves
    assert set(fresh) == expected, sorted(fresh)
    assert set(committed) == expected, sorted(committed)
    stale = sorted(name for name in expected if fresh[name] != committed[name])
    assert stale == [], f"regenerate with `python -m service.pb.generate`: {stale} differ"
