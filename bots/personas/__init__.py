"""Persona files: the demo world's personas live here as YAML, one file per persona.

A persona file is a YAML mapping that validates as :class:`backend.schemas.Persona`.
A file with an error is refused with its file name, the field and the reason::

    bots/personas/ayse.yaml: style.emoji_rate: Input should be less than or equal to 3
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from backend.errors import PersonaFileError
from backend.schemas import Persona

DEMO_DIR = Path(__file__).parent


def parse_persona(text: str, *, source: str) -> Persona:
    """Parse and validate persona YAML ``text``.

    Args:
        text: the YAML document.
        source: the file name (or other origin) used in error messages.

    Raises:
        PersonaFileError: naming ``source``, each bad field (dotted path) and why.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PersonaFileError(source, [(where, f"not valid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise PersonaFileError(
            source, [("(file)", f"expected a mapping of fields, got {type(data).__name__}")]
        )
    try:
        return Persona.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(p) for p in err["loc"]) or "(file)", err["msg"]) for err in exc.errors()
        ]
        raise PersonaFileError(source, problems) from None


def load_persona_file(path: Path) -> Persona:
    """Read and validate one persona file.

    Raises:
        PersonaFileError: when the file cannot be read or does not validate.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonaFileError(str(path), [("(file)", f"cannot be read: {exc}")]) from None
    return parse_persona(text, source=str(path))


def load_persona_dir(directory: Path = DEMO_DIR) -> list[Persona]:
    """Load every ``*.yaml`` persona in ``directory``, sorted by file name.

    Raises:
        PersonaFileError: for the first bad file, or when two files share a username.
    """
    personas: list[Persona] = []
    seen: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        persona = load_persona_file(path)
        key = persona.username.lower()
        if key in seen:
            raise PersonaFileError(
                str(path), [("username", f"{persona.username!r} is also used by {seen[key].name}")]
            )
        seen[key] = path
        personas.append(persona)
    return personas
