"""The `spec` a flow run is given: the experiment YAML itself, a path the worker can read, or
`STORAGE:/path` on a registered storage resource (read as the acting identity: `storage.read`
on the resource, `credential.read` on its credential, audited). One clear message when it is
none of these, naming what was given."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from airavata_prefect.adapters.storage import StorageError
from airavata_prefect.domain.problems import Problem, SpecError
from airavata_prefect.domain.spec import LoadedSpec, parse_spec_text
from airavata_prefect.usecases.context import Context
from airavata_prefect.usecases.errors import Unavailable

MAX_SPEC_BYTES = 4 * 1024 * 1024  # an experiment is text a person wrote, not data


def is_yaml_text(spec: str) -> bool:
    """YAML text has a line break or a mapping colon; a path has neither (or names a file)."""
    text = spec.strip()
    return "\n" in text or (": " in text and not Path(text).exists()) or text.startswith("{")


ON_STORAGE = re.compile(r"^([a-z0-9][a-z0-9-]{0,62}):(/\S*)$")


def _from_storage(ctx: Context, storage: str, path: str) -> str:
    from airavata_prefect.usecases.data import open_storage

    where = f"{storage}:{path}"
    try:
        reader = open_storage(ctx, storage, "storage.read")
    except Unavailable as exc:
        raise SpecError([Problem(str(exc), (), where)]) from None
    with tempfile.TemporaryDirectory(prefix="airavata-spec-") as tmp:
        try:
            count = reader.fetch(path.lstrip("/"), Path(tmp))
        except (StorageError, OSError) as exc:
            raise SpecError([Problem(f"cannot read: {exc}", (), where)]) from None
        files = [f for f in Path(tmp).rglob("*") if f.is_file()]
        if count != 1 or len(files) != 1 or files[0].name != Path(path).name:
            raise SpecError([Problem("is a directory, not an experiment YAML", (), where)])
        if files[0].stat().st_size > MAX_SPEC_BYTES:
            raise SpecError([Problem(f"larger than {MAX_SPEC_BYTES // 1024 // 1024} MiB", (),
                                     where)])
        try:
            return files[0].read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError([Problem(f"cannot read: {exc}", (), where)]) from None


def read_spec(spec: str, *, name: str = "", ctx: Context | None = None, paths: bool = True
              ) -> LoadedSpec:
    """Parse `spec`; raises SpecError (every problem located) for bad YAML, or one problem for
    a path or storage file that cannot be read. `paths=False` (the REST API): a local path is
    refused, never read on the server's behalf."""
    if not spec.strip():
        raise SpecError([Problem("empty: give the experiment YAML, or a path the worker can "
                                 "read", (), "spec")])
    if len(spec.encode()) > MAX_SPEC_BYTES:
        raise SpecError([Problem(f"larger than {MAX_SPEC_BYTES // 1024 // 1024} MiB", (),
                                 "spec")])
    stored = ON_STORAGE.match(spec.strip())
    if is_yaml_text(spec):
        loaded = parse_spec_text(spec, "spec")
        source = "spec"
    elif stored and ctx is not None and not Path(spec.strip()).exists():
        source = spec.strip()
        loaded = parse_spec_text(_from_storage(ctx, stored[1], stored[2]), source)
    elif not paths:
        raise SpecError([Problem("give the experiment's YAML text (or STORAGE:/path on a "
                                 "registered storage); paths on the server are not read",
                                 (), "spec")])
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
