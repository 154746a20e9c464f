"""Check a RELION 4/5 Scheme directory (scheme.star + one job.star per job) against RELION-5's
Schemer, and run it in a small emulator of the Schemer's loop: no RELION binaries needed.

The facts below were read in RELION's source (3dem/relion; cited per fact, listed in
schemes/README.md). Nothing here is RELION code; the emulator follows the behaviour described.
"""

from __future__ import annotations

import os
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "schemes"))
import relion_it_snippet as snippet  # noqa: E402
from ranker.runtime.star import read_star  # noqa: E402

# src/schemer.cpp Scheme::read / Scheme::write, labels from src/metadata_label.h (EMDL_SCHEME_*)
TABLES = {
    "scheme_general": ["rlnSchemeName", "rlnSchemeCurrentNodeName"],
    "scheme_floats": ["rlnSchemeFloatVariableName", "rlnSchemeFloatVariableValue", "rlnSchemeFloatVariableResetValue"],
    "scheme_bools": ["rlnSchemeBooleanVariableName", "rlnSchemeBooleanVariableValue",
                     "rlnSchemeBooleanVariableResetValue"],
    "scheme_strings": ["rlnSchemeStringVariableName", "rlnSchemeStringVariableValue",
                       "rlnSchemeStringVariableResetValue"],
    "scheme_operators": ["rlnSchemeOperatorName", "rlnSchemeOperatorType", "rlnSchemeOperatorOutput",
                         "rlnSchemeOperatorInput1", "rlnSchemeOperatorInput2"],
    "scheme_jobs": ["rlnSchemeJobNameOriginal", "rlnSchemeJobName", "rlnSchemeJobMode", "rlnSchemeJobHasStarted"],
    "scheme_edges": ["rlnSchemeEdgeInputNodeName", "rlnSchemeEdgeOutputNodeName", "rlnSchemeEdgeIsFork",
                     "rlnSchemeEdgeOutputNodeNameIfTrue", "rlnSchemeEdgeBooleanVariable"],
}

# src/schemer.h: SCHEME_BOOLEAN_OPERATOR_*, SCHEME_FLOAT_OPERATOR_*, SCHEME_STRING_OPERATOR_*, SCHEME_OPERATOR_*
BOOL_OPS = {"bool=set", "bool=and", "bool=or", "bool=not", "bool=gt", "bool=lt", "bool=ge", "bool=le", "bool=eq",
            "bool=file_exists", "bool=read_star"}
FLOAT_OPS = {"float=set", "float=plus", "float=minus", "float=mult", "float=divide", "float=round",
             "float=count_images", "float=count_words", "float=read_star", "float=star_table_max",
             "float=star_table_min", "float=star_table_avg", "float=star_table_max_idx", "float=star_table_min_idx",
             "float=star_table_sort_idx"}
STRING_OPS = {"string=set", "string=join", "string=before_first", "string=after_first", "string=before_last",
              "string=after_last", "string=read_star", "string=glob", "string=nth_word"}
OTHER_OPS = {"touch_file", "copy_file", "move_file", "delete_file", "wait", "email", "exit_maxtime", "exit"}
OPERATOR_TYPES = BOOL_OPS | FLOAT_OPS | STRING_OPS | OTHER_OPS

# src/schemer.cpp SchemerOperator::initialise: the variable kind each argument must be. The Schemer
# constructs every operator while reading scheme.star and stops with REPORT_ERROR if one is wrong.
OUTPUT_KIND = {**{t: "bool" for t in BOOL_OPS - {"bool=not"}},
               **{t: "float" for t in FLOAT_OPS - {"float=star_table_max_idx", "float=star_table_min_idx"}},
               **{t: "string" for t in STRING_OPS}}
INPUT1_KIND = {"bool=set": "bool", "bool=and": "bool", "bool=or": "bool",
               "float=set": "float", "float=plus": "float", "float=minus": "float", "float=mult": "float",
               "float=divide": "float", "float=round": "float", "exit_maxtime": "float",
               **{t: "string" for t in {"bool=read_star", "bool=file_exists", "float=count_images",
                                        "float=count_words", "float=read_star", "float=star_table_max",
                                        "float=star_table_min", "float=star_table_avg", "float=star_table_sort_idx",
                                        "touch_file", "copy_file", "move_file", "delete_file"} | STRING_OPS}}
