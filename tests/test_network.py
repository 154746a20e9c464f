"""The network's layout (defined once, in ranker.runtime.network), its numpy forward pass
against torch's, the .npz weights format, and that a CPU job never imports torch."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import R5, ROOT, SIM
from ranker.runtime import model as modelmod
from ranker.runtime.class2d import read_class2d
from ranker.runtime.features import compute_features
from ranker.runtime.model import DEFAULT_MODEL, ModelError, build_net, load_model, network_images, save_model
from ranker.runtime.network import param_shapes
from ranker.runtime.particles import scan_particles

EXAMPLE = os.path.join(ROOT, "examples", "class2d_sim")


def test_torch_module_has_the_layout_defined_in_network_py():
    state = build_net().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == param_shapes()
    assert list(state) == list(param_shapes())  # same order: RELION's


def _fixture_classes(root):
    """(vectors, network images) of a fixture project's scored classes, as the job makes them."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        opt = next(os.path.join("Class2D/job002", f) for f in sorted(os.listdir("Class2D/job002"))
                   if f.endswith("_optimiser.star"))
        job = read_class2d(opt)
        parts = scan_particles(job.data_path)
        fs = compute_features(job, job.load_images(), parts.n_particles, parts.optics, parts.last_row)
    finally:
        os.chdir(cwd)
    return fs.vectors, fs.images


def _torch_scores(ranker, vectors, images):
    """The networks' own scores through torch (float32), as the job scored before numpy."""
    x = torch.from_numpy(network_images(images, ranker.image_norm))[:, None]
    with torch.inference_mode():
        logits = torch.stack([net(x, torch.from_numpy(vectors))[:, 0] for net in ranker.members])
    return (torch.sigmoid(logits) if ranker.output == "sigmoid" else logits).mean(0).numpy()


@pytest.mark.parametrize("root", [EXAMPLE, SIM, R5], ids=["example", "fixture_sim", "fixture_relion5"])
def test_numpy_and_torch_forward_passes_agree_on_the_shipped_weights(root):
    ranker = load_model(None, device="cpu")
    assert ranker.engine == "numpy" and len(ranker.states) == 3
    vectors, images = _fixture_classes(root)
    ours = ranker.network_scores(vectors, images)
    assert np.abs(ours - _torch_scores(ranker, vectors, images)).max() < 1e-5
    # batches of any size give the same scores
    assert np.abs(ranker.network_scores(vectors, images, batch=3) - ours).max() < 1e-6


def test_numpy_forward_pass_matches_torch_with_tta_and_raw_images(tmp_path):
    torch.manual_seed(5)
    save_model([build_net(), build_net()], str(tmp_path / "m.npz"), card={}, tta=True)
    r = load_model(str(tmp_path / "m.npz"), device="cpu")
    rng = np.random.default_rng(3)
    v, im = rng.normal(size=(11, 24)).astype(np.float32), rng.normal(size=(11, 64, 64)).astype(np.float32)
    views = [np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1))) for x in (im, im[..., ::-1]) for k in range(4)]
    expected = np.mean([_torch_scores(r, v, x) for x in views], axis=0)
    assert np.abs(r.network_scores(v, im) - expected).max() < 1e-5


def test_precomputed_images_are_not_run_again_and_give_the_same_scores(test_model):
    r = load_model(test_model, device="cpu")
    rng = np.random.default_rng(4)
    v, im = rng.normal(size=(9, 24)).astype(np.float32), rng.normal(size=(9, 64, 64)).astype(np.float32)
    plain = r.score(v, im)
    assert r.precompute(im[2:]) == 7 and r.precomputed(im) == 7
    assert np.array_equal(r.score(v, im), plain)
    r.states[0]["feature_extractor.0.bias"][:] += 1  # precomputed image vectors are what is used
    r._numpy_nets = None
    changed = r.score(v, im)
    assert not np.allclose(changed[:2], plain[:2]) and np.array_equal(changed[2:], plain[2:])


