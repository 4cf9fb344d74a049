"""The prepare stage: gameplay -> frames -> brain -> VQ-VAE tokens, once per dataset.

Everything lands in one folder keyed by the hash of the data and tokenizer settings, with a
``dataset.json`` manifest, written last. A folder whose manifest reads and whose files (those
the manifest promises: tokens, stimulus frames, brain, VQ-VAE) all exist is complete and is
read, not rebuilt. A damaged one is named and repaired: missing token files are tokenized
again with the folder's own VQ-VAE; anything else (a manifest that does not read, a missing
brain or frame file) is built again. Trials only read from it; a file they cannot read is
named in their error.

Two sources (``DataSpec.source``):

- ``"simulated"``, the embedded default, honest about what it is: real emulator frames of
  plays recorded as ``.bk2`` and replayed exactly as for CNeuroMod, and a simulated brain
  whose noise ceiling is known (``brainray.simbrain``). Stimulus runs are shared by all
  simulated subjects.
- ``"cneuromod"``: the CNeuroMod shinobi BIDS dataset with fMRIPrep derivatives
  (``brainray.fmri.load_cneuromod``). Every replay of every run is replayed from its
  ``.bk2`` in ``DataSpec.game``; each run belongs to one subject; the noise ceiling is
  unknown. Replays train the GPT, except ``val_fraction`` of them (chosen by a hash of
  their name) that validate it; all of them are stimuli for the encoding.

Manifest (``dataset.json``, version 2)::

    source        "simulated" | "cneuromod"
    game, frame_size, fps, tr, data (the DataSpec), tokenizer (settings and metrics)
    replays       [{name, n_frames, split ("train" | "val" | "stim"), bk2, ...}] in the
                  order of the nested data_frames prefixes. cneuromod adds subject,
                  session, run, level and onset, and orders them by subject, then level,
                  then repetition (session, run, onset): the paper's order.
    runs          [{run, n_vols, segments: [{replay, onset, n_frames, ...}], ...}]; a run
                  with a "subject" key belongs to that subject only (cneuromod, which adds
                  session and tr); without one it is shared by all subjects (simulated).
    subjects      ["sub-01", ...]
    noise_ceiling "exact" (simulated: brain/<subject>/simbrain.*) or null (unknown:
                  trials report ceiling_frac None)
    timings       seconds per stage

Version-1 manifests (simulated, before cneuromod) read the same: shared runs, exact ceiling.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from brainray import fmri, gameplay, gamestate, locks, simbrain, stream, video, vqvae
from brainray.config import DataSpec, SpecError, SweepSpec, TokenizerSpec
from brainray.dataset import (
    DAMAGED, FPS, MANIFEST, Dataset, SubjectBold, describe_incomplete, load_dataset, missing_files, read_manifest,
    reading, why_unreadable,
)

__all__ = ["Dataset", "SubjectBold", "prepare", "prepare_on_ray", "load_dataset", "run_stimulus", "MANIFEST",
           "REPLAY_ORDER", "FPS"]

Log = Callable[[str], None]
MapFn = Callable[[Callable, Iterable], list]
#: Order of the cneuromod training replays, hence of the nested ``data_frames`` prefixes.
REPLAY_ORDER = ("subject", "level", "session", "run", "onset")
_MIN_RUNS = 3  # leave-one-run-out scoring: 1 held out, >= 2 for the inner CV
CHECKPOINT = "vqvae.ckpt"  # the tokenizer's training state while it trains; removed when it is done
def _cached(root: Path, log: Log) -> Dataset | None:
    """The dataset already at ``root``, repaired if only token files are missing; None (with
    the reason logged) if it must be built again."""
    path = root / MANIFEST
    try:
        manifest = read_manifest(path)
    except (*DAMAGED, LookupError, TypeError) as err:
        log(f"[prepare] the cached dataset {root} is damaged: {path} cannot be read ({why_unreadable(err)}); rebuilding it")
        return None
    missing = missing_files(root, manifest)
    if not missing:
        log(f"[prepare] cached dataset {root}")
        return Dataset(root, manifest)
    tokens = [p.removeprefix("tokens/").removesuffix(".npy") for p in missing if p.startswith("tokens/")]
    if len(tokens) == len(missing):
        log(f"[prepare] {describe_incomplete(root, missing)}\n[prepare] tokenizing them again with its vqvae.pt")
        _retokenize(root, manifest, tokens, log)
        return load_dataset(root)
    log(f"[prepare] {describe_incomplete(root, missing)}\n[prepare] rebuilding it")
    return None


def _record(args: tuple[str, int, int, str, str, int, bool]) -> dict[str, Any]:
    """Record one play as a bk2 (one task). A stimulus play (``stimulus``) also stores its resized
    frames, with its actions, rewards and, where ``brainray.gamestate`` reads the game, the object
    state read from the native frames, all from the recording's own pass (``gameplay.record_replay``:
    what a replay of the bk2 gives, bit for bit): the simulated brain is made from them. A training play keeps only its bk2; its frames are regenerated from it.
    """
    root, seed, n_frames, game, policy, size, stimulus = args
    root_p = Path(root)
    name = f"play-{seed:04d}"
    bk2 = root_p / "replays" / f"{name}.bk2"
    if stimulus:
        observe = gamestate.Tracker() if game in gamestate.GAMES else None
        rep = gameplay.record_replay(bk2, n_frames, seed=seed, game=game, policy=policy, size=size, observe=observe)
        video.FrameStore(root_p / "frames").write(name, rep.frames)
        extra = {} if rep.observed is None else {"state": rep.observed}
        np.savez(root_p / "actions" / f"{name}.npz", actions=rep.actions, rewards=rep.rewards, **extra)
    else:
        gameplay.record_play(bk2, n_frames, seed=seed, game=game, policy=policy)
    return {"name": name, "n_frames": gameplay.count_frames(bk2), "bk2": f"replays/{name}.bk2"}


def prepare(
    spec: SweepSpec, root: str | Path, map_fn: MapFn | None = None, log: Log = print
) -> Dataset:
    """Build (or read) the dataset of ``spec`` under ``root``; returns it.

    map_fn: a parallel ``map`` (``prepare_on_ray`` passes one backed by Ray tasks); plain
    ``map`` by default. It records or replays the plays, one task per play.

    A dataset already at ``root`` is read if it is complete. If it is damaged, ``log`` says
    so and what is done: missing token files are tokenized again with its VQ-VAE; if its
    manifest does not read, or any other file is missing, it is built again.

    Raises
    ------
    SpecError
        If ``spec.data`` is invalid (e.g. a cneuromod ``bids_root`` that does not exist).
    FileNotFoundError
        cneuromod: if the game's ROM is not imported, a ``stim_file`` replay or an fMRI
        file is missing (the message names the files).
    ValueError
        cneuromod: bad events (e.g. a ``stim_file`` outside the dataset root), a corrupt
        ``.bk2``, a subject with fewer than 3 runs, or too few replays to train and
        validate the GPT.
    """
    root = Path(root)
    if (root / MANIFEST).exists():
        cached = _cached(root, log)
        if cached is not None:
            return cached
    problems = spec.data.problems()
    if problems:
        raise SpecError(f"{spec.source}: invalid data settings:\n  - " + "\n  - ".join(problems))
    map_fn = map_fn or (lambda f, xs: list(map(f, xs)))
    for sub in ("replays", "frames", "actions", "tokens", "brain"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    build = _cneuromod if spec.data.source == "cneuromod" else _simulated
    manifest = build(spec, root, map_fn, log)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.rename(root / MANIFEST)  # written last: its presence marks a complete dataset
    timings = manifest["timings"]
    log(
        f"[prepare] done in {sum(timings.values()):.0f} s "
        + " ".join(f"{k}={v:.0f}s" for k, v in timings.items())
    )
    return load_dataset(root)


def prepare_on_ray(spec: SweepSpec, root: str, log: Log = print) -> Dataset:
    """``prepare`` as a Ray task (one CPU) that records the plays in parallel Ray tasks; returns the dataset.

    Ray must be initialized. One prepare per dataset at a time: a sweep that shares ``root`` with
    a running one waits for it (``<root>.lock``), then reads what it built. The task's log lines
    reach ``log`` through a Ray queue, in order, before this returns; the prepare's own error is
    raised here.
    """
    from ray.util.queue import Queue

    lines = Queue(actor_options={"num_cpus": 0})
    try:
        task = _prepare_task.remote(spec, root, lines)
        while True:
            done, _ = ray.wait([task], timeout=0.5)
            while not lines.empty():
                log(lines.get())
            if done:
                break
        ray.get(task)
    finally:
        lines.shutdown()
    return load_dataset(root)


@ray.remote(num_cpus=1)
def _prepare_task(spec: SweepSpec, root: str, lines) -> str:
    with locks.exclusive(f"{root}.lock", f"the dataset {root}", wait=True, log=lines.put):
        prepare(spec, root, map_fn=_ray_map, log=lines.put)
    return root


def _ray_map(fn: Callable, items: Iterable) -> list:
    """``map`` over Ray tasks (one CPU each): plays are recorded in parallel across the cluster."""
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(x) for x in items])


def _simulated(spec: SweepSpec, root: Path, map_fn: MapFn, log: Log) -> dict[str, Any]:
    """Recorded plays, stimulus runs shared by every subject, a simulated brain."""
    d, tk = spec.data, spec.tokenizer
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    replays = _gameplay(d, root, map_fn, log)
    timings["gameplay_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    runs = _runs(d, replays)
    _brain(d, root, runs, log)
    timings["brain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok = _tokenize(tk, d, root, replays, log)
    timings["tokenizer_s"] = time.perf_counter() - t0

    return _manifest(
        d, "simulated", d.tr, tok, replays, runs, list(simbrain.SUBJECTS[: d.n_subjects]), "exact", timings
    )


def _manifest(
    d: DataSpec, source: str, tr: float, tok: dict, replays: list, runs: list, subjects: list[str],
    noise_ceiling: str | None, timings: dict[str, float], **extra: Any,
) -> dict[str, Any]:
    """The ``dataset.json`` content shared by every source (version 2)."""
    return {
        "version": 2, "source": source, "game": d.game, "frame_size": d.frame_size, "fps": FPS, "tr": tr,
        "data": dataclasses.asdict(d), "tokenizer": tok, **extra, "replays": replays, "runs": runs,
        "subjects": subjects, "noise_ceiling": noise_ceiling, "timings": timings,
    }


# ----------------------------------------------------------------------------- cneuromod


def _cneuromod(spec: SweepSpec, root: Path, map_fn: MapFn, log: Log) -> dict[str, Any]:
    """CNeuroMod runs: parcels from fMRIPrep, every replay replayed, per-subject runs.

    Cheap checks come first (the ROM, the events, every ``stim_file``, runs per subject),
    so that a missing file is reported in seconds, not after hours of parcel extraction.
    """
    d, tk = spec.data, spec.tokenizer
    bids_root = Path(d.bids_root)
    deriv = d.derivatives_root or None
    subjects = list(d.subjects) or None
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    gameplay.make_env(d.game).close()  # a ROM that is not imported fails here, saying how to import it
    _check_stimuli(bids_root, deriv, d.task, subjects)
    log(f"[fmri] extracting parcels ({Path(d.atlas).name}) from the task-{d.task} runs of {bids_root}")
    loaded = fmri.load_cneuromod(bids_root, d.atlas, derivatives_root=deriv, subjects=subjects, task=d.task,
                                 map_fn=map_fn)  # one parcel extraction per run, in parallel
    timings["fmri_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    runs, replays, bolds = _cneuromod_plan(loaded, bids_root, d.val_fraction)
    log(f"[gameplay] reading {len(replays)} bk2 files of {d.game} (their frames are regenerated when needed)")
    n_frames = dict(map_fn(_count_frames, [(r["name"], str(bids_root / r["bk2"])) for r in replays]))
    for r in replays:
        r["n_frames"] = n_frames[r["name"]]
    _place_segments(runs, n_frames, log)
    for split in ("train", "val"):
        _check_split(replays, split, tk.clip_frames * tk.time_downsample, d.val_fraction)
    timings["gameplay_s"] = time.perf_counter() - t0

    for subject, items in bolds.items():
        SubjectBold(subject, [b for _, b in items], [run for run, _ in items]).save(root / "brain" / subject)
        log(f"[brain] {subject}: {len(items)} runs x {items[0][1].shape[1]} parcels (measured; no noise ceiling)")

    t0 = time.perf_counter()
    tok = _tokenize(tk, d, root, replays, log)
    timings["tokenizer_s"] = time.perf_counter() - t0

    return _manifest(
        d, "cneuromod", runs[0]["tr"], tok, replays, runs, list(bolds), None, timings,
        replay_order=list(REPLAY_ORDER),
    )


def _check_stimuli(bids_root: Path, deriv: str | None, task: str, subjects: list[str] | None) -> None:
    """Every ``stim_file`` exists, and every subject has enough runs with a replay."""
    absent: list[str] = []
    per_subject: dict[str, int] = {}
    for run in fmri.find_runs(bids_root, deriv, task=task, subjects=subjects):
        events = fmri.read_events(run.events_path, root=bids_root)
        playable = events[~events["missing"]]
        per_subject[run.subject] = per_subject.get(run.subject, 0) + int(len(playable) > 0)
        for row, ev in playable.iterrows():
            if not Path(ev["bk2_path"]).is_file():
                absent.append(f"{run.events_path.name}, row {row}: stim_file {ev['stim_file']!r}")
    if absent:
        more = f"\n  ... and {len(absent) - 10} more" if len(absent) > 10 else ""
        raise FileNotFoundError(
            f"{len(absent)} replay(s) named in the events of {bids_root} do not exist:\n  "
            + "\n  ".join(absent[:10]) + more
            + "\nRestore the .bk2 files (for a DataLad dataset: `datalad get` them), or write "
            "'Missing file' in their stim_file to skip them."
        )
    few = {s: n for s, n in per_subject.items() if n < _MIN_RUNS}
    if few:
        raise ValueError(
            f"run-wise scoring needs at least {_MIN_RUNS} runs with a replay per subject; "
            f"{few} in {bids_root}. Leave these subjects out with data.subjects, or add runs."
        )


def _natural(text: str) -> tuple:
    """Sort key that orders '4-1' before '10-0'."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _val_draw(name: str) -> float:
    """A number in [0, 1) fixed by the replay's name: the same split on every machine."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / 16**12


def _cneuromod_plan(
    loaded: list[dict[str, Any]], bids_root: Path, val_fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[tuple[str, np.ndarray]]]]:
    """Runs, replays (ordered, split) and BOLD per subject, before any replay is played."""
    runs: list[dict[str, Any]] = []
    replays: dict[str, dict[str, Any]] = {}  # by bk2 path
    bolds: dict[str, list[tuple[str, np.ndarray]]] = {}
    names: set[str] = set()
    trs = {r["tr"] for r in loaded}
    if max(trs) - min(trs) > 1e-3:
        raise ValueError(
            f"The runs of {bids_root} have different RepetitionTimes {sorted(trs)}; one dataset "
            "needs one TR (FIR delays count TRs). Select subjects or runs with the same TR."
        )
    for r in loaded:
        prefix = f"{r['subject']}_{r['session']}" if r["session"] else r["subject"]
        run_id = f"{prefix}_run-{r['run']:02d}"
        if not r["segments"]:
            warnings.warn(
                f"{run_id} has no replay (every stim_file is missing); the run is left out of "
                "the encoding. To avoid this warning, leave the run out of the dataset.",
                UserWarning, stacklevel=3,
            )
            continue
        segments = []
        for seg in r["segments"]:
            bk2 = Path(seg.bk2_path)
            if seg.bk2_path not in replays:
                name = bk2.stem
                while name in names:  # the real names are unique; keep frame files apart anyway
                    name += "_"
                names.add(name)
                replays[seg.bk2_path] = {
                    "name": name, "bk2": str(bk2.relative_to(bids_root.resolve())),
                    "subject": r["subject"], "session": r["session"], "run": r["run"],
                    "level": seg.level, "onset": seg.onset_s,
                }
            segments.append({
                "replay": replays[seg.bk2_path]["name"], "onset": seg.onset_s, "level": seg.level,
                "n_frames_expected": seg.n_frames_expected,
            })
        n_vols = int(r["bold"].shape[0])
        runs.append({
            "run": run_id, "subject": r["subject"], "session": r["session"], "n_vols": n_vols,
            "tr": float(r["tr"]), "segments": segments,
        })
        bolds.setdefault(r["subject"], []).append((run_id, np.asarray(r["bold"], dtype=np.float32)))
    # the paper's order: subject, then level, then repetition (chronological: session, run, onset)
    ordered = sorted(
        replays.values(),
        key=lambda p: (p["subject"], _natural(p["level"]), p["session"], p["run"], p["onset"]),
    )
    for p in ordered:
        p["split"] = "val" if _val_draw(p["name"]) < val_fraction else "train"
    splits = [p["split"] for p in ordered]
    if len(ordered) >= 2 and "val" not in splits:  # at least one of each
        min(ordered, key=lambda p: _val_draw(p["name"]))["split"] = "val"
    if len(ordered) >= 2 and "train" not in splits:
        max(ordered, key=lambda p: _val_draw(p["name"]))["split"] = "train"
    return runs, ordered, bolds


def _count_frames(args: tuple[str, str]) -> tuple[str, int]:
    """Frames of one replay, from its bk2 (names the file if it is missing or corrupt)."""
    name, bk2 = args
    return name, gameplay.count_frames(bk2)


def _place_segments(runs: list[dict[str, Any]], n_frames: dict[str, int], log: Log) -> None:
    """Frames of each replay on its run: all of them, cut at the end of the run."""
    for run in runs:
        run_s = run["n_vols"] * run["tr"]
        for seg in run["segments"]:
            n = n_frames[seg["replay"]]
            if abs(n - seg["n_frames_expected"]) > FPS:
                log(
                    f"[gameplay] note: {seg['replay']} replays to {n} frames but its events say "
                    f"{seg['n_frames_expected']} (duration_bk2 x 60); the replayed frames are used"
                )
            seg["n_frames"] = max(0, min(n, int((run_s - seg["onset"]) * FPS)))


def _check_split(replays: list[dict[str, Any]], split: str, span: int, val_fraction: float) -> None:
    if not any(r["n_frames"] >= 2 * span for r in replays if r["split"] == split):
        n = sum(r["split"] == split for r in replays)
        raise ValueError(
            f"The {split!r} replays ({n} of {len(replays)}, data.val_fraction={val_fraction}) hold no "
            f"replay of at least two clips ({2 * span} frames): the GPT needs (previous, next) clip "
            "pairs to train and to validate. Add replays or change data.val_fraction."
        )


# ----------------------------------------------------------------------------- simulated


def _gameplay(d: DataSpec, root: Path, map_fn: MapFn, log: Log) -> list[dict[str, Any]]:
    """Record plays until each split has its frames; a play may end early (game over)."""
    want = {"train": d.train_replays * d.replay_frames, "val": d.val_replays * d.replay_frames}
    seed = d.seed * 10_000
    out: list[dict[str, Any]] = []
    for split in ("train", "val", "stim"):
        got, rounds, per_play = 0, 0, d.replay_frames
        while (missing := _stim_missing(d, out) if split == "stim" else want[split] - got) > 0:
            n = max(1, -(-missing // per_play))  # a play ends early at game over
            jobs = [(str(root), seed + i, d.replay_frames, d.game, d.policy, d.frame_size, split == "stim")
                    for i in range(n)]
            seed += n
            t0 = time.perf_counter()
            done = map_fn(_record, jobs)
            for r in done:
                r["split"] = split
            got += sum(r["n_frames"] for r in done)
            out.extend(done)
            played = [r["n_frames"] for r in out if r["split"] == split]
            per_play = max(1, int(np.mean(played)))
            rounds += 1
            left = max(_stim_missing(d, out) if split == "stim" else want[split] - got, 0)
            log(
                f"[gameplay] {split}: {len(done)} plays recorded, {got} frames, {left} still to record "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            if rounds > 20:
                raise RuntimeError(f"gameplay: could not record the {split} frames of {d.game} in 20 rounds")
    return out


def _stim_missing(d: DataSpec, replays: list[dict[str, Any]]) -> int:
    """Frames of gameplay the stimulus runs still lack, as :func:`_runs` packs them: a play cut at
    the end of a run is not continued in the next, so the runs need more than their length."""
    runs = _runs(d, replays)
    run_s = d.run_vols * d.tr
    placed = [sum(seg["n_frames"] for seg in r["segments"]) for r in runs]
    return sum(max(0, int(run_s * FPS) - 60 - p) for p in placed)  # within a second of full is full


def _runs(d: DataSpec, replays: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place stimulus plays back to back on runs of ``run_vols`` volumes."""
    run_s = d.run_vols * d.tr
    stim = [r for r in replays if r["split"] == "stim"]
    runs, i = [], 0
    for k in range(d.n_runs):
        segments, t = [], 0.0
        while i < len(stim) and t < run_s - 1.0:
            dur = stim[i]["n_frames"] / FPS
            keep = min(stim[i]["n_frames"], int((run_s - t) * FPS))
            segments.append({"replay": stim[i]["name"], "onset": t, "n_frames": keep})
            t += dur
            i += 1
        runs.append({"run": f"run-{k + 1:02d}", "n_vols": d.run_vols, "segments": segments})
    return runs


