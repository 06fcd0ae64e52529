"""Sweep expansion, foreach, references and barriers; row-major order as a property."""

from __future__ import annotations

import itertools
import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st

from airavata_prefect.domain.compile import compile_graph
from airavata_prefect.domain.dag import TaskGraph
from airavata_prefect.domain.spec import load_spec, parse_spec_text
from tests.conftest import SAMPLE


def graph_of(text: str, overrides: dict | None = None) -> TaskGraph:
    return compile_graph(parse_spec_text(textwrap.dedent(text), "t.yml"), overrides, root="/w")


def test_sample_expands_as_airavata_does() -> None:
    g = compile_graph(load_spec(SAMPLE), root="/runs/e1")
    assert g.total == 1000
    assert [(s.name, s.count) for s in g.steps] == [("task1", 500), ("task2", 500)]
    t0, t1, t100 = (g.instance("task1", i) for i in (0, 1, 100))
    assert (t0.env["MESSAGE"], t0.env["SLEEP_TIME"]) == ("hello", "1")
    assert (t1.env["MESSAGE"], t1.env["SLEEP_TIME"]) == ("hello", "2")
    assert (t100.env["MESSAGE"], t100.env["SLEEP_TIME"]) == ("this", "1")
    assert t0.env["OUTPUT_FILE"] == "/runs/e1/task1/0/output.1.txt"  # the output beats the param
    for i in (0, 1, 100, 499):
        child = g.instance("task2", i)
        assert child.depends_on == (f"task1[{i}]",)
        assert child.env["INPUT_FILE"] == g.instance("task1", i).outputs["OUTPUT_FILE"]
        assert child.env["INPUT_FILE"].endswith("output.1.txt")
        assert child.env["OUTPUT_FILE"] == f"/runs/e1/task2/{i}/output.2.txt"
        assert child.env["MESSAGE"] == "hello world"  # parameters reach every instance
    assert list(g.iter_instances()) == [g.instance(i.step, i.index) for i in g.iter_instances()]


def test_zip_pairs_inputs() -> None:
    g = graph_of("""\
        tasks:
          a:
            command: echo
            sweep: zip
            task_inputs: {X: [1, 2, 3], Y: 10..30..10, Z: const}
        """)
    got = [(i.env["X"], i.env["Y"], i.env["Z"]) for i in g.iter_instances()]
    assert got == [("1", "10", "const"), ("2", "20", "const"), ("3", "30", "const")]


def test_foreach_over_two_steps_is_their_product_then_own_sweep() -> None:
    g = graph_of("""\
        tasks:
          a: {command: echo, task_inputs: {X: [1, 2]}, task_outputs: {O: a.txt}}
          b: {command: echo, task_inputs: {Y: [1, 2, 3]}, task_outputs: {O: b.txt}}
          c:
            command: echo
            foreach: [a, b]
            task_inputs: {IN: "${a.O}+${b.O}", K: [p, q]}
        """)
    c = g.by_name["c"]
    assert c.count == 2 * 3 * 2
    i5 = g.instance("c", 5)  # (a=0, b=2, K=q)
    assert i5.depends_on == ("a[0]", "b[2]")
    assert i5.env["IN"] == "/w/a/0/a.txt+/w/b/2/b.txt"
    assert i5.env["K"] == "q"
    assert g.instance("c", 6).depends_on == ("a[1]", "b[0]")


def test_depends_on_is_a_barrier_and_single_instance_refs_resolve() -> None:
    g = graph_of("""\
        tasks:
          prep: {command: echo, task_outputs: {DATA: data.csv}}
          sim: {command: echo, task_inputs: {N: 1..3, IN: "${prep.DATA}"}, depends_on: [prep]}
          report: {command: echo, depends_on: [sim]}
        """)
    assert g.instance("sim", 2).env["IN"] == "/w/prep/0/data.csv"
    assert g.instance("sim", 2).depends_on == ("prep[0]", "prep[*]")
    assert g.instance("report", 0).depends_on == ("sim[*]",)
    assert [s.name for s in g.steps] == ["prep", "sim", "report"]


def test_parameters_overrides_and_interpolation() -> None:
    text = """\
        parameters:
          N: {type: int, default: 2}
          FLAG: {type: bool, default: false}
          NAME: {type: string, default: run}
        tasks:
          a:
            command: echo
            task_inputs: {LABEL: "${NAME}-x-$${HOME}", N: 7}
        """
    g = graph_of(text, {"N": "5", "FLAG": "yes", "NAME": "exp"})
    env = g.instance("a", 0).env
    assert env["N"] == "7"  # a task's own input beats the parameter and its override
    assert env["FLAG"] == "true"
    assert env["LABEL"] == "exp-x-${HOME}"  # `$$` escapes a literal dollar


def test_outputs_are_inside_each_instance_directory() -> None:
    g = graph_of("tasks:\n  a: {command: echo, task_outputs: {O: sub/out.txt, P: p.txt}, "
                 "task_inputs: {X: 1..2}}\n")
    assert g.instance("a", 1).outputs == {"O": f"{g.root}/a/1/sub/out.txt",
                                          "P": f"{g.root}/a/1/p.txt"}


def test_huge_ranges_stay_lazy() -> None:
    g = graph_of("tasks:\n  a: {command: echo, task_inputs: {X: 1..900000}}\n")
    assert g.total == 900_000
    assert g.instance("a", 899_999).env["X"] == "900000"


axes_strategy = st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4), min_size=1,
                         max_size=3)


@settings(max_examples=60, deadline=None)
@given(axes=axes_strategy, parents=st.integers(1, 3))
def test_row_major_product_property(axes: list[list[int]], parents: int) -> None:
    inputs = ", ".join(f"K{n}: {vals}" for n, vals in enumerate(axes))
    g = graph_of(f"""\
        tasks:
          p: {{command: echo, task_inputs: {{Q: 1..{parents}}}, task_outputs: {{O: o}}}}
          c: {{command: echo, foreach: [p], task_inputs: {{{inputs}}}}}
        """)
    expected = [(pi, combo) for pi in range(parents) for combo in itertools.product(*axes)]
    got = [inst for inst in g.iter_instances() if inst.step == "c"]
    assert len(got) == g.by_name["c"].count == len(expected)
    ids = [i.id for i in g.iter_instances()]
    assert len(set(ids)) == len(ids) == g.total
    for inst, (pi, combo) in zip(got, expected, strict=True):
        assert inst == g.instance("c", inst.index)
        assert inst.depends_on == (f"p[{pi}]",)
        assert tuple(int(inst.env[f"K{n}"]) for n in range(len(axes))) == combo
