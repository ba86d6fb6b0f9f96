"""Write tests/CLAIMS.md: every test the suite collects, with the claim it checks (its docstring's first
sentence, or its name read as a sentence) and where that claim is checked now, for the claims that moved to
another test when the suite was made fast. Run from the repository root:

    python tests/list_claims.py > tests/CLAIMS.md
"""

import ast
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# claims that a test no longer checks itself, and the test that checks them now
MOVED = {
    "tests/test_recipes_doc.py::test_every_command_on_the_page_runs_on_real_layouts": (
        "the page's `python -m reproduce.ablate --smoke` runs: "
        "tests/test_ablate.py::test_the_default_grid_runs_in_smoke_mode runs that command and checks its files; "
        "the other commands run here, in chains (one case each: a command that reads a run's files in the "
        "chain that wrote them), and test_the_chains_hold_every_command_of_the_page_once checks that the "
        "chains are the page"
    ),
    "tests/test_bench.py::test_the_gpu_suite_writes_its_report_as_it_goes_so_a_section_cut_short_loses_only_itself": (
        "cuda-tests.txt says the CUDA tests passed: tests/test_bench.py::"
        "test_the_gpu_suite_dry_run_on_the_cpu_writes_its_report_with_every_target (the sections after it are "
        "checked here, with the tests' section as it ends when they pass)"
    ),
    "tests/test_bench.py::test_the_gpu_suite_starts_no_section_after_its_budget_and_says_which_it_left": (
        "the tests' section runs pytest: the dry run above"
    ),
    "tests/test_distributed.py::test_torchrun_two_cpu_processes_equal_one_process": (
        "the error columns of two processes against one: follow from the weights, compared by "
        "trajectory.moved_alike in the same test (the losses within 1% a step there too)"
    ),
    "tests/test_two_tower.py::test_training_with_two_gpu_on_cpu_equals_the_grouped_net": (
        "the error columns of the towers against the grouped net: follow from the weights, compared by "
        "trajectory.moved_alike in the same test (the losses within 1% a step there too)"
    ),
}


def claims(root):
    found = {}
    for name in sorted(os.listdir(os.path.join(root, "tests"))):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        with open(os.path.join(root, "tests", name), encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node)
                found[(name, node.name)] = " ".join(doc.split()).split(". ")[0] if doc else None
    return found


def main():
    root = os.path.dirname(HERE)
    ids = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    # by file (slow ones run first)
    ids = sorted((i for i in ids if "::" in i), key=lambda i: i.split("::")[0])
    docs = claims(root)
    print("# Every test and the claim it checks\n")
    print(
        "Written by `python tests/list_claims.py > tests/CLAIMS.md`. A claim that moved to another test"
    )
    print("says where it is checked now.\n")
    for test in ids:
        path, name = test.split("::", 1)
        base = name.split("[", 1)[0]
        doc = docs.get((os.path.basename(path), base))
        line = base[len("test_") :].replace("_", " ") + (f" ({doc})" if doc else "")
        if "[" in name:
            line += " — case " + name[name.index("[") :]
        moved = MOVED.get(f"{path}::{base}")
        print(f"- `{test}`: {line}" + (f". Moved: {moved}" if moved else ""))


if __name__ == "__main__":
    main()
