"""The generated protobuf code committed in service/pb is up to date with protos/."""

from __future__ import annotations

from pathlib import Path

import service.pb
from service.pb.generate import PROTOS, generate

COMMITTED = Path(service.pb.__file__).resolve().parent


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    """Regenerating from protos/ yields exactly the committed *_pb2.py and *_pb2.pyi files,
    byte for byte: nobody edited a .proto without regenerating, or edited generated code."""
    generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in COMMITTED.glob("*_pb2.py*")}
    expected = {
        f"{proto.stem}_pb2{ext}" for proto in PROTOS.glob("*.proto") for ext in (".py", ".pyi")
    }
    assert set(fresh) == expected, sorted(fresh)
    assert set(committed) == expected, sorted(committed)
    stale = sorted(name for name in expected if fresh[name] != committed[name])
    assert stale == [], f"regenerate with `python -m service.pb.generate`: {stale} differ"
