"""The training estimates' correction by what trainings took on this machine (ood_core/timings.py): the records,
the factor (a median of measured / estimated, own model first), and the estimates that use it."""
from __future__ import annotations

import json
import types

import pytest

from ood_core import Spec, TrainConfig, estimates, timings
from ood_core.data import build_benchmark
from ood_core.models import checkpoint, get_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def times(tmp_path, monkeypatch):
    """Estimates corrected by the records of a folder of the test's own; the rates alone again afterwards."""
    monkeypatch.setattr(estimates, "_times_dir", None)
    estimates.use_training_times(tmp_path)
    return tmp_path


def _add(folder, model, estimated, measured, kind=timings.CPU):
    assert timings.record(folder, model, estimated, measured, kind)


GPU = "cuda NVIDIA Test GPU"  # a device_kind as a CUDA machine writes it


def test_no_record_means_the_rates_alone(tmp_path):
    assert timings.speed_factor("small_cnn", tmp_path) == (1.0, 0, False)
    assert timings.speed_factor("small_cnn", None) == (1.0, 0, False)


def test_factor_is_the_median_ratio_of_the_models_own_recent_trainings(tmp_path):
    for est, meas in [(10, 5), (10, 10), (10, 40)]:  # ratios 0.5, 1, 4: median 1
        _add(tmp_path, "small_cnn", est, meas)
    assert timings.speed_factor("small_cnn", tmp_path) == (1.0, 3, True)
    _add(tmp_path, "small_cnn", 10, 30)  # ratios 0.5, 1, 3, 4: median (1 + 3) / 2
    assert timings.speed_factor("small_cnn", tmp_path) == (2.0, 4, True)
    # only the last RECENT of them count: after RECENT trainings at ratio 0.25 the old ones are gone
    for _ in range(timings.RECENT):
        _add(tmp_path, "small_cnn", 8, 2)
    assert timings.speed_factor("small_cnn", tmp_path) == (0.25, timings.RECENT, True)


def test_a_model_not_timed_here_takes_every_models_recent_trainings(tmp_path):
    _add(tmp_path, "small_cnn", 10, 5)   # 0.5
    _add(tmp_path, "deep_svdd", 4, 6)    # 1.5
    _add(tmp_path, "small_cnn", 10, 20)  # 2
    assert timings.speed_factor("lsa", tmp_path) == (1.5, 3, False)
    assert timings.speed_factor("deep_svdd", tmp_path) == (1.5, 1, True)


def test_short_trainings_are_not_recorded_and_factors_are_bounded(tmp_path):
    assert not timings.record(tmp_path, "small_cnn", 1.0, 10.0)
    assert not timings.record(tmp_path, "small_cnn", 10.0, 0.5)
    assert timings.records(tmp_path) == []
    _add(tmp_path, "small_cnn", 2, 2000)  # a suspended laptop, not a speed
    assert timings.speed_factor("small_cnn", tmp_path)[0] == timings.BOUNDS[1]


def test_each_device_is_corrected_by_its_own_trainings_alone(tmp_path):
    _add(tmp_path, "small_cnn", 10, 20)            # the CPU: twice the rates
    _add(tmp_path, "small_cnn", 10, 0.5, GPU)      # the GPU: a twentieth
    _add(tmp_path, "deep_svdd", 10, 1.0, GPU)
    assert timings.speed_factor("small_cnn", tmp_path) == (2.0, 1, True)
    assert timings.speed_factor("small_cnn", tmp_path, GPU) == (0.05, 1, True)
    assert timings.speed_factor("lsa", tmp_path, GPU) == (pytest.approx(0.075), 2, False)  # median of 0.05 and 0.1
    assert timings.speed_factor("small_cnn", tmp_path, "cuda Another GPU") == (1.0, 0, False)
    assert [r["device"] for r in timings.records(tmp_path)] == ["cpu", GPU, GPU]


def test_records_written_before_devices_were_told_apart_are_the_cpus(tmp_path):
    rows = [{"model": "small_cnn", "estimated_s": 10, "measured_s": 5, "utc": "2026-11-29T00:00:00+00:00"}]
    (tmp_path / timings.TIMES_FILE).write_text(json.dumps({"trainings": rows}))
    assert timings.speed_factor("small_cnn", tmp_path) == (0.5, 1, True)
    assert timings.speed_factor("small_cnn", tmp_path, GPU) == (1.0, 0, False)