INPUT2_KIND = {"bool=and": "bool", "bool=or": "bool",
               **{t: "number" for t in ("bool=gt", "bool=lt", "bool=eq", "bool=ge", "bool=le", "float=plus",
                                        "float=minus", "float=mult", "float=divide", "float=star_table_sort_idx",
                                        "string=nth_word")},
               **{t: "string" for t in ("copy_file", "move_file", "string=before_first", "string=after_first",
                                        "string=before_last", "string=after_last", "string=join")}}
# ... and SchemerOperator::performOperation reads a numeric input2 as
#     val2 = isFloatVariable(input2) ? value : 0
# so a number written in input2 passes initialise but counts as 0: we require a float variable.
# Operators whose input1 performOperation reads as a float/bool variable without initialise checking it:
INPUT1_READ_AS = {"bool=not": "bool", "bool=gt": "float", "bool=lt": "float", "bool=eq": "float",
                  "bool=ge": "float", "bool=le": "float", "wait": "float"}

# src/schemer.h SCHEME_NODE_JOB_MODE_NEW / _CONTINUE (relion_schemer --set_job_mode accepts only these)
JOB_MODES = {"new", "continue"}

# src/pipeline_jobs.cpp (RELION 4/5): RelionJob::initialise adds the running options, then
# initialiseClass2DJob / initialiseExternalJob the job's own. RelionJob::read ignores unknown
# options with a warning; we require known ones.
RUNNING_OPTIONS = {"nr_mpi", "nr_threads", "do_queue", "queuename", "qsub", "qsubscript", "min_dedicated",
                   "other_args"}
JOB_OPTIONS = {
    "relion.class2d": RUNNING_OPTIONS | {
        "fn_img", "fn_cont", "do_ctf_correction", "ctf_intact_first_peak", "nr_classes", "tau_fudge", "do_em",
        "nr_iter_em", "do_grad", "nr_iter_grad", "particle_diameter", "do_zero_mask", "highres_limit", "do_center",
        "dont_skip_align", "psi_sampling", "offset_range", "offset_step", "allow_coarser", "do_helix",
        "helical_tube_outer_diameter", "do_bimodal_psi", "range_psi", "do_restrict_xoff", "helical_rise", "nr_pool",
        "do_parallel_discio", "do_preread_images", "scratch_dir", "do_combine_thru_disc", "use_gpu", "gpu_ids"},
    "relion.external": (RUNNING_OPTIONS - {"nr_mpi"}) | {
        "fn_exe", "in_mov", "in_mic", "in_part", "in_coords", "in_3dref", "in_mask",
        *(f"param{i}_{kind}" for i in range(1, 11) for kind in ("label", "value"))},
}
# option kinds that matter to prepareJob's $$ rules (pipeline_jobs.cpp constructors)
BOOLEAN_OPTIONS = {"do_ctf_correction", "ctf_intact_first_peak", "do_em", "do_grad", "do_zero_mask", "do_center",
                   "dont_skip_align", "allow_coarser", "do_helix", "do_bimodal_psi", "do_restrict_xoff",
                   "do_parallel_discio", "do_preread_images", "do_combine_thru_disc", "use_gpu", "do_queue"}
SLIDER_OPTIONS = {"nr_classes", "tau_fudge", "nr_iter_em", "nr_iter_grad", "particle_diameter", "highres_limit",
                  "psi_sampling", "offset_range", "offset_step", "helical_tube_outer_diameter", "range_psi",
                  "helical_rise", "nr_pool", "nr_mpi", "nr_threads", "min_dedicated"}