def test_shipped_weights_are_npz_and_the_pt_conversion_is_exact(tmp_path):
    assert DEFAULT_MODEL.endswith(".npz") and modelmod._is_npz(DEFAULT_MODEL)
    torch.manual_seed(6)
    nets = [build_net(), build_net()]
    pt, npz = str(tmp_path / "m.pt"), str(tmp_path / "m.npz")
    save_model(nets, pt, card={"k": 1}, image_norm="per_image", logit_shift=0.25, job_context=[0.5, 0.6, 0.8, 0.5])
    a = load_model(pt, device="cpu")
    save_model(a.states, npz, a.card, output=a.output, tta=a.tta, image_norm=a.image_norm,
               logit_shift=a.logit_shift, job_context=a.job_context)
    b = load_model(npz, device="cpu")
    for sa, sb in zip(a.states, b.states):
        assert sa.keys() == sb.keys() and all(sa[k].tobytes() == sb[k].tobytes() for k in sa)
    assert (b.card, b.image_norm, b.logit_shift, b.job_context) == (a.card, a.image_norm, a.logit_shift, a.job_context)
    rng = np.random.default_rng(5)
    v, im = rng.normal(size=(4, 24)).astype(np.float32), rng.normal(size=(4, 64, 64)).astype(np.float32)
    assert np.array_equal(_torch_scores(a, v, im), _torch_scores(b, v, im))  # bit-identical through torch
    assert np.array_equal(a.score_job(v, im), b.score_job(v, im))


def test_npz_holding_pickled_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = load_model(None, device="cpu")
    arrays = {f"0/{k}": v for k, v in good.states[0].items()}
    for evil_key in ("meta", "0/feature_extractor.0.bias"):
        bad = dict(arrays, meta=np.array('{"format": "relion_external_rank", "version": 2, "networks": 1}'))
        bad[evil_key] = np.array([Evil()], dtype=object)
        path = tmp_path / "evil.npz"
        with open(path, "wb") as fh:
            np.savez(fh, **bad)
        with pytest.raises(ModelError, match=r"evil\.npz: refused"):
            load_model(str(path), device="cpu")
        assert not marker.exists()
    with open(tmp_path / "raw.npz", "wb") as fh:  # a bare pickle named .npz is not ours either
        pickle.dump({"meta": Evil()}, fh)
    with pytest.raises(ModelError, match="raw.npz"):
        load_model(str(tmp_path / "raw.npz"), device="cpu")
    assert not marker.exists()


def test_nan_or_infinite_weights_are_refused_naming_the_file(tmp_path):
    state = load_model(None, device="cpu").states[0]
    for bad in (np.nan, np.inf):
        broken = {k: v.copy() for k, v in state.items()}
        broken["cnn_layers.10.weight"][0, 0, 1, 1] = bad
        for name in ("w.npz", "w.pt"):
            save_model(broken, str(tmp_path / name), card={})
            with pytest.raises(ModelError) as err:
                load_model(str(tmp_path / name), device="cpu")
            text = str(err.value)
            assert "\n" not in text and text.startswith(str(tmp_path / name)) and "NaN or Inf" in text


def test_npz_that_is_truncated_foreign_or_newer_is_refused(tmp_path, test_model):
    data = open(test_model, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.npz"):
        load_model(str(tmp_path / "cut.npz"), device="cpu")
    with open(tmp_path / "other.npz", "wb") as fh:
        np.savez(fh, meta=np.array('{"format": "something else"}'), x=np.zeros(3))
    with pytest.raises(ModelError, match="not our weights format"):
        load_model(str(tmp_path / "other.npz"), device="cpu")
    with open(tmp_path / "v9.npz", "wb") as fh:
        np.savez(fh, meta=np.array('{"format": "relion_external_rank", "version": 9, "networks": 1}'))
    with pytest.raises(ModelError, match="version 9"):
        load_model(str(tmp_path / "v9.npz"), device="cpu")
    state = load_model(test_model, device="cpu").states[0]
    with pytest.raises(ModelError, match="not the ranker network's weights"):
        save_model({k: v for k, v in state.items() if "bias" not in k}, str(tmp_path / "x.npz"), card={})


def _python(code, **env):
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); " + code],
                       capture_output=True, text=True, env=dict(os.environ, **env))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_device_auto_without_a_gpu_never_imports_torch():
    code = ("import numpy as np; from ranker.runtime.model import load_model; r = load_model(device='auto'); "
            "s = r.score_job(np.zeros((3, 24), np.float32), np.ones((3, 64, 64), np.float32)); "
            "print(r.device, r.engine, 'torch' in sys.modules)")
    assert _python(code, CUDA_VISIBLE_DEVICES="").split() == ["cpu", "numpy", "False"]


