"""The ``rnorm`` command line: run notebooks with a profile, build the book, list what exists.

    rnorm run 02_stats_swap --profile cpu -p dataset cifar10_jpeg -p epsilons "[0.01, 0.03]"
    rnorm book --profile cpu [--jobs 2] [--no-build] [--rerun]
    rnorm build                      # only jupyter-book build, from what is executed
    rnorm profiles                   # list profiles and what they are for
    rnorm plan --profile cpu         # the training runs a profile needs, and where each stands
    rnorm train --profile cpu        # train them ahead (resumable; e.g. in the background), no notebook
    rnorm train --profile cpu --only 04_easy_batchnorm -p seeds "[0, 1, 2, 3]"   # ... with one notebook's overrides
    rnorm evaluate 04_easy_batchnorm --profile cpu --shard 0 --shards 2   # its evaluations ahead, one process per core
    rnorm book --profile cpu --dry-run                 # what `rnorm book` would execute and train, and why

A user mistake (unknown profile, notebook or parameter, a malformed value, a missing notebook
file, a size larger than the data) ends with one line naming it and exit status 2, never a traceback.

Every command works on the checkout the working directory is in (the folder holding
``_config.yml``, ``_toc.yml`` and ``notebooks/``), never on the one the package is installed from;
outside a checkout it says so. All but ``build`` and ``profiles`` also refuse to run another
checkout's ``rnorm`` package there (``python -m rnorm.cli`` in a checkout runs its own).

``rnorm run`` writes into the published ``book/`` only when the parameters are exactly those of
the published profile (``cpu``); anything else goes to ``_scratch/<profile or custom>/`` unless
``--out-dir`` says otherwise. ``rnorm book`` re-executes only the notebooks whose inputs changed
(``--rerun``: all of them).
"""
from __future__ import annotations

import argparse
import os
import sys

from ._validate import ConfigError


def _parser() -> argparse.ArgumentParser:
    """The ``rnorm`` parser: one subcommand per entry of :data:`_COMMANDS`, in its order."""
    p = argparse.ArgumentParser(prog="rnorm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add, _ in _COMMANDS.values():
        add(sub)
    return p


# The notebooks whose module computes its evaluations ahead (``precompute_evaluations``) for `rnorm evaluate`.
_EVALUATES = ("04_easy_batchnorm",)


def _param_arg(p, help: str = "override a parameter of the one notebook named by --only (VALUE read as YAML), "
                              "e.g. to train ahead the runs of a build with more seeds or recipes than the "
                              "profile's") -> None:
    """The repeatable ``-p/--param NAME VALUE`` option, with the help text of the command that takes it."""
    p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help=help)


def _with_params(prof: dict, only, pairs) -> dict:
    """The profile with ``-p`` overrides applied to the one notebook ``--only`` names (validated)."""
    from . import book
    if not pairs:
        return prof
    names = _training_notebooks(only) if only else []
    if len(names) != 1:
        raise ConfigError(f"-p {pairs[0][0]} ...: -p overrides the parameters of one notebook, so --only must name "
                          f"exactly one (got {', '.join(names) if names else 'no --only'}).")
    overrides = book.parse_overrides(pairs)
    notebooks = dict(prof["notebooks"])
    notebooks[names[0]] = book.notebook_params(prof, names[0], overrides)
    return {**prof, "notebooks": notebooks}


def _executor_args(p) -> None:
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="where training runs execute: local worker processes, or Ray tasks (pip install 'rnorm[cluster]')")
    p.add_argument("--ray-address", default=None, help="the Ray cluster (default: RAY_ADDRESS, else a local Ray instance); "
                                                       "RNORM_RUNS and RNORM_DATA must be on a file system every node sees")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from ._io import DiskFullError
    from .data import DataError
    from .runs import RunError
    try:
        return _dispatch(args)
    except (ConfigError, DataError, RunError, DiskFullError) as e:
        print(f"rnorm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rnorm: interrupted; finished training runs are kept and will be reused.", file=sys.stderr)
        return 130


def _training_notebooks(only) -> list[str]:
    """The notebooks named by ``--only`` (validated), else every notebook that trains."""
    from .experiments import REGISTRY, get
    return [get(nb).name for nb in only] if only else [n for n in REGISTRY if REGISTRY[n].trains]


