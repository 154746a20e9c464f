"""Loading weights without executing code; RELION checkpoints; CPU scoring."""
import os
import pickle

import numpy as np
import pytest
import torch

from ranker.runtime.model import ModelError, build_net, load_model, network_images, save_model, shift_scores

RELION_KEYS_EXTRA = {  # heads RELION's v1.0 model holds but never uses in scoring
    "classifier_images.1.weight": (1, 48), "classifier_images.1.bias": (1,),
    "classifier_features.0.weight": (12, 24), "classifier_features.0.bias": (12,),
    "classifier_features.3.weight": (1, 12), "classifier_features.3.bias": (1,)}


def _relion_style_checkpoint(path, marker):
    """A file laid out like RELION-5's v1.0.ckpt: state dict + Python source that, if
    executed, would create ``marker``."""
    torch.manual_seed(1)
    state = dict(build_net().state_dict())
    for k, shape in RELION_KEYS_EXTRA.items():
        state[k] = torch.randn(shape)
    source = f"open({marker!r}, 'w').write('executed')\nclass Model: pass\n"
    torch.save({"model_definition": source, "model_state_dict": state, "epoch": 50}, path)
    return state


def test_relion_checkpoint_loads_state_dict_only(tmp_path):
    marker = str(tmp_path / "EXECUTED")
    state = _relion_style_checkpoint(str(tmp_path / "v1.0.ckpt"), marker)
    ranker = load_model(str(tmp_path / "v1.0.ckpt"), device="cpu")
    assert not os.path.exists(marker)
    assert ranker.output == "identity"
    loaded = ranker.net.state_dict()
    assert torch.equal(loaded["feature_extractor.0.weight"], state["feature_extractor.0.weight"])
    # the score is the network's raw output, as RELION's scorer prints it
    v, im = np.zeros((2, 24), np.float32), np.zeros((2, 64, 64), np.float32)
    expected = ranker.net(torch.from_numpy(im)[:, None], torch.from_numpy(v))[:, 0].detach().numpy()
    assert np.allclose(ranker.score(v, im), expected)


def test_pickle_that_executes_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "relion_external_rank", "state_dict": Evil()}, fh)
    with pytest.raises(ModelError, match="refused"):
        load_model(str(path), device="cpu")
    assert not marker.exists()
    torch.save({"model_state_dict": {}, "x": Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(ModelError, match="refused"):
        load_model(str(tmp_path / "evil2.pt"), device="cpu")
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path, test_model):
    data = open(test_model, "rb").read()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.pt"):
        load_model(str(tmp_path / "cut.pt"), device="cpu")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="neither our weights format"):
        load_model(str(tmp_path / "other.pt"), device="cpu")
    torch.save({"format": "relion_external_rank", "state_dict": {"w": torch.zeros(2)}}, tmp_path / "wrong.pt")
    with pytest.raises(ModelError, match="do not fit"):
        load_model(str(tmp_path / "wrong.pt"), device="cpu")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelError, match="text.pt"):
        load_model(str(tmp_path / "text.pt"), device="cpu")
    with pytest.raises(ModelError, match="not found"):
        load_model(str(tmp_path / "missing.pt"), device="cpu")


def test_scores_are_probabilities_and_batching_does_not_change_them(test_model):
    r = load_model(test_model, device="cpu")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(37, 24)).astype(np.float32)
    im = rng.normal(size=(37, 64, 64)).astype(np.float32)
    a, b = r.score(v, im), r.score(v, im, batch=5)
    assert a.shape == (37,) and a.dtype == np.float32 and ((a >= 0) & (a <= 1)).all()
    assert np.allclose(a, b, atol=1e-6)


