"""Write the JSON Schema files for producer teams: ``python -m schemas [--check]``."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from pydantic import BaseModel

from schemas.contract import SCHEMA_FILES, file_schema

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
MODELS: dict[str, type[BaseModel]] = {name: model for model, name in SCHEMA_FILES.items()}


def render(model: type[BaseModel]) -> bytes:
    """The committed JSON Schema text of ``model`` (:func:`schemas.contract.file_schema`)."""
    schema = file_schema(model)
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) every schema file; 1 when stale."""
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    stale = []
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, model in MODELS.items():
        path = SCHEMA_DIR / name
        text = render(model)
        if check:
            if not path.exists() or path.read_bytes() != text:
                stale.append(name)
        else:
            path.write_bytes(text)
            print(f"wrote {path}")
    if stale:
        print("stale JSON Schema files (run `python -m schemas`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