def _dispatch(args) -> int:
    """Run the subcommand ``args`` names (its handler in :data:`_COMMANDS`), in the checkout it is run in."""
    from . import book
    # Every command works on the checkout it is run in, and all but rendering and listing refuse to run
    # another checkout's package there (rnorm.runs finds published runs beside the package it is).
    book.project_root(code=args.command not in ("build", "profiles"))
    if args.command not in _COMMANDS:
        raise AssertionError(args.command)
    return _COMMANDS[args.command][1](args)


def _add_run(sub) -> None:
    """``rnorm run NOTEBOOK``: its profile, ``-p`` overrides, output folder and device."""
    r = sub.add_parser("run", help="execute one notebook with papermill (into _scratch/<profile>/ unless it is "
                                   "the published profile's exact parameters)")
    r.add_argument("notebook", help="e.g. 02_stats_swap")
    r.add_argument("--profile", default="smoke", help="profile name or path (default: smoke)")
    _param_arg(r, "override a parameter; VALUE is read as YAML")
    r.add_argument("--out-dir", default=None, help="folder for executed/ and results/ (default: book/ for the "
                                                   "published profile's exact parameters, else _scratch/<profile>/)")
    r.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")


def _add_book(sub) -> None:
    """``rnorm book``: profile, workers, what to re-execute, whether to build, dry run."""
    b = sub.add_parser("book", help="bring a profile's executed notebooks up to date (re-execute only those whose "
                                       "source, parameters or code changed, or whose outputs are missing; "
                                       "--rerun: all), then build the book")
    b.add_argument("--profile", default="cpu")
    b.add_argument("--jobs", default=None, help="parallel training workers, or 'auto' (a rule: one "
                                                "one-thread worker per core; default: the profile's)")
    b.add_argument("--no-build", action="store_true", help="run the notebooks but do not build the HTML")
    b.add_argument("--rerun", action="store_true", help="re-execute every notebook, not only those whose inputs changed")
    b.add_argument("--dry-run", action="store_true", help="say which notebooks would be executed and why, and which "
                                                           "training runs they need, executing and training nothing "
                                                           "(like make -n)")
    b.add_argument("--out-dir", default=None, help="folder for executed/ and results/ (default: book/)")
    b.add_argument("--only", nargs="+", default=None, help="run only these notebooks")
    b.add_argument("--device", default="auto")
    _executor_args(b)


def _add_build(sub) -> None:
    """``rnorm build``: no options."""
    sub.add_parser("build", help="build the HTML book from the executed notebooks (no training)")


def _add_profiles(sub) -> None:
    """``rnorm profiles``: no options."""
    sub.add_parser("profiles", help="list the profiles")


def _add_plan(sub) -> None:
    """``rnorm plan``: profile, notebooks, run names, ``-p`` overrides."""
    pl = sub.add_parser("plan", help="list the training runs a profile needs and where each stands (finished, "
                                     "trained k of n epochs, published, to train), touching nothing")
    pl.add_argument("--profile", default="cpu")
    pl.add_argument("--only", nargs="+", default=None, help="only the runs of these notebooks")
    pl.add_argument("--match", nargs="+", default=None, metavar="TEXT",
                    help="only the runs whose name contains one of these texts (as `rnorm train --match`)")
    _param_arg(pl)


def _add_train(sub) -> None:
    """``rnorm train``: profile, notebooks, workers, run names, device, overrides, executor."""
    t = sub.add_parser("train", help="train the runs a profile's notebooks need, without running the notebooks "
                                     "(resumable: an interrupted run continues from its last epoch)")
    t.add_argument("--profile", default="cpu")
    t.add_argument("--only", nargs="+", default=None, help="only the runs of these notebooks")
    t.add_argument("--jobs", default=None, help="parallel training workers, or 'auto' (a rule: one "
                                                "one-thread worker per core; default: the profile's)")
    t.add_argument("--match", nargs="+", default=None, metavar="TEXT",
                   help="only the runs whose name contains one of these texts, e.g. standard-e15-s0 to train a "
                        "reference run first and check its convergence floor")
    t.add_argument("--device", default="auto")
    _param_arg(t)
    _executor_args(t)


