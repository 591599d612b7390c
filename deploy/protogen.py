"""Generates the Python of every proto under ``protos/`` next to its source.

``python -m deploy.protogen`` writes ``<api>_pb2.py``, ``<api>_pb2.pyi`` and
``<api>_pb2_grpc.py`` beside each ``protos/mailplane/<api>/v1/<api>.proto``, so the
modules import as ``mailplane.<api>.v1.<api>_pb2`` (``protos/`` is on the path of the
project's environment). The generated files are not committed; ``make`` regenerates
them whenever a proto changes.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent.parent / "protos"
#: Every proto with its comments, as a FileDescriptorSet, beside the sources.
DESCRIPTOR_SET = "mailplane/descriptors.binpb"


def main() -> int:
    """Runs protoc over every ``.proto`` file; returns protoc's exit code."""
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={PROTO_ROOT}",
        f"--pyi_out={PROTO_ROOT}",
        f"--grpc_python_out={PROTO_ROOT}",
        # The comments, for the gateway's OpenAPI descriptions (gateway.codec.comments).
        f"--descriptor_set_out={PROTO_ROOT / DESCRIPTOR_SET}",
        "--include_source_info",
        "--include_imports",
        *sources,
    ]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
