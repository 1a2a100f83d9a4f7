"""The training runs the notebooks of a profile need: planned (:func:`planned_configs`), where each stands
(:func:`run_state`), trained longest first (:func:`pretrain`), published into ``models/`` with their
evaluation caches (:func:`publish_runs`) and those caches restored (:func:`restore_evaluations`).

The evaluation caches of a run (:func:`rnorm.experiments.common.cached_evaluate`) are the files named
:data:`rnorm.experiments.common.EVALUATION_FILES`: their name is the hash of everything an evaluation
depends on (the run, the test images, the attack, the code)."""
from __future__ import annotations

from pathlib import Path

from .._validate import as_sequence
from ..experiments import REGISTRY
from ..experiments.common import EVALUATION_FILES
from .checks import check_sizes
from .checkout import project_root


def publish_runs(profile: dict, *, notebooks=None, archive=None) -> tuple[list, list]:
    """Copy every finished run the notebooks of ``profile`` need into ``archive`` (default: the
    repository's ``models/``) with :func:`rnorm.runs.publish_run`, with its evaluation caches (those
    computed here and those published before: :func:`copy_evaluations`); returns (published folders,
    names of the runs neither finished here nor published before). Runs named only after others
    finish (03's RobustNorm runs after its sweep) are included once those have finished."""
    from ..runs import find_run, publish_run
    archive = Path(archive) if archive is not None else project_root() / "models"
    published, missing = [], []
    for cfg in planned_configs(profile, notebooks):
        run = find_run(cfg, archive=[])
        if run is None:
            if not (archive / cfg.folder_name() / "model.pt").is_file():  # else published before, not here now
                missing.append(cfg.folder_name())
        else:
            # publish_run replaces the folder: carry the evaluations published before (perhaps on
            # another machine) into the run first, so the archive keeps them all
            copy_evaluations(archive / run.path.name, run.path)
            folder = publish_run(run, archive)
            copy_evaluations(run.path, folder)
            published.append(folder)
    return published, missing


def copy_evaluations(src, dst) -> list:
    """Copy the evaluation caches (:data:`EVALUATION_FILES`) of the run folder ``src`` that the run folder
    ``dst`` lacks into it, each atomically; returns the names copied. A missing ``src`` copies nothing.

    The published book carries them beside each run in ``models/`` (:func:`publish_runs`), and
    :func:`restore_evaluations` puts them back in ``RNORM_RUNS`` (:func:`run_notebook` calls it), so a
    fresh machine re-executes a chapter without evaluating its models again. A cache is only ever read
    under its own name, which hashes the evaluation code and the test images, so one written by other
    code or from other images is never used: it stays unread."""
    from .._io import atomic_write_bytes
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        return []
    copied = []
    for f in sorted(src.glob(EVALUATION_FILES)):
        if not (dst / f.name).exists():
            atomic_write_bytes(dst / f.name, f.read_bytes())
            copied.append(f.name)
    return copied


def restore_evaluations(configs, *, archive=None) -> int:
    """For each config whose run is finished or published (restored into ``RNORM_RUNS`` by
    :func:`rnorm.runs.find_run`), copy the evaluations published beside it (:func:`copy_evaluations`)
    that its run folder lacks; returns the number of files copied. Runs not trained yet are skipped."""
    from ..runs import archive_roots, find_run
    n = 0
    for cfg in configs:
        run = find_run(cfg, archive=archive)
        if run is None:
            continue
        for root in archive_roots(archive):
            n += len(copy_evaluations(root / run.path.name, run.path))
    return n


def planned_configs(profile: dict, notebooks=None, exclude=(), longest_first: bool = False,
                    match=None) -> list:
    """The RunConfigs the given notebooks of ``profile`` need as of now, each once, in notebook order
    (``longest_first``: by :func:`run_cost`, the order training schedules them), leaving out ``exclude``;
    with ``match`` (texts), only the runs whose folder name contains one of them."""
    from ..experiments import planned_runs
    configs: list = []
    match = as_sequence("match", match) if match else ()  # one bare text is one text, not its letters
    for nb in as_sequence("notebooks", notebooks, nonempty=False) if notebooks is not None else REGISTRY:
        check_sizes(nb, profile["notebooks"][nb])  # a run that cannot train is never planned
        for cfg in planned_runs(nb, profile["notebooks"][nb]):
            if cfg not in configs and cfg not in exclude and (
                    not match or any(m in cfg.folder_name() for m in match)):
                configs.append(cfg)
    return sorted(configs, key=run_cost, reverse=True) if longest_first else configs


