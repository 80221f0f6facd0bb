"""ood_core.outputs_cache: the forward pass kept on disk per (model, data), read back by the next run."""
from __future__ import annotations

import numpy as np
import pytest

from ood_core import Spec, TrainConfig, outputs_cache, pipeline
from ood_core.data import Split
from ood_core.inference import Outputs
from ood_core.models.checkpoint import state_dict_sha256

TINY = Spec(seed=5, training=TrainConfig(epochs=1))


def _outputs(dim: int, n: int = 6) -> dict[str, Outputs]:
    rng = np.random.default_rng(dim)
    return {"test": Outputs(rng.standard_normal((n, 3)).astype(np.float32),
                            rng.standard_normal((n, dim)).astype(np.float32), np.arange(n),
                            None, {"model_score": rng.standard_normal(n)})}


class _Bench:
    """The little of a Benchmark that outputs_cache reads."""

    def __init__(self, n: int = 6):
        self.spec, self.fingerprint = Spec(), "fp"
        self._split = Split(np.zeros((n, 1, 2, 2), np.float32), np.zeros(n, np.int64))

    def splits(self):
        return {"test": self._split}


@pytest.mark.parametrize("dim, dtype", [(8, np.float32), (1024, np.float16)])
def test_save_and_load_round_trip_with_float16_from_1024_dimensions(tmp_path, dim, dtype):
    outs = _outputs(dim)
    bench = _Bench()
    key = outputs_cache.outputs_key("model-a", bench)
    assert outputs_cache.save(tmp_path, key, outs)
    with np.load(tmp_path / "outputs" / f"{key}.npz") as z:
        assert z["test/features"].dtype == dtype and z["test/logits"].dtype == np.float32
    back = outputs_cache.load(tmp_path, key, bench)["test"]
    stored = outputs_cache.as_stored(outs)["test"]  # a fresh pass is rounded alike: the same numbers either way
    np.testing.assert_array_equal(back.features, stored.features)
    np.testing.assert_array_equal(back.logits, outs["test"].logits)
    np.testing.assert_array_equal(back.extras["model_score"], outs["test"].extras["model_score"])
    assert back.features.dtype == np.float32 and back.inputs is bench.splits()["test"].images
    if dim < outputs_cache.FLOAT16_FROM_DIM:
        np.testing.assert_array_equal(stored.features, outs["test"].features)  # unchanged below 1,024
    else:
        np.testing.assert_allclose(stored.features, outs["test"].features, rtol=1e-3, atol=1e-4)
    assert outputs_cache.outputs_key("model-b", bench) != key  # another model, another key


def test_a_damaged_file_is_ignored(tmp_path):
    bench = _Bench()
    key = outputs_cache.outputs_key("m", bench)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / f"{key}.npz").write_bytes(b"not an npz")
    assert outputs_cache.load(tmp_path, key, bench) is None


def test_the_second_prepare_reads_the_forward_pass_and_a_retrained_model_does_not(tmp_path, monkeypatch):
    first = pipeline.prepare(TINY, cache_dir=tmp_path, device="cpu")
    assert len(list((tmp_path / "outputs").glob("*.npz"))) == 1

    def no_forward(*args, **kwargs):
        raise AssertionError("the forward pass ran again")

    monkeypatch.setattr(pipeline, "compute_outputs", no_forward)
    second = pipeline.prepare(TINY, cache_dir=tmp_path, device="cpu")
    for name in first.outputs:
        np.testing.assert_array_equal(second.outputs[name].logits, first.outputs[name].logits)
        np.testing.assert_array_equal(second.outputs[name].features, first.outputs[name].features)
    assert second.outputs["test"].inputs is second.bench.test.images
    monkeypatch.undo()
    other = TINY.replace(seed=6)  # other weights on other data: another file
    pipeline.prepare(other, cache_dir=tmp_path, device="cpu")
    assert len(list((tmp_path / "outputs").glob("*.npz"))) == 2
    # the key follows the weights: a model whose weights differ is another one, on the same data
    state = first.model.state_dict()
    key = outputs_cache.outputs_key(state_dict_sha256(state), first.bench)
    assert (tmp_path / "outputs" / f"{key}.npz").is_file()
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    assert outputs_cache.outputs_key(state_dict_sha256(changed), first.bench) != key