# input-node options: RELION registers their value as a pipeline node (PipeLine::addNode ->
# touchTemporaryNodeFile -> touch() of .Nodes/<type>/<value>, src/pipeliner.cpp, src/filename.cpp),
# which fails for a directory; they must name files
INPUT_NODE_OPTIONS = {"fn_img", "in_mov", "in_mic", "in_part", "in_coords", "in_3dref", "in_mask"}


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load(scheme_dir: str) -> dict:
    """scheme.star as plain Python: name, current node, variables, operators, jobs, edges."""
    blocks = read_star(os.path.join(scheme_dir, "scheme.star"))
    general = blocks["scheme_general"]

    def rows(name):
        return [dict(zip(blocks[name].labels, row)) for row in blocks[name].rows] if name in blocks else []

    return {
        "blocks": {name: list(b.labels) for name, b in blocks.items()},
        "name": general.value("rlnSchemeName"),
        "current": general.value("rlnSchemeCurrentNodeName"),
        "floats": {r["rlnSchemeFloatVariableName"]: (float(r["rlnSchemeFloatVariableValue"]),
                                                    float(r["rlnSchemeFloatVariableResetValue"]))
                   for r in rows("scheme_floats")},
        "bools": {r["rlnSchemeBooleanVariableName"]: (r["rlnSchemeBooleanVariableValue"],
                                                     r["rlnSchemeBooleanVariableResetValue"])
                  for r in rows("scheme_bools")},
        "strings": {r["rlnSchemeStringVariableName"]: (r["rlnSchemeStringVariableValue"],
                                                      r["rlnSchemeStringVariableResetValue"])
                    for r in rows("scheme_strings")},
        "operators": {r["rlnSchemeOperatorName"]: (r["rlnSchemeOperatorType"], r["rlnSchemeOperatorInput1"],
                                                  r["rlnSchemeOperatorInput2"], r["rlnSchemeOperatorOutput"])
                      for r in rows("scheme_operators")},
        "jobs": {r["rlnSchemeJobNameOriginal"]: (r["rlnSchemeJobName"], r["rlnSchemeJobMode"],
                                                r["rlnSchemeJobHasStarted"]) for r in rows("scheme_jobs")},
        "edges": [(r["rlnSchemeEdgeInputNodeName"], r["rlnSchemeEdgeOutputNodeName"], r["rlnSchemeEdgeIsFork"],
                   r["rlnSchemeEdgeOutputNodeNameIfTrue"], r["rlnSchemeEdgeBooleanVariable"])
                  for r in rows("scheme_edges")],
    }


