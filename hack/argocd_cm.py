"""Print an argocd-cm ConfigMap patch built from charts/argocd/resource_customizations.

Argo CD reads custom health checks and actions from `resource.customizations.health.<group>_<kind>`
and `resource.customizations.actions.<group>_<kind>` keys; the scripts are copied verbatim, as
literal blocks, so the files stay the one source (and keep their own tests). Standard library
only, so it runs with any python3, even before the project's venv exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "charts/argocd/resource_customizations"


def block(text: str, indent: int) -> str:
    """`text` as the body of a YAML literal block (`|`), indented by `indent` spaces."""
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def actions(folder: Path) -> str:
    """The value of an actions key: discovery.lua plus one definition per actions/<name>/."""
    definitions = "".join(
        f"- name: {script.parent.name}\n  action.lua: |\n{block(script.read_text(), 4)}"
        for script in sorted(folder.glob("*/action.lua"))
    )
    return (
        f"discovery.lua: |\n{block((folder / 'discovery.lua').read_text(), 2)}"
        f"definitions:\n{definitions}"
    )


def patch(root: Path) -> str:
    lines = ["data:\n"]
    for kind_folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
        key = f"{kind_folder.parent.name}_{kind_folder.name}"
        health = kind_folder / "health.lua"
        if health.is_file():
            lines.append(
                f"  resource.customizations.health.{key}: |\n{block(health.read_text(), 4)}"
            )
        if (kind_folder / "actions/discovery.lua").is_file():
            value = actions(kind_folder / "actions")
            lines.append(f"  resource.customizations.actions.{key}: |\n{block(value, 4)}")
    return "".join(lines)


if __name__ == "__main__":
    sys.stdout.write(patch(ROOT))
