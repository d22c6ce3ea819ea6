"""Every METIS_ setting as a Markdown table: printed, or written into the README between its
`<!-- settings-table -->` markers with ``python -m metis_rag.devtools.settings_doc --write``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from metis_rag.config import Settings


def env_settings(model: type[BaseModel] = Settings, prefix: str = "METIS_") -> Iterator[
    tuple[str, Any, str]
]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from env_settings(annotation, f"{prefix}{name.upper()}__")
            continue
        default = field.default if field.default is not None else ""
        yield f"{prefix}{name.upper()}", default, field.description or ""


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, doc in env_settings():
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{env}` | {shown} | {doc} |")
    return "\n".join(rows)


START, END = "<!-- settings-table -->", "<!-- /settings-table -->"


def write_readme(readme: Path) -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else rest
    readme.write_text(f"{head}{START}\n{markdown_table()}\n{END}{tail}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme(Path(sys.argv[-1]) if sys.argv[-1].endswith(".md") else Path("README.md"))
    else:
        print(markdown_table())