def test_cpu_job_imports_torch_in_no_process(sim_project):
    """The job's own process and its scorer (which says so in run.out)."""
    code = ("sys.argv = ['x', '--o', 'External/job004/', '--in_optimiser', 'Class2D/job002/run_it020_optimiser.star']; "
            "from ranker.runtime import job; rc = job.main(); print('torch in the job process:', 'torch' in sys.modules)")
    out = _python(code, CUDA_VISIBLE_DEVICES="")
    assert "torch in the job process: False" in out
    assert "on cpu (numpy)" in out and "(torch not imported)" in out


def test_device_cuda_runs_the_networks_in_torch(monkeypatch, test_model):
    """No GPU here: torch's CUDA is mocked (tensors and modules stay on the CPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(modelmod, "cuda_possible", lambda: True)
    rng = np.random.default_rng(7)
    v, im = rng.normal(size=(5, 24)).astype(np.float32), rng.normal(size=(5, 64, 64)).astype(np.float32)
    for device in ("cuda", "cuda:0", "auto"):
        r = load_model(test_model, device=device)
        assert r.device == device.replace("auto", "cuda") and r.engine == "torch"
        assert np.abs(r.score_job(v, im) - load_model(test_model, device="cpu").score_job(v, im)).max() < 1e-5
    assert modelmod.uses_torch(test_model, "auto") and not modelmod.uses_torch(test_model, "cpu")


def test_cnn_work_shared_by_a_forked_process_gives_the_same_scores(test_model):
    from ranker.runtime.background import Background
    from ranker.runtime.model import CNNWork

    rng = np.random.default_rng(8)
    v, im = rng.normal(size=(13, 24)).astype(np.float32), rng.normal(size=(13, 64, 64)).astype(np.float32)
    r = load_model(test_model, device="cpu")
    work = CNNWork(r, len(im), batch=4)

    def helper_fn():
        work.fill(lambda: im)
        return work.work()

    helper = Background(helper_fn)
    here = work.work(alive=lambda: helper.proc is None or helper.proc.is_alive())
    assert here + helper.result() == work.units == 4 * len(r.states)
    assert np.abs(work.result - r._image_vectors(im)).max() < 1e-6
    assert r.precompute_from(work) == 13 and r.precomputed(im) == 13
    assert np.abs(r.score_job(v, im) - load_model(test_model, device="cpu").score_job(v, im)).max() < 1e-6


def test_cnn_work_without_images_does_nothing(test_model):
    from ranker.runtime.model import CNNWork

    r = load_model(test_model, device="cpu")
    work = CNNWork(r, 5)
    work.fill(lambda: None)  # e.g. CTFs ignored until the first peak: images only after data.star
    assert work.work() == 0 and work.ready_count == 0 and r.precompute_from(work) == 0
    work = CNNWork(r, 5)
    assert work.work(alive=lambda: False) == 0  # the maker died before filling


def test_cnn_work_without_fork_is_done_by_one_process(test_model, monkeypatch):
    import multiprocessing

    from ranker.runtime.model import CNNWork

    def no_fork(method=None):
        raise ValueError("no fork")

    monkeypatch.setattr(multiprocessing, "get_context", no_fork)
    r = load_model(test_model, device="cpu")
    im = np.random.default_rng(9).normal(size=(5, 64, 64)).astype(np.float32)
    work = CNNWork(r, 5, batch=2)
    work.fill(lambda: im)
    work.fill(lambda: 1 / 0)  # made once
    assert work.work() == work.units == 3 * len(r.states) and work.ready_count == 5
    assert np.abs(work.result - r._image_vectors(im)).max() < 1e-6


def test_j_n_runs_the_networks_in_n_processes(sim_project, monkeypatch, capsys):
    from ranker.runtime import job as jobmod

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)  # --j is lowered to these
    assert jobmod.main(["--o", "External/job006/", "--in_optimiser", "Class2D/job002/run_it020_optimiser.star",
                        "--j", "3"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("  model loaded in "))
    assert "in 2 background processes" in line and line.endswith("9 of the 9 scored classes among them")
