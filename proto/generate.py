"""Regenerate the committed gRPC stubs from ``fedtune.proto``.

Run ``python -m fedtune.proto.generate`` after editing the ``.proto`` file. The stubs are
generated with the exact ``grpcio-tools`` pinned in the ``test`` extra; ``tests/test_proto_stubs.py``
regenerates into a temporary folder and fails when the committed files differ.

protoc names imports after the source's path, so the source is staged as
``fedtune/proto/fedtune.proto`` in a scratch folder: the generated ``_pb2_grpc`` then imports
``from fedtune.proto import fedtune_pb2``, which is where the package lives once installed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCE = PROTO_DIR / "fedtune.proto"
GENERATED = ("fedtune_pb2.py", "fedtune_pb2_grpc.py", "fedtune_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Generate the stubs into ``out_dir`` and return their paths."""
    from grpc_tools import protoc  # a test/dev dependency, imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        staged = Path(scratch) / "fedtune" / "proto"
        staged.mkdir(parents=True)
        shutil.copy(SOURCE, staged / SOURCE.name)
        out = Path(scratch) / "out"
        out.mkdir()
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{scratch}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(staged / SOURCE.name),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        paths = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copy(out / "fedtune" / "proto" / name, target)
            paths.append(target)
    return paths


if __name__ == "__main__":
    for path in generate(PROTO_DIR):
        print(f"wrote {path}", file=sys.stderr)