def check(scheme_dir: str) -> list[str]:
    """Everything in ``scheme_dir`` that RELION-5's Schemer would refuse or run wrongly; [] if none."""
    problems = []
    s = load(scheme_dir)
    dirname = os.path.basename(os.path.normpath(scheme_dir))
    for block, labels in s["blocks"].items():
        if block not in TABLES:
            problems.append(f"unknown table data_{block}")
        elif set(labels) != set(TABLES[block]):  # RELION reads by label, in any order
            problems.append(f"data_{block} labels {labels}, RELION reads {TABLES[block]}")
    for block in ("scheme_general", "scheme_jobs", "scheme_edges"):
        if block not in s["blocks"]:
            problems.append(f"no data_{block}")
    # Scheme::read takes the name from the file: it must be the directory it lives in
    if s["name"] != f"Schemes/{dirname}/":
        problems.append(f"rlnSchemeName {s['name']!r} is not Schemes/{dirname}/")
    variables = {**{n: "float" for n in s["floats"]}, **{n: "bool" for n in s["bools"]},
                 **{n: "string" for n in s["strings"]}}
    if len(variables) != len(s["floats"]) + len(s["bools"]) + len(s["strings"]):
        problems.append("a variable name is used by two kinds of variables")
    for name, (value, reset) in s["bools"].items():
        if value not in ("0", "1") or reset not in ("0", "1"):
            problems.append(f"bool {name}: values {value!r} {reset!r} are not 0/1")
    nodes = set(s["operators"]) | set(s["jobs"])
    if set(s["operators"]) & set(s["jobs"]):
        problems.append(f"names both operator and job: {set(s['operators']) & set(s['jobs'])}")
    if set(variables) & nodes:
        problems.append(f"names both variable and node: {set(variables) & nodes}")

    for name, (kind, in1, in2, out) in s["operators"].items():
        if kind not in OPERATOR_TYPES:
            problems.append(f"operator {name}: unknown type {kind!r}")
            continue
        for arg, value, wanted in (("output", out, OUTPUT_KIND.get(kind)), ("input1", in1, INPUT1_KIND.get(kind)),
                                   ("input1", in1, INPUT1_READ_AS.get(kind)), ("input2", in2, INPUT2_KIND.get(kind))):
            if wanted == "number":
                wanted = "float"  # a literal passes initialise but performOperation reads it as 0
            if wanted and variables.get(value) != wanted:
                problems.append(f"operator {name} ({kind}): {arg} {value!r} is not a {wanted} variable")
        if kind == "float=count_images" and in2 != "undefined" and variables.get(in2) != "string":
            problems.append(f"operator {name}: input2 (table name) must be a string variable or undefined")

    # edges: every node named exists; one edge per input node (relion_schemer --add edge/fork refuse a
    # second; getNextNode would take the last); forks name a bool variable
    outgoing = {}
    for edge in s["edges"]:
        src, dst, fork, dst_true, boolean = edge
        for node in (src, dst) + ((dst_true,) if fork == "1" else ()):
            if node not in nodes:
                problems.append(f"edge {edge}: {node!r} is no job or operator")
        if fork == "1" and variables.get(boolean) != "bool":
            problems.append(f"fork {edge}: {boolean!r} is not a bool variable")
        if fork not in ("0", "1"):
            problems.append(f"edge {edge}: IsFork {fork!r}")
        if src in outgoing:
            problems.append(f"two edges leave {src}")
        outgoing[src] = [dst] + ([dst_true] if fork == "1" else [])
    if s["edges"] and s["current"] != s["edges"][0][0]:
        problems.append(f"current node {s['current']} is not the start after a reset ({s['edges'][0][0]})")
    exits = {n for n, (kind, *_rest) in s["operators"].items() if kind == "exit"}
    if not exits:
        problems.append("no exit operator: the Scheme can only stop on a failure")
    start = s["edges"][0][0] if s["edges"] else None
    reached, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node in reached or node is None:
            continue
        reached.add(node)
        todo += outgoing.get(node, [])
    for node in nodes - reached:
        problems.append(f"node {node} cannot be reached from {start}")
    for node in reached - exits:
        if node not in outgoing:
            problems.append(f"node {node} has no way on (the Schemer stops there without exiting)")
    # every reached node can still get to an exit
    can_exit = set(exits)
    changed = True
    while changed:
        changed = False
        for node, targets in outgoing.items():
            if node not in can_exit and any(t in can_exit for t in targets):
                can_exit.add(node)
                changed = True
    for node in reached - can_exit:
        problems.append(f"node {node} never reaches an exit")

    # jobs: a job.star per job, known type, known options, $$ rules, Schemes/ references
    for job, (current, mode, started) in s["jobs"].items():
        if mode not in JOB_MODES:
            problems.append(f"job {job}: mode {mode!r} (RELION 4/5 know {sorted(JOB_MODES)})")
        if current != job or started != "0":
            problems.append(f"job {job}: not in its reset state ({current}, has_started {started})")
        path = os.path.join(scheme_dir, job, "job.star")
        if not os.path.exists(path):
            problems.append(f"job {job}: no {job}/job.star")
            continue
        header, options = snippet.read_job_star(path)
        label = header.get("rlnJobTypeLabel")
        if label not in JOB_OPTIONS:
            problems.append(f"job {job}: job type {label!r} (RELION 4/5 header _rlnJobTypeLabel)")
            continue
        for key in sorted(set(options) - JOB_OPTIONS[label]):
            problems.append(f"job {job}: {key} is no {label} option")
        for key, value in options.items():
            if "$$" in value:
                var = value.split("$$", 1)[1].split(" ")[0]
                kind = variables.get(var)
                if kind is None:
                    problems.append(f"job {job}: {key} uses ${var}, not a variable of this Scheme")
                elif kind == "bool" and key not in BOOLEAN_OPTIONS:
                    problems.append(f"job {job}: bool ${var} in the non-boolean option {key}")
                elif kind != "bool" and key in BOOLEAN_OPTIONS:
                    problems.append(f"job {job}: {kind} ${var} in the boolean option {key}")
                elif kind == "string" and key in SLIDER_OPTIONS:
                    problems.append(f"job {job}: string ${var} in the slider option {key}")
            for ref in _scheme_refs(value, s["name"]):
                if ref not in s["jobs"]:
                    problems.append(f"job {job}: {key} names {s['name']}{ref}/, not a job of this Scheme")
            if key in INPUT_NODE_OPTIONS and value and not value.startswith("$$") and snippet.is_job_directory(value):
                problems.append(f"job {job}: {key} {value!r} is a directory; RELION cannot register it as a node")
            if "run_it" in value:
                problems.append(f"job {job}: {key} {value!r} names a Class2D iteration")
    for name, (value, reset) in s["strings"].items():
        for text in (value, reset):
            for ref in _scheme_refs(text, s["name"]):
                if ref not in s["jobs"]:
                    problems.append(f"string {name}: names {s['name']}{ref}/, not a job of this Scheme")
            if "run_it" in text:
                problems.append(f"string {name}: {text!r} names a Class2D iteration")
    return problems