def run_stimulus(root: Path, run: dict[str, Any], n_vols: int, tr: float) -> simbrain.RunStimulus:
    """The 60 Hz stimulus of one run: its plays at their onsets, a blank screen between."""
    store = video.FrameStore(root / "frames")
    frames, actions, rewards, states = [], [], [], []
    for seg in run["segments"]:
        path = root / "actions" / f"{seg['replay']}.npz"
        with reading(path):
            act = dict(np.load(path))
        frames.append(np.asarray(store.open(seg["replay"])[: seg["n_frames"]]))
        actions.append(act["actions"][: seg["n_frames"]])
        rewards.append(act["rewards"][: seg["n_frames"]])
        states.append(act["state"][: seg["n_frames"]] if "state" in act else None)
    return simbrain.RunStimulus(
        frames=frames, actions=actions, rewards=rewards, fps=FPS,
        onsets=[seg["onset"] for seg in run["segments"]], duration=n_vols * tr,
        state=states if all(s is not None for s in states) else None,
    )


def _brain(d: DataSpec, root: Path, runs: list[dict[str, Any]], log: Log) -> None:
    stimuli = [run_stimulus(root, r, d.run_vols, d.tr) for r in runs]
    if all(s.state is not None for s in stimuli):
        fractions = simbrain.GAME_FRACTIONS
    else:
        fractions = simbrain.SimBrainConfig().fractions
        log(f"[brain] brainray.gamestate cannot read {d.game} screens (it reads {list(gamestate.GAMES)}): "
            f"no {'/'.join(simbrain.STATE_TYPES)} parcels, only pixel-driven ones")
    config = simbrain.SimBrainConfig(n_parcels=d.n_parcels, tr=d.tr, seed=d.seed, fractions=dict(fractions))
    for subject in simbrain.SUBJECTS[: d.n_subjects]:
        data = simbrain.simulate_subject(stimuli, subject, config)
        data.save(root / "brain" / subject)
        log(
            f"[brain] {subject}: {len(runs)} runs x {d.run_vols} volumes x {d.n_parcels} parcels, "
            f"mean noise ceiling r={float(np.mean(data.ceiling)):.3f}"
        )


