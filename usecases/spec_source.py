"""The `spec` a flow run is given: the experiment YAML itself, or a path the worker can read.
One clear message when it is neither, naming what was given."""

from __future__ import annotations

from pathlib import Path

from airavata_prefect.domain.problems import Problem, SpecError
from airavata_prefect.domain.spec import LoadedSpec, parse_spec_text

MAX_SPEC_BYTES = 4 * 1024 * 1024  # an experiment is text a person wrote, not data


def is_yaml_text(spec: str) -> bool:
    """YAML text has a line break or a mapping colon; a path has neither (or names a file)."""
    text = spec.strip()
    return "\n" in text or (": " in text and not Path(text).exists()) or text.startswith("{")


def read_spec(spec: str, *, name: str = "") -> LoadedSpec:
    """Parse `spec`; raises SpecError (every problem located) for bad YAML, or one problem for
    a path that cannot be read on this host."""
    if not spec.strip():
        raise SpecError([Problem("empty: give the experiment YAML, or a path the worker can "
                                 "read", (), "spec")])
    if len(spec.encode()) > MAX_SPEC_BYTES:
        raise SpecError([Problem(f"larger than {MAX_SPEC_BYTES // 1024 // 1024} MiB", (),
                                 "spec")])
    if is_yaml_text(spec):
        loaded = parse_spec_text(spec, "spec")
        source = "spec"
    else:
        path = Path(spec.strip()).expanduser()
        where = f"{path} (on the worker's host)"
        if path.is_dir():
            raise SpecError([Problem("is a directory, not an experiment YAML", (), where)])
        try:
            if path.stat().st_size > MAX_SPEC_BYTES:
                raise SpecError([Problem(
                    f"larger than {MAX_SPEC_BYTES // 1024 // 1024} MiB", (), where)])
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError([Problem("no such file; pass the YAML text itself, or a path "
                                     "the worker can read", (), where)]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError([Problem(f"cannot read: {exc}", (), where)]) from None
        loaded = parse_spec_text(text, str(path))
        source = str(path)
    if name:
        loaded = LoadedSpec(loaded.spec, source, loaded.text, name, loaded.located)
    return loaded


__all__ = ["MAX_SPEC_BYTES", "is_yaml_text", "read_spec"]