def _add_evaluate(sub) -> None:
    """``rnorm evaluate NOTEBOOK``: profile, ``-p`` overrides, shard."""
    ev = sub.add_parser("evaluate", help="compute ahead the evaluations of a notebook's finished runs, with the very "
                                         "calls the notebook makes, so that executing it finds them cached (published "
                                         "ones are restored, not recomputed; runs not yet trained are skipped; "
                                         "nothing is trained)")
    ev.add_argument("notebook", help="a notebook that offers it: " + ", ".join(_EVALUATES))
    ev.add_argument("--profile", default="cpu")
    _param_arg(ev, "override a parameter of the notebook (VALUE read as YAML), as for rnorm run")
    ev.add_argument("--shard", type=int, default=0, help="take every SHARDS-th run from this one (0-based), so "
                                                         "one process per core shares the work")
    ev.add_argument("--shards", type=int, default=1, help="how many processes share the runs (default 1)")


def _add_layout(sub) -> None:
    """``rnorm layout``: profile and notebooks."""
    la = sub.add_parser("layout", help="print how many training workers of how many threads `rnorm train` "
                                       "uses for a profile's runs here (a rule: one one-thread worker per core)")
    la.add_argument("--profile", default="cpu")
    la.add_argument("--only", nargs="+", default=None, help="only the runs of these notebooks")


def _add_publish(sub) -> None:
    """``rnorm publish``: profile, notebooks, target folder, overrides."""
    pu = sub.add_parser("publish", help="copy the finished runs a profile's notebooks need into models/ (final "
                                        "weights, history and the evaluations computed so far; no optimizer state), so a fresh "
                                        "clone need neither train nor evaluate them again")
    pu.add_argument("--profile", default="cpu")
    pu.add_argument("--only", nargs="+", default=None, help="only the runs of these notebooks")
    pu.add_argument("--archive", default=None, help="target folder (default: the repository's models/)")
    _param_arg(pu)


def _do_run(args) -> int:
    """``rnorm run``: execute one notebook with a profile's parameters and ``-p`` overrides."""
    from . import book
    from .experiments import get
    entry = get(args.notebook)
    prof = book.load_profile(args.profile)
    overrides = book.parse_overrides(args.param)
    if args.device:
        overrides["device"] = args.device
    params = book.notebook_params(prof, entry.name, overrides)
    out_dir = args.out_dir
    if out_dir is None and entry.reads:  # the ledger has no parameters: it follows the profile named
        out_dir = book.project_root() / "book" if prof["name"] == book.PUBLISHED_PROFILE else \
            book.project_root() / "_scratch" / prof["name"]
    out = book.run_notebook(entry.name, params, out_dir=out_dir)
    print(f"wrote {out}")
    return 0


def _do_book(args) -> int:
    """``rnorm book``: bring a profile's notebooks up to date, then build the book (``--dry-run``: say what
    it would do)."""
    from . import book
    from .experiments import get
    args.jobs = _jobs(args.jobs)
    for nb in args.only or ():
        get(nb)
    if args.dry_run:
        return _emit(book.describe_book_plan(args.profile, notebooks=args.only, out_dir=args.out_dir,
                                             rerun=args.rerun))
    record = book.run_book(args.profile, jobs=args.jobs, build=not args.no_build, notebooks=args.only,
                           device=args.device, out_dir=args.out_dir, rerun=args.rerun,
                           executor=args.executor, address=args.ray_address)
    print(f"done: executed {', '.join(record['executed']) or 'nothing'}; seconds {record['seconds']}")
    return 0


def _do_build(args) -> int:
    """``rnorm build``: the HTML book from the executed notebooks."""
    from . import book
    book.build_book()
    return 0


def _do_profiles(args) -> int:
    """``rnorm profiles``: each profile's name and what it is for."""
    from . import book
    for name in book.available_profiles():
        prof = book.load_profile(name)
        print(f"{name:8s} {prof['description']}")
    return 0


def _do_plan(args) -> int:
    """``rnorm plan``: the training runs a profile needs, one line each with where it stands, and a tally."""
    from . import book
    from .experiments import REGISTRY
    prof = book.load_profile(args.profile)
    names = _training_notebooks(args.only) if args.only else list(REGISTRY)
    prof = _with_params(prof, args.only, args.param)
    book.check_match(prof, names, args.match)
    seen, lines, states = [], [], {}
    for nb in names:  # one notebook at a time, to name it; a run two notebooks share is listed once
        for cfg in book.planned_configs(prof, [nb], exclude=seen, match=args.match):
            seen.append(cfg)
            state = book.run_state(cfg)
            kind = "partly trained" if state.startswith("trained ") else state  # "trained k of n epochs"
            states[kind] = states.get(kind, 0) + 1
            lines.append(f"{nb:24s} {cfg.folder_name()}  {state}")
    tally = ", ".join(f"{n} {kind}" for kind, n in states.items())
    return _emit("\n".join(lines + [f"{len(seen)} runs" + (f": {tally}" if tally else "")]))