def test_tta_averages_the_eight_dihedral_views(test_model):
    r = load_model(test_model, device="cpu")
    rng = np.random.default_rng(1)
    v = rng.normal(size=(3, 24)).astype(np.float32)
    im = rng.normal(size=(3, 64, 64)).astype(np.float32)
    r.tta = True
    ours = r.score(v, im)
    views = [np.rot90(x, k, axes=(-2, -1)) for x in (im, im[..., ::-1]) for k in range(4)]
    r.tta = False
    manual = np.mean([r.score(v, np.ascontiguousarray(x)) for x in views], axis=0)
    assert np.allclose(ours, manual, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_gpu_and_cpu_scores_agree(test_model):
    rng = np.random.default_rng(2)
    v = rng.normal(size=(50, 24)).astype(np.float32)
    im = rng.normal(size=(50, 64, 64)).astype(np.float32)
    assert np.allclose(load_model(test_model, device="cpu").score(v, im),
                       load_model(test_model, device="cuda").score(v, im), atol=1e-4)


def test_device_request_validation(test_model):
    with pytest.raises(ModelError, match="--device"):
        load_model(test_model, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            load_model(test_model, device="cuda:0")


def test_save_model_roundtrip(tmp_path):
    torch.manual_seed(3)
    net = build_net()
    save_model(net, str(tmp_path / "m.pt"), card={"seed": 3}, tta=True)
    r = load_model(str(tmp_path / "m.pt"), device="cpu")
    assert r.card == {"seed": 3} and r.tta and r.output == "sigmoid"
    for k, v in net.state_dict().items():
        assert torch.equal(v, r.net.state_dict()[k])


def test_model_relion5_means_the_torch_hub_checkpoint(tmp_path, monkeypatch):
    """--model relion5 reads RELION-5's own download place, $TORCH_HOME/hub/checkpoints/..."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    place = tmp_path / "th" / "hub" / "checkpoints" / "relion_class_ranker"
    place.mkdir(parents=True)
    _relion_style_checkpoint(str(place / "v1.0.ckpt"), str(tmp_path / "EXECUTED"))
    r = load_model("relion5", device="cpu")
    assert r.path == str(place / "v1.0.ckpt") and r.output == "identity"
    assert not (tmp_path / "EXECUTED").exists()


def test_per_image_normalisation_is_stored_and_makes_scores_scale_invariant(tmp_path):
    torch.manual_seed(3)
    path = str(tmp_path / "norm.pt")
    save_model(build_net(), path, card={}, image_norm="per_image")
    ranker = load_model(path, device="cpu")
    assert ranker.image_norm == "per_image"
    rng = np.random.default_rng(0)
    v, im = rng.normal(size=(5, 24)).astype(np.float32), rng.normal(size=(5, 64, 64)).astype(np.float32)
    s = ranker.score(v, im)
    assert np.allclose(ranker.score(v, 200 * im + 50), s, atol=1e-5)  # intensity scale and offset do not matter
    normed = network_images(200 * im + 50, "per_image")
    assert np.allclose(normed.mean(axis=(1, 2)), 0, atol=1e-4) and np.allclose(normed.std(axis=(1, 2)), 1, atol=1e-4)
    with torch.no_grad():
        expected = torch.sigmoid(ranker.net(torch.from_numpy(normed)[:, None], torch.from_numpy(v))[:, 0]).numpy()
    assert np.allclose(s, expected, atol=1e-5)
    torch.save({"format": "relion_external_rank", "version": 1, "state_dict": build_net().state_dict(),
                "image_norm": "whiten"}, str(tmp_path / "bad.pt"))
    with pytest.raises(ModelError, match="unknown image normalisation"):
        load_model(str(tmp_path / "bad.pt"), device="cpu")


def test_logit_shift_is_stored_and_moves_the_threshold(tmp_path):
    torch.manual_seed(4)
    net = build_net()
    save_model(net, str(tmp_path / "plain.pt"), card={})
    save_model(net, str(tmp_path / "shifted.pt"), card={}, logit_shift=-np.log(0.6 / 0.4))
    rng = np.random.default_rng(2)
    v, im = rng.normal(size=(6, 24)).astype(np.float32), rng.normal(size=(6, 64, 64)).astype(np.float32)
    plain = load_model(str(tmp_path / "plain.pt"), device="cpu").score(v, im)
    shifted = load_model(str(tmp_path / "shifted.pt"), device="cpu").score(v, im)
    assert np.allclose(shifted, shift_scores(plain, -np.log(1.5)), atol=1e-6)
    assert np.array_equal(np.argsort(plain), np.argsort(shifted))  # ranking unchanged
    assert np.allclose(shift_scores(np.array([0.6]), -np.log(1.5)), 0.5)  # 0.6 becomes the new 0.5
