"""Same spec, same weights: generators owned by the training call, a fixed training thread count.

Every expectation is recomputed from a training in this process (never a stored weight): a training beside
other trainings, in another thread, or under another OMP_NUM_THREADS must give exactly the weights it gives alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ood_core import Spec, TrainConfig
from ood_core.data import build_benchmark
from ood_core.models import get_model
from ood_core.models.cnn import SmallCNN
from ood_core.models.reproducible import TRAIN_THREADS, SeededDropout, seeded_init_, training_threads, use_generator

ROOT = Path(__file__).resolve().parents[1]
SPEC = Spec(image_size=8, training=TrainConfig(epochs=2, batch_size=256))
SVDD = Spec(setting="nd", model="deep_svdd", image_size=8, training=TrainConfig(epochs=2, batch_size=256))


def _weights(spec: Spec, cache) -> dict[str, np.ndarray]:
    res = get_model(spec, build_benchmark(spec, ()), cache_dir=cache, device="cpu", retrain=True)
    return {k: v.detach().numpy().copy() for k, v in res.model.state_dict().items()}


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_seeded_init_ignores_the_global_generator():
    torch.manual_seed(1)
    a = seeded_init_(SmallCNN(1, 10), torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    b = seeded_init_(SmallCNN(1, 10), torch.Generator().manual_seed(5))
    c = seeded_init_(SmallCNN(1, 10), torch.Generator().manual_seed(6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])


def test_seeded_init_follows_pytorch_default_ranges():
    m = seeded_init_(nn.Linear(100, 7), torch.Generator().manual_seed(0))
    # kaiming_uniform(a=sqrt(5)) on fan_in 100: bound = sqrt(6 / ((1 + 5) * 100)) = 0.1; bias bound 1/sqrt(100)
    assert m.weight.abs().max() <= 0.1 and m.weight.abs().max() > 0.09
    assert m.bias.abs().max() <= 0.1 and m.bias.std() > 0.01
    bn = seeded_init_(nn.BatchNorm2d(3), torch.Generator())
    assert torch.equal(bn.weight, torch.ones(3)) and torch.equal(bn.bias, torch.zeros(3))


def test_seeded_init_refuses_a_layer_it_cannot_seed():
    with pytest.raises(TypeError, match="Embedding"):
        seeded_init_(nn.Sequential(nn.Embedding(4, 2)), torch.Generator())


def test_seeded_dropout_draws_its_mask_from_the_generator():
    x = torch.ones(4, 50)
    d = SeededDropout(0.5).train()
    use_generator(d, torch.Generator().manual_seed(3))
    got = d(x)
    keep = torch.empty(4, 50).bernoulli_(0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, keep * 2.0)
    assert torch.equal(d.eval()(x), x)  # the identity at evaluation
    assert isinstance(d, nn.Dropout) and d.state_dict() == {}  # checkpoints and MC dropout see plain dropout


def test_training_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with training_threads() as n:
        assert n == TRAIN_THREADS and torch.get_num_threads() == TRAIN_THREADS
        with training_threads():  # nested (or concurrent) trainings keep the count
            pass
        assert torch.get_num_threads() == TRAIN_THREADS
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("spec", [SPEC, SVDD], ids=["small_cnn", "deep_svdd"])
def test_three_trainings_at_once_give_the_weights_of_each_alone(spec, tmp_path):
    seeds = (11, 12, 13)
    alone = {s: _weights(spec.with_seed(s), tmp_path / "alone") for s in seeds}
    together, errors = {}, []

    def work(s):
        try:
            together[s] = _weights(spec.with_seed(s), tmp_path / "together")
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for s in seeds:
        _assert_identical(alone[s], together[s])
    assert not np.array_equal(alone[11]["body.0.weight" if spec is SPEC else "encoder.0.weight"],
                              alone[12]["body.0.weight" if spec is SPEC else "encoder.0.weight"])


CHILD = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from ood_core import Spec, TrainConfig
from ood_core.data import build_benchmark
from ood_core.models import get_model
spec = Spec(image_size=8, training=TrainConfig(epochs=2, batch_size=256))
res = get_model(spec, build_benchmark(spec, ()), cache_dir={cache!r}, device="cpu", retrain=True)
np.savez({out!r}, **{{k: v.numpy() for k, v in res.model.state_dict().items()}})
"""


@pytest.mark.slow
def test_another_omp_thread_count_gives_the_same_weights(tmp_path):
    out = tmp_path / "child.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    code = CHILD.format(root=str(ROOT), cache=str(tmp_path / "c"), out=str(out))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    with np.load(out) as z:
        child = {k: z[k] for k in z.files}
    _assert_identical(child, _weights(SPEC, tmp_path / "here"))