def _tokenize(tk: TokenizerSpec, d: DataSpec, root: Path, replays: list[dict[str, Any]], log: Log) -> dict:
    """Train the VQ-VAE once on the clips of the training plays, then tokenize every play, all
    streamed on Ray Data (``brainray.stream``): no training frame is stored."""
    config = vqvae.VQVAEConfig(
        clip_frames=tk.clip_frames,
        frame_size=d.frame_size,
        downsample=tuple(tk.downsample),
        n_hiddens=tk.n_hiddens,
        n_res_layers=tk.n_res_layers,
        n_codes=tk.n_codes,
        embedding_dim=tk.embedding_dim,
        lr=tk.lr,
    )
    clips = stream.Clips(d.frame_size, tk.clip_frames, tk.time_downsample)
    plays = _plays(root, d, replays)
    train = [p for p, r in zip(plays, replays) if r["split"] == "train"]
    with stream.ray_session():
        base = stream.training_clips(train, clips, tk.cache_mb * 2**20, log)
        model, metrics, examples = stream.train_tokenizer(
            base, stream.n_clips(train, clips), clips, config, tk.steps, tk.batch_size,
            d.seed, root / CHECKPOINT, log,
        )
        vqvae.save_vqvae(model, root / "vqvae.pt")
        vqvae.save_reconstructions_png(model, examples, root / "reconstructions.png")
        rest = [p for p, r in zip(plays, replays) if r["split"] != "train"]
        stream.write_tokens(base.union(stream.clip_stream(rest, clips)) if rest else base, train + rest,
                            root / "vqvae.pt", functools.partial(_save_tokens, root), config.latent_shape, log)
    (root / CHECKPOINT).unlink(missing_ok=True)
    log(
        f"[tokenizer] PSNR {metrics['psnr']:.1f} dB (mean frame {metrics['psnr_baseline']:.1f} dB; sprites "
        f"{metrics['psnr_foreground']:.1f} dB, mean frame {metrics['psnr_foreground_baseline']:.1f} dB), perplexity "
        f"{metrics['perplexity']:.1f} of {tk.n_codes} codes, {metrics['dead_codes']} dead; tokenized {len(replays)} plays"
    )
    return {
        **dataclasses.asdict(tk),
        "latent_shape": list(config.latent_shape),
        "tokens_per_clip": int(config.tokens_per_clip),
        "metrics": {k: float(v) if math.isfinite(v) else None for k, v in metrics.items()},
    }