def _scheme_refs(text: str, scheme_name: str) -> list[str]:
    """Job names a value refers to as ``Schemes/NAME/JOB/...`` (Scheme::changeStringForJobnames
    takes the text after the scheme name up to the last '/')."""
    if scheme_name not in text:
        return []
    return [text.split(scheme_name, 1)[1].rsplit("/", 1)[0]]


# ------------------------------------------------------------------------------------------
# the emulator
# ------------------------------------------------------------------------------------------
class Emulated:
    """Runs a Scheme the way src/schemer.cpp Scheme::run does, with fake jobs: a Class2D job
    "classifies" its fn_img (which must exist), a rank job keeps ``keep(round, n_in)`` particles of
    the Class2D job named in its in_optimiser param (which must be a Class2D job that ran)."""

    def __init__(self, scheme_dir: str, files: dict[str, int], keep, max_steps: int = 10000):
        self.s = load(scheme_dir)
        self.dir = scheme_dir
        self.files = dict(files)        # particle STAR file -> particle count
        self.keep = keep
        self.floats = {k: reset for k, (_v, reset) in self.s["floats"].items()}   # after --reset
        self.bools = {k: reset == "1" for k, (_v, reset) in self.s["bools"].items()}
        self.strings = {k: reset for k, (_v, reset) in self.s["strings"].items()}
        self.current = {job: job for job in self.s["jobs"]}
        self.counter = 1
        self.runs: list[tuple[str, str, dict]] = []   # (scheme job, pipeline job, resolved options)
        self.class2d_inputs: dict[str, str] = {}
        self.log: list[str] = []
        self.max_steps = max_steps

    def resolve(self, text: str) -> str:
        name = self.s["name"]
        for ref in _scheme_refs(text, name):
            text = text.replace(f"{name}{ref}/", self.current[ref])
        return text

    def next_node(self, node: str) -> str | None:
        result = None
        for src, dst, fork, dst_true, boolean in self.s["edges"]:
            if src == node:
                result = dst_true if fork == "1" and self.bools[boolean] else dst
        return result

    def operate(self, name: str) -> bool:
        kind, in1, in2, out = self.s["operators"][name]
        val2 = self.floats.get(in2, 0.0)  # performOperation: only a float variable counts
        f, b, st = self.floats, self.bools, self.strings
        if kind == "exit":
            return False
        if kind == "float=count_images":
            path = self.resolve(st[in1])
            f[out] = float(self.files.get(path, 0))  # a missing file counts 0 (RELION 4/5)
        elif kind == "float=divide":
            f[out] = f[in1] / val2 if val2 else float("inf")
        elif kind == "float=plus":
            f[out] = f[in1] + val2
        elif kind == "float=minus":
            f[out] = f[in1] - val2
        elif kind == "float=mult":
            f[out] = f[in1] * val2
        elif kind == "float=set":
            f[out] = f[in1]
        elif kind in ("bool=ge", "bool=gt", "bool=le", "bool=lt", "bool=eq"):
            x = f.get(in1, 0.0)
            b[out] = {"bool=ge": x >= val2, "bool=gt": x > val2, "bool=le": x <= val2, "bool=lt": x < val2,
                      "bool=eq": abs(x - val2) < 1e-8}[kind]
        elif kind == "bool=or":
            b[out] = b[in1] or b[in2]
        elif kind == "bool=and":
            b[out] = b[in1] and b[in2]
        elif kind == "bool=not":
            b[out] = not b[in1]
        elif kind == "string=set":
            st[out] = self.resolve(st[in1])
        else:
            raise NotImplementedError(f"emulator: operator type {kind}")
        self.log.append(f"{name}: {out} -> {f.get(out, b.get(out, st.get(out)))}")
        return True

    def run_job(self, job: str) -> None:
        header, options = snippet.read_job_star(os.path.join(self.dir, job, "job.star"))
        resolved = {}
        for key, value in options.items():
            while "$$" in value:  # Scheme::prepareJob
                before, after = value.split("$$", 1)
                var, _, rest = after.partition(" ")
                if var in self.bools:
                    text = "Yes" if self.bools[var] else "No"
                elif var in self.floats:
                    text = f"{self.floats[var]:g}"
                else:
                    text = self.strings[var]
                value = before + text + ((" " + rest) if rest else "")
            resolved[key] = self.resolve(value)
        label = header["rlnJobTypeLabel"]
        if label == "relion.class2d":
            name = f"Class2D/job{self.counter:03d}/"
            if resolved["fn_img"] not in self.files:
                raise AssertionError(f"{name}: input {resolved['fn_img']} does not exist (the Schemer waits for it)")
            self.class2d_inputs[name] = resolved["fn_img"]
        elif label == "relion.external":
            name = f"External/job{self.counter:03d}/"
            params = {resolved[f"param{i}_label"]: resolved[f"param{i}_value"] for i in range(1, 11)
                      if resolved.get(f"param{i}_label")}
            class2d = params.get("in_optimiser") or resolved.get("in_part")
            if class2d not in self.class2d_inputs:
                raise AssertionError(f"{name}: ranks {class2d!r}, not a Class2D job that ran")
            n_in = self.files[self.class2d_inputs[class2d]]
            rounds_done = sum(1 for _j, p, _o in self.runs if p.startswith("External/"))
            self.files[name + "particles.star"] = self.keep(rounds_done + 1, n_in)
        else:
            raise NotImplementedError(label)
        self.counter += 1
        self.current[job] = name  # mode new: a new job every time (Scheme::run)
        self.runs.append((job, name, resolved))

    def run(self) -> "Emulated":
        node = self.s["edges"][0][0]  # after a reset
        for _ in range(self.max_steps):
            if node is None:
                raise AssertionError("the Scheme ran into a node with no edge")
            if node in self.s["operators"]:
                if not self.operate(node):
                    return self
            else:
                self.run_job(node)
            node = self.next_node(node)
        raise AssertionError(f"no exit after {self.max_steps} steps")

    def rounds(self) -> list[dict]:
        """(Class2D job, rank job, particles in, kept) per round."""
        result = []
        pairs = [(p, o) for _j, p, o in self.runs]
        for (c2d, _o), (rank, _o2) in zip(pairs[0::2], pairs[1::2]):
            n_in = self.files[self.class2d_inputs[c2d]]
            result.append({"class2d_job": c2d, "rank_job": rank, "input": self.class2d_inputs[c2d],
                           "particles_in": n_in, "kept": self.files[rank + "particles.star"]})
        return result