def check_match(profile: dict, notebooks, match) -> None:
    """Refuse, before any work, a ``match`` text that names none of the planned runs."""
    from .._validate import ConfigError
    if not match:
        return
    planned = [c.folder_name() for c in planned_configs(profile, notebooks)]
    for m in as_sequence("match", match):
        if not any(m in name for name in planned):
            raise ConfigError(f"--match {m!r} is in none of the {len(planned)} planned run names; allowed: a part "
                              f"of a name, e.g. {planned[0] if planned else 'none planned'!r}"
                              f" (`rnorm plan --profile {profile.get('name', 'cpu')}` lists them).")


def unfinished(configs: list) -> list:
    """The configs without a finished run (in ``RNORM_RUNS`` or published), in the same order."""
    from ..runs import find_run
    return [c for c in configs if find_run(c) is None]


def pretrain(profile: dict, *, jobs=None, device: str = "auto", notebooks=None,
             executor: str = "local", address: str | None = None, layouts: list | None = None,
             match=None) -> list:
    """Train every run the given notebooks need, longest first, with ``executor``
    (:mod:`rnorm.executors`: ``local`` worker processes, ``jobs`` of them, or ``ray`` tasks on the
    cluster at ``address``).

    ``jobs`` (default: the profile's) is a number of workers of the profile's ``threads`` each, or
    ``"auto"``: one worker per core (:func:`rnorm.layout.resolve`). Each round's layout is printed and
    appended to ``layouts``.

    ``match`` (texts) trains only the runs whose folder name contains one of them, e.g. a standard
    run first, to check its convergence floor before the long recipes (:func:`check_match`).

    Finished runs are cached, so the notebooks then only load them. A notebook may name some runs
    only after others are trained (03's RobustNorm runs follow its learning-rate sweep), so this
    trains in rounds until the list of runs stops growing. Returns ``(run folder name, trained
    here?)`` per run (:func:`rnorm.executors.train_one`).
    """
    from ..executors import run_all
    from ..layout import Layout, resolve
    done: list = []
    results: list = []
    jobs = jobs or profile["jobs"]
    for _ in range(5):
        configs = planned_configs(profile, notebooks, exclude=done, longest_first=True, match=match)
        if not configs:
            break
        if executor == "ray":  # the cluster's resources decide; each task asks for the profile's threads
            lay = Layout(1, profile.get("threads") or 1, note="Ray tasks")
        else:  # for the runs still to train (finished and published ones need no worker)
            todo = unfinished(configs)
            lay = resolve(jobs, todo, threads=profile.get("threads"), device=device)
            print(f"[rnorm] {len(todo)} of {len(configs)} run(s) to train, with {lay.describe()}", flush=True)
        if layouts is not None:
            layouts.append(lay)
        results += run_all(configs, executor=executor, jobs=lay.workers, device=device, threads=lay.threads,
                           address=address, channels_last=profile.get("channels_last", "auto"))
        done += configs
    return results


_RECIPE_COST = {"standard": 1.0, "pgd_at": 1.0, "advprop": 2.0, "ebn": 2.0, "advprop_ebn": 3.0}


_ARCH_COST = {"resnet20": 0.6, "resnet18": 1.0, "resnet50": 2.5}


def run_cost(cfg) -> float:
    """A rough relative cost of a run, to schedule the longest first."""
    steps = 0 if cfg.recipe == "standard" else cfg.train_steps * (1 if cfg.recipe != "advprop_ebn" else 2)
    n = cfg.train_subset or 60000
    return n * cfg.epochs * (_RECIPE_COST[cfg.recipe] + 0.7 * steps) * _ARCH_COST.get(cfg.arch, 1.0) * (cfg.width / 16) ** 2


def run_state(cfg) -> str:
    """Where a planned run stands, without touching anything: ``finished`` (in ``RNORM_RUNS``),
    ``trained k of n epochs`` (a checkpoint: training resumes it, even where the archive has the run),
    ``published`` (in the archive, copied on first use) or ``to train``."""
    from ..runs import archive_roots, is_complete, run_path
    path = run_path(cfg)
    if is_complete(path):
        return "finished"
    if (path / "checkpoint.pt").is_file():  # restore_published leaves a run being trained alone: it resumes
        hist = path / "history.csv"
        done = max(0, len(hist.read_text().strip().splitlines()) - 1) if hist.is_file() else 0
        return f"trained {done} of {cfg.epochs} epochs"
    if any((root / path.name / "model.pt").is_file() for root in archive_roots()):  # as restore_published looks
        return "published"
    return "to train"