def _do_train(args) -> int:
    """``rnorm train``: train the runs a profile's notebooks need, without running the notebooks."""
    from . import book
    prof = book.load_profile(args.profile)
    args.jobs = _jobs(args.jobs)
    names = _training_notebooks(args.only)
    prof = _with_params(prof, args.only, args.param)
    book.check_match(prof, names, args.match)
    done = book.pretrain(prof, jobs=args.jobs, device=args.device, notebooks=names, executor=args.executor,
                         address=args.ray_address, match=args.match)
    trained = sum(t for _, t in done)
    print(f"done: {len(done)} runs, {trained} trained now, {len(done) - trained} found finished")
    return 0


def _do_evaluate(args) -> int:
    """``rnorm evaluate``: a notebook's evaluations of its finished runs, computed ahead (one shard of them)."""
    from . import book
    from .experiments import get
    from ._validate import check_int
    entry = get(args.notebook)
    if entry.name not in _EVALUATES:
        raise ConfigError(f"notebook {entry.name!r} cannot compute its evaluations ahead; allowed: "
                          f"{', '.join(_EVALUATES)} (the others evaluate when executed: rnorm run or rnorm book).")
    check_int("--shards", args.shards, min_value=1)
    check_int("--shard", args.shard, min_value=0, max_value=args.shards - 1)
    prof = book.load_profile(args.profile)
    params = entry.params.from_dict(book.notebook_params(prof, entry.name, book.parse_overrides(args.param)))
    book.restore_evaluations(entry.module.runs(params))  # published ones are read back, not computed again
    done = entry.module.precompute_evaluations(params, shard=args.shard, shards=args.shards)
    computed = sum(1 for n in done.values() if n)
    print(f"done: {len(done)} trained runs evaluated (shard {args.shard} of {args.shards}): {computed} computed "
          f"now, {len(done) - computed} found cached; `rnorm publish --profile {args.profile} --only "
          f"{entry.name}` with the same -p copies their evaluations into models/")
    return 0


def _do_layout(args) -> int:
    """``rnorm layout``: how many training workers of how many threads ``rnorm train`` would use here."""
    from . import book
    from .layout import resolve
    prof = book.load_profile(args.profile)
    planned = book.planned_configs(prof, _training_notebooks(args.only), longest_first=True)
    todo = book.unfinished(planned)
    lay = resolve(prof["jobs"], todo, threads=prof.get("threads"))
    print(f"{len(todo)} of {len(planned)} run(s) of profile {prof['name']!r} to train: {lay.describe()}")
    return 0


def _do_publish(args) -> int:
    """``rnorm publish``: copy a profile's finished runs into models/."""
    from . import book
    prof = book.load_profile(args.profile)
    names = _training_notebooks(args.only)
    prof = _with_params(prof, args.only, args.param)
    published, missing = book.publish_runs(prof, notebooks=names, archive=args.archive)
    for path in published:
        print(f"published {path}")
    for name in missing:
        print(f"not finished, not published: {name}")
    print(f"done: {len(published)} runs published, {len(missing)} neither finished nor published before")
    return 0


#: The subcommands, in the order ``rnorm --help`` lists them: name -> (adds its parser, handles it).
_COMMANDS = {
    "run": (_add_run, _do_run),
    "book": (_add_book, _do_book),
    "build": (_add_build, _do_build),
    "profiles": (_add_profiles, _do_profiles),
    "plan": (_add_plan, _do_plan),
    "train": (_add_train, _do_train),
    "evaluate": (_add_evaluate, _do_evaluate),
    "layout": (_add_layout, _do_layout),
    "publish": (_add_publish, _do_publish),
}


def _emit(text: str) -> int:
    """Print a report; a reader that went away (``rnorm plan | head``) ends it quietly, status 0."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def _jobs(value):
    """``--jobs``: None (the profile's), ``auto``, or a number of workers up to 4 per core."""
    from .layout import check_jobs
    return None if value is None else check_jobs(value, "--jobs", max_value=4 * (os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