def test_a_gpu_records_short_trainings_and_may_be_much_faster(tmp_path):
    assert not timings.record(tmp_path, "small_cnn", 1.0, 0.5, GPU)  # the rates call it short: start-up, mostly
    assert not timings.record(tmp_path, "small_cnn", 10.0, 0.1, GPU)  # under MIN_GPU_SECONDS
    assert not timings.record(tmp_path, "small_cnn", 10.0, 1.0)  # on the CPU, 1 s is too short to say much
    _add(tmp_path, "resnet18_cifar", 600, 3.0, GPU)  # 200 times the rates: a big network on a big GPU
    assert timings.speed_factor("resnet18_cifar", tmp_path, GPU)[0] == pytest.approx(0.005)
    _add(tmp_path, "resnet18_cifar", 600, 3.0)  # the same ratio on the CPU is clipped: not a CPU's speed
    assert timings.speed_factor("resnet18_cifar", tmp_path)[0] == timings.BOUNDS[0]


def test_the_file_keeps_the_newest_records_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setattr(timings, "KEEP", 3)
    for i in range(5):
        _add(tmp_path, "small_cnn", 10, 10 + i)
    assert [r["measured_s"] for r in timings.records(tmp_path)] == [12, 13, 14]
    (tmp_path / timings.TIMES_FILE).write_text("{not json")
    assert timings.records(tmp_path) == [] and timings.speed_factor("small_cnn", tmp_path) == (1.0, 0, False)
    _add(tmp_path, "small_cnn", 10, 5)  # the damaged file is replaced
    data = json.loads((tmp_path / timings.TIMES_FILE).read_text())
    assert [(r["model"], r["estimated_s"], r["measured_s"]) for r in data["trainings"]] == [("small_cnn", 10, 5)]


def test_a_folder_that_cannot_be_written_records_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert not timings.record(blocker / "cache", "small_cnn", 10, 10)  # its parent is a file
    assert timings.speed_factor("small_cnn", blocker / "cache") == (1.0, 0, False)


def test_training_estimate_is_corrected_and_says_so(times):
    spec = Spec()
    ref = estimates.reference_training(spec, 1000)
    assert estimates.training(spec, 1000) == ref  # nothing timed yet
    _add(times, "small_cnn", 10, 4)
    est = estimates.training(spec, 1000)
    assert est.seconds == pytest.approx(0.4 * ref.seconds)
    assert est.what == f"{ref.what} (x0.4 the reference rates, as 1 training of this model on this machine took)"
    # another model borrows the machine's speed, and the words say whose trainings it rests on
    svdd = Spec(setting="nd", model="deep_svdd", normal_class=0)
    assert estimates.training(svdd, 300).seconds == pytest.approx(
        0.4 * estimates.reference_training(svdd, 300).seconds)
    assert "as 1 training of other models on this machine took" in estimates.training(svdd, 300).what
    # the Methods cards speak of the 2-core machine: not corrected
    estimates.use_training_times(None)
    words = estimates.cost_words("rpl")
    estimates.use_training_times(times)
    assert estimates.cost_words("rpl") == words


def test_on_a_gpu_the_estimate_uses_that_gpus_trainings_and_says_so(times, monkeypatch):
    monkeypatch.setattr(timings, "device_kind", lambda device=None: GPU)
    spec = Spec()
    ref = estimates.reference_training(spec, 1000)
    _add(times, "small_cnn", 10, 4)  # a CPU training in the same folder: not this GPU's speed
    est = estimates.training(spec, 1000)
    assert est.seconds == ref.seconds
    assert est.what == (f"{ref.what} (at the rates of 2 CPU cores: this GPU is likely several times faster until "
                        "its own trainings are timed)")
    _add(times, "small_cnn", 10, 0.8, GPU)
    est = estimates.training(spec, 1000)
    assert est.seconds == pytest.approx(0.08 * ref.seconds)
    assert est.what == f"{ref.what} (x0.08 the reference rates, as 1 training of this model on this GPU took)"


