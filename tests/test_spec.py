"""The experiment spec: the peer's sample, and every kind of bad input with its location."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.problems import SpecError
from airavata_prefect.domain.spec import load_spec, parse_duration, parse_spec_text
from tests.conftest import PEER_SAMPLE, SAMPLE


def problems_of(text: str, overrides: dict | None = None, **kw: object) -> list[str]:
    with pytest.raises(SpecError) as info:
        loaded = parse_spec_text(textwrap.dedent(text), "exp.yml")
        compile_graph(loaded, overrides, root="/w", **kw)  # type: ignore[arg-type]
    return [p.render() for p in info.value.problems]


def test_bundled_sample_is_the_peers_sample() -> None:
    if PEER_SAMPLE.exists():  # beside a checkout with shared/; CI has it
        assert SAMPLE.read_text() == PEER_SAMPLE.read_text()
    spec = load_spec(SAMPLE).spec
    assert set(spec.tasks) == {"task1", "task2"}
    assert spec.parameters["SLEEP_TIME"].type == "int"
    assert spec.resources.compute is not None and spec.resources.compute.cpu == 16
    assert spec.tasks["task2"].foreach == ["task1"]


def test_durations() -> None:
    assert parse_duration("0:05:00") == 300
    assert parse_duration("1-02:00:01") == 93601
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration("5 minutes")


def test_malformed_yaml_points_at_the_line() -> None:
    got = problems_of("tasks:\n  a:\n    command: [unclosed\n")
    assert len(got) == 1
    assert got[0].startswith("exp.yml:4:1: error: <document>: malformed YAML")


def test_unknown_key_is_located_at_the_key() -> None:
    got = problems_of("""\
        tasks:
          a:
            command: echo
            retires: 3
        """)
    assert got == ["exp.yml:4:5: error: tasks.a.retires: unknown key 'retires'"]


def test_wrong_type_is_located_at_the_value() -> None:
    got = problems_of("""\
        tasks:
          a:
            command: echo
            retries: many
        """)
    assert len(got) == 1
    assert got[0].startswith("exp.yml:4:14: error: tasks.a.retries: input should be a valid "
                             "integer")
    assert "'many'" in got[0]


def test_all_problems_at_once_in_file_order() -> None:
    got = problems_of("""\
        scripts:
          S: echo
        tasks:
          a:
            script: MISSING
            task_inputs:
              N: 5..1
          b:
            command: echo
            foreach: [a, nope]
            task_inputs:
              X: "${a.NOPE}"
              Y: "${UNDEFINED}"
          c:
            command: echo
            depends_on: [c]
        """)
    assert got == [
        "exp.yml:5:13: error: tasks.a.script: unknown script 'MISSING' (scripts: S)",
        "exp.yml:7:10: error: tasks.a.task_inputs.N: bad range '5..1': needs a <= b and "
        "step > 0",
        "exp.yml:10:18: error: tasks.b.foreach[1]: unknown task 'nope'",
        "exp.yml:12:10: error: tasks.b.task_inputs.X: undefined reference ${a.NOPE}: task 'a' "
        "has no output 'NOPE' (outputs: none)",
        "exp.yml:13:10: error: tasks.b.task_inputs.Y: undefined reference ${UNDEFINED}: no "
        "parameter 'UNDEFINED' (a task output is ${task.OUTPUT})",
        "exp.yml:16:18: error: tasks.c.depends_on[0]: task 'c' cannot depend on itself",
    ]


def test_dependency_cycle_is_printed() -> None:
    got = problems_of("""\
        tasks:
          a: {command: echo, depends_on: [c]}
          b: {command: echo, foreach: [a]}
          c: {command: echo, depends_on: [b]}
        """)
    assert got == ["exp.yml:2:6: error: tasks.a: dependency cycle: a -> c -> b -> a"]


@pytest.mark.parametrize(("value", "message"), [
    ('"1..x"', "bad range '1..x': expected a..b or a..b..step with integers"),
    ('"1..10..0"', "bad range '1..10..0': needs a <= b and step > 0"),
    ("[]", "an input list must not be empty"),
])
def test_bad_inputs(value: str, message: str) -> None:
    got = problems_of(f"tasks:\n  a:\n    command: echo\n    task_inputs:\n      N: {value}\n")
    assert got == [f"exp.yml:5:10: error: tasks.a.task_inputs.N: {message}"]


def test_expansion_over_the_limit() -> None:
    got = problems_of("""\
        tasks:
          a:
            command: echo
            task_inputs: {X: 1..1000, Y: 1..1000, Z: 1..1000}
        """, max_instances=1_000_000)
    assert got == ["exp.yml:3:5: error: tasks.a: expands to 1,000,000,000 instances "
                   "(1,000,000,000 so far), over the limit of 1,000,000 "
                   "(AIRAVATA_MAX_INSTANCES or --max-instances)"]


def test_limit_counts_the_whole_graph() -> None:
    got = problems_of("""\
        tasks:
          a: {command: echo, task_inputs: {X: 1..6}}
          b: {command: echo, foreach: [a]}
        """, max_instances=10)
    assert len(got) == 1 and "tasks.b: expands to 6 instances (12 so far)" in got[0]


def test_duplicate_keys_are_errors() -> None:
    got = problems_of("tasks:\n  a: {command: echo}\n  a: {command: 'true'}\n")
    assert got == ["exp.yml:3:3: error: tasks.a: duplicate key 'a'"]


def test_script_and_command_are_exclusive_and_required() -> None:
    got = problems_of("scripts: {S: echo}\ntasks:\n  a: {script: S, command: echo}\n  b: {}\n")
    assert got == [
        "exp.yml:3:6: error: tasks.a: give exactly one of 'script' or 'command'",
        "exp.yml:4:6: error: tasks.b: give exactly one of 'script' or 'command'",
    ]


def test_bad_parameter_default_and_override() -> None:
    text = """\
        parameters:
          N: {type: int, default: ten}
          F: {type: float, default: 1.5}
        tasks:
          a: {command: echo}
        """
    assert problems_of(text) == [
        "exp.yml:2:27: error: parameters.N.default: expected an int, got 'ten'"]
    got = problems_of(text, {"N": "3", "F": "x", "G": "1"})
    assert got == ["--param F: error: <document>: F: expected a float, got 'x'",
                   "--param G: error: <document>: unknown parameter 'G' (parameters: N, F)"]


def test_missing_parameter_value() -> None:
    got = problems_of("parameters:\n  N: {type: int}\ntasks:\n  a: {command: echo}\n")
    assert got == ["exp.yml:2:6: error: parameters.N: parameter 'N' has no default: pass "
                   "--param N=VALUE"]


def test_typed_task_inputs_follow_their_parameter() -> None:
    got = problems_of("""\
        parameters:
          N: {type: int, default: 1}
        tasks:
          a:
            command: echo
            task_inputs:
              N: [1, two, 3]
        """)
    assert got == ["exp.yml:7:14: error: tasks.a.task_inputs.N[1]: expected an int, got 'two'"]


def test_multi_instance_reference_needs_foreach() -> None:
    got = problems_of("""\
        tasks:
          a: {command: echo, task_inputs: {X: [1, 2]}, task_outputs: {O: o.txt}}
          b: {command: echo, depends_on: [a], task_inputs: {I: "${a.O}"}}
        """)
    assert got == ["exp.yml:3:6: error: tasks.b.foreach: ${a...} is used but 'a' has 2 "
                   "instances: add 'a' to foreach"]


def test_bad_storage_mount() -> None:
    got = problems_of("""\
        tasks:
          a:
            command: echo
            resources:
              storage: ["no-colons"]
        """)
    assert got == ["exp.yml:5:16: error: tasks.a.resources.storage: expected "
                   "'storage-resource:/remote/path:./local/path', got 'no-colons'"]


def test_input_names_must_be_environment_names() -> None:
    got = problems_of("tasks:\n  a:\n    command: echo\n    task_inputs: {\"bad-name\": 1}\n")
    assert got == ["exp.yml:4:19: error: tasks.a.task_inputs.bad-name: input name 'bad-name' "
                   "is not a valid environment variable name"]


def test_empty_and_non_mapping_documents() -> None:
    assert problems_of("") == ["exp.yml:1:1: error: <document>: the document is empty"]
    assert problems_of("- a\n- b\n") == [
        "exp.yml:1:1: error: <document>: the document must be a mapping"]
    assert problems_of("name: x\n") == [
        "exp.yml:1:1: error: <document>: missing required key 'tasks'"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yml")
    assert info.value.problems[0].render() == f"{tmp_path / 'nope.yml'}: error: <document>: " \
                                              "no such file"


@pytest.mark.parametrize(("outputs", "message"), [
    ('{OUT: "../../../../x"}', "output OUT '../../../../x' must not leave the task's directory "
                               "('..')"),
    ('{OUT: "/tmp/x"}', "output OUT '/tmp/x' must be a relative path inside the task's "
                        "directory"),
    ('{OUT: "~/x"}', "output OUT '~/x' must be a relative path inside the task's directory"),
    ('{OUT: "a/../../x"}', "output OUT 'a/../../x' must not leave the task's directory ('..')"),
    ('{OUT: ""}', "output OUT '' must be a relative path inside the task's directory"),
])
def test_outputs_stay_inside_the_task_directory(outputs: str, message: str) -> None:
    got = problems_of(f"tasks:\n  a:\n    command: echo\n    task_outputs: {outputs}\n")
    assert got == [f"exp.yml:4:19: error: tasks.a.task_outputs: {message}"]


def test_mount_targets_stay_inside_the_task_directory() -> None:
    got = problems_of("""\
        tasks:
          a:
            command: echo
            resources:
              storage: ["s3:/data:../../etc", "s3:/data:/abs", "s3:/data:./in/ok"]
        """)
    assert got == [
        "exp.yml:5:16: error: tasks.a.resources.storage: mount target '../../etc' must not "
        "leave the task's directory ('..')"]
    ok = parse_spec_text("tasks:\n  a: {command: echo, task_outputs: {O: sub/dir/o.txt}, "
                         "resources: {storage: ['s3:/d:./in/ok']}}\n", "exp.yml")
    assert ok.spec.tasks["a"].task_outputs == {"O": "sub/dir/o.txt"}