def _plays(root: Path, d: DataSpec, replays: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the streams need of each replay: its bk2 (under the BIDS root for cneuromod), and its
    frame store where its frames are kept (simulated stimulus plays)."""
    store = video.FrameStore(root / "frames")
    bk2_root = Path(d.bids_root) if d.source == "cneuromod" else root
    return [
        {"name": r["name"], "bk2": str(bk2_root / r["bk2"]), "game": d.game, "n_frames": int(r["n_frames"]),
         "frames": str(store.root) if r["name"] in store else ""}
        for r in replays
    ]


def _save_tokens(root: Path, name: str, codes: np.ndarray) -> None:
    """Write one play's codes to a temp name, then rename: a crash leaves no truncated file
    (completeness checks existence only)."""
    path = root / "tokens" / f"{name}.npy"
    tmp = path.with_name(f".{name}.npy.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, codes)
    tmp.replace(path)


def _retokenize(root: Path, manifest: dict[str, Any], names: list[str], log: Log) -> None:
    """Code the plays ``names`` again with the dataset's own VQ-VAE (the tokens they had),
    regenerating their frames from their bk2."""
    d, tk = DataSpec(**manifest["data"]), manifest["tokenizer"]
    wanted = set(names)
    plays = [p for p in _plays(root, d, manifest["replays"]) if p["name"] in wanted]
    clips = stream.Clips(d.frame_size, tk["clip_frames"], tk["time_downsample"])
    with stream.ray_session():
        stream.write_tokens(stream.clip_stream(plays, clips), plays, root / "vqvae.pt",
                            functools.partial(_save_tokens, root), tuple(tk["latent_shape"]), log)