def test_one_vs_all_estimate_corrects_each_model_by_its_own_trainings(times):
    base = Spec(setting="nd", model="deep_svdd", normal_class=0)
    methods = [("deep_svdd", "deep_svdd", {}), ("autoencoder", "autoencoder", {})]
    before = estimates.one_class(base, "nd", 0.0, [0, 1], methods, 300, cache_dir=times)
    _add(times, "deep_svdd", 10, 20)   # Deep SVDD trains twice as long here
    _add(times, "autoencoder", 10, 5)  # the autoencoder half as long
    after = estimates.one_class(base, "nd", 0.0, [0, 1], methods, 300, cache_dir=times)
    fixed = estimates.ONE_CLASS_METHOD_S * 2 * 2
    per = {m: estimates._seconds_per_image(m) * 300 * estimates._size(base, m) for m in ("deep_svdd", "autoencoder")}
    assert before.seconds == pytest.approx(fixed + 2 * (per["deep_svdd"] + per["autoencoder"]))
    assert after.seconds == pytest.approx(fixed + 2 * (2 * per["deep_svdd"] + 0.5 * per["autoencoder"]))


def test_a_cpu_training_records_its_time_beside_the_rates_estimate(tmp_path, monkeypatch):
    """get_model notes each CPU training: the estimate is the rates' for its own benchmark's training images."""
    monkeypatch.setattr(timings, "MIN_SECONDS", 0.0)
    specs = [Spec(image_size=8, training=TrainConfig(epochs=1, batch_size=256)),
             Spec(setting="nd", model="deep_svdd", normal_class=3, image_size=8)]
    for spec in specs:
        bench = build_benchmark(spec, ood_sets=())
        result = get_model(spec, bench, cache_dir=tmp_path, device="cpu")
        rec = timings.records(tmp_path)[-1]
        assert rec["model"] == spec.model
        assert rec["measured_s"] == pytest.approx(result.seconds, abs=1e-3)
        assert rec["estimated_s"] == pytest.approx(estimates.reference_training(spec, len(bench.train)).seconds,
                                                   abs=1e-3)
    # the one-class model's estimate counts its normal class's training images only
    assert len(build_benchmark(specs[1], ood_sets=()).train) < len(build_benchmark(specs[0], ood_sets=()).train)
    # loading from the cache records nothing
    get_model(specs[0], build_benchmark(specs[0], ood_sets=()), cache_dir=tmp_path, device="cpu")
    assert len(timings.records(tmp_path)) == 2
    assert {r["device"] for r in timings.records(tmp_path)} == {"cpu"}


def test_a_gpu_training_is_recorded_as_that_gpus(tmp_path, monkeypatch):
    """get_model's note of a training names its device kind (a CUDA one here, its name faked: no GPU in CI)."""
    seen = []
    monkeypatch.setattr(timings, "device_kind", lambda device=None: seen.append(device) or GPU)
    spec = Spec()  # the default experiment: the rates give its training more than MIN_SECONDS
    bench = build_benchmark(spec, ood_sets=())
    assert estimates.reference_training(spec, len(bench.train)).seconds > timings.MIN_SECONDS
    result = types.SimpleNamespace(seconds=1.5)
    checkpoint._record_time(spec, bench, result, "cuda:0", tmp_path)
    (rec,) = timings.records(tmp_path)
    assert seen == ["cuda:0"] and rec["device"] == GPU and rec["measured_s"] == 1.5
    assert rec["estimated_s"] == pytest.approx(estimates.reference_training(spec, len(bench.train)).seconds, abs=1e-3)


def test_device_kind_of_the_cpu():
    assert timings.device_kind("cpu") == "cpu"


def test_a_bad_ood_device_leaves_the_estimate_on_the_cpus_records(times, monkeypatch):
    _add(times, "small_cnn", 10, 5)
    monkeypatch.setenv("OOD_DEVICE", "tpu")  # the training says what is wrong with it; the estimate goes on
    spec = Spec()
    ref = estimates.reference_training(spec, 1000).seconds
    assert estimates.training(spec, 1000).seconds == pytest.approx(0.5 * ref)
