"""The streaming prepare (``brainray.stream``) on real Ray Data: clips regenerated from bk2 files
are the frames' clips, the streamed tokenizer learns as the in-memory one does, and a prepare
killed with SIGKILL while its tokenizer trains resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from brainray import gameplay, prepare as prep, stream, video, vqvae
from brainray.config import load_spec

CLIPS = stream.Clips(frame_size=16, clip_frames=8, time_downsample=4)


@pytest.fixture(scope="module")
def plays(tmp_path_factory) -> list[dict]:
    """Three recorded Airstriker plays (bk2 only), as the streams see them."""
    root = tmp_path_factory.mktemp("plays")
    out = []
    for seed in range(3):
        bk2 = gameplay.record_play(root / f"play-{seed}.bk2", 700, seed=seed)
        out.append({"name": f"play-{seed}", "bk2": str(bk2), "game": gameplay.DEFAULT_GAME,
                    "n_frames": gameplay.count_frames(bk2), "frames": ""})
    return out


def _in_memory(play: dict) -> np.ndarray:
    frames = gameplay.replay(play["bk2"], size=CLIPS.frame_size).frames
    return video.get_clips(frames, video.clip_starts(len(frames), CLIPS.clip_frames, CLIPS.time_downsample),
                           CLIPS.clip_frames, CLIPS.time_downsample)


@pytest.mark.slow
def test_the_stream_regenerates_the_clips_of_the_frames_and_the_tokenizer_learns_as_in_memory(plays, tmp_path):
    config = vqvae.VQVAEConfig(clip_frames=8, frame_size=16, downsample=(4, 4, 4), n_hiddens=16, n_codes=32,
                               embedding_dim=16, lr=1e-3)
    clips = np.concatenate([_in_memory(p) for p in plays])
    with stream.ray_session():
        rows = list(stream.clip_stream(plays, CLIPS).iter_rows())
        assert [(r["name"], r["index"]) for r in rows] == [
            (p["name"], i) for p in plays for i in range(p["n_frames"] // CLIPS.span)
        ]  # every clip, in play order
        assert np.array_equal(np.stack([r["clip"] for r in rows]), clips)  # exactly the frames' clips
        for cache in (0, 2**30):  # streamed at every epoch, and replayed once into the object store
            base = stream.training_clips(plays, CLIPS, cache, log=lambda m: None)
            _, streamed, _ = stream.train_tokenizer(base, len(clips), CLIPS, config, 60, 8, 0,
                                                    tmp_path / f"ckpt-{cache}", log=lambda m: None, holdout=6)
            assert streamed["heldout"] and streamed["eval_clips"] == sum(
                stream.draw(r["name"], r["index"]) < 6 / len(clips) for r in rows)
            if cache:
                assert streamed == {**cached, "wall_s": streamed["wall_s"]}  # the cache changes nothing
            cached = streamed
    _, memory = vqvae.train_vqvae(clips, config, steps=60, batch_size=8, seed=0, holdout=6)
    # the same steps on the same clips in another order: the same quality
    assert abs(streamed["psnr"] - memory["psnr"]) < 0.5, (streamed, memory)


_KILLED = """
import sys, torch
torch.set_num_threads(1)
from brainray.config import load_spec
from brainray.prepare import prepare
prepare(load_spec("smoke"), sys.argv[1], log=lambda m: print(m, flush=True))
"""


@pytest.mark.slow
def test_a_prepare_killed_while_its_tokenizer_trains_resumes_from_its_checkpoint(tiny_dataset, tmp_path):
    root = tmp_path / tiny_dataset.root.name
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (root / prep.CHECKPOINT).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the prepare ended before it checkpointed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / prep.MANIFEST).exists()  # killed: not a dataset
    logs: list[str] = []
    ds = prep.prepare(load_spec("smoke"), root, log=logs.append)
    assert any("resuming from" in line for line in logs), logs
    assert not (root / prep.CHECKPOINT).exists()  # removed once the tokenizer is saved
    # it ends where the uninterrupted prepare ended: the same tokenizer, hence the same tokens
    assert ds.manifest["tokenizer"]["metrics"] | {"wall_s": 0} == tiny_dataset.manifest["tokenizer"]["metrics"] | {"wall_s": 0}
    for r in tiny_dataset.manifest["replays"]:
        assert np.array_equal(ds.tokens(r["name"]), tiny_dataset.tokens(r["name"]))


@pytest.mark.slow
def test_on_a_cluster_with_a_gpu_the_tokenizer_trains_and_codes_on_the_gpu_node(plays, tmp_path):
    """The head has no GPU, a worker node has one (Ray's resource; torch falls back to the CPU here):
    the training runs in a task on that node, and the tokens come from GPU actors."""
    import ray
    from ray.cluster_utils import Cluster

    config = vqvae.VQVAEConfig(clip_frames=8, frame_size=16, downsample=(4, 4, 4), n_hiddens=16, n_codes=32,
                               embedding_dim=16, lr=1e-3)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        from ray.util.queue import Queue

        lines = Queue(actor_options={"num_cpus": 0})  # as the sweep's prepare task logs: from any node
        n = stream.n_clips(plays, CLIPS)
        model, _, _ = stream.train_tokenizer(stream.training_clips(plays, CLIPS, 0, lines.put), n, CLIPS, config,
                                             4, 8, 0, tmp_path / "ckpt", lines.put, holdout=6)
        logs = [lines.get() for _ in range(lines.qsize())]
        assert any("on a GPU worker" in line for line in logs), logs
        ran = next(line for line in logs if line.startswith("[tokenizer] training the VQ-VAE"))
        assert f"(node {gpu_node.node_id[:12]})" in ran  # not on the CPU-only head
        vqvae.save_vqvae(model, tmp_path / "vqvae.pt")
        saved: dict[str, np.ndarray] = {}
        stream.write_tokens(stream.clip_stream(plays, CLIPS), plays, tmp_path / "vqvae.pt", saved.__setitem__,
                            config.latent_shape, logs.append)  # here, in the driver
        assert any("on 1 GPU actor(s)" in line for line in logs), logs
        for p in plays:  # the actors' codes are the model's codes
            assert np.array_equal(saved[p["name"]], vqvae.tokenize(model, _in_memory(p)))
    finally:
        ray.shutdown()
        cluster.shutdown()
