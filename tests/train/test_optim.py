import copy
import csv
from pathlib import Path

import pytest
import torch

from fewshot.config import PRESETS, TrainConfig
from fewshot.errors import FewshotError
from fewshot.model import GPT
import torch.optim._muon as torch_muon

from fewshot.train.optim import Combined, Fp32Muon, make_optimizer, newton_schulz_fp32
from fewshot.train.loop import resume_config, train
from tests.conftest import tiny_config


def muon_config(**changes) -> TrainConfig:
    return TrainConfig(data="d", out="o", optimizer="muon", **changes)


def test_muon_takes_the_blocks_matrices_and_adamw_everything_else() -> None:
    model = GPT(PRESETS["icl"].model)
    optimizer = make_optimizer(model, muon_config(), torch.device("cpu"))
    assert isinstance(optimizer, Combined)
    adamw, muon = optimizer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    in_adamw = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names.values())
    assert in_muon == {name for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("blocks.")}
    assert "token_embedding.weight" in in_adamw and "blocks.0.mixer.conv" in in_adamw  # 2-D outside blocks, 3-D conv
    # one schedule drives both: the loop sets lr on every group it sees
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    assert all(group["lr"] == 0.5 for o in (adamw, muon) for group in o.param_groups)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_fp32_newton_schulz_is_torchs_to_bf16_precision(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    grad = torch.randn(*shape)
    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    ours = newton_schulz_fp32(grad, coefficients, steps, eps)
    theirs = torch_muon._zeropower_via_newtonschulz(grad, coefficients, steps, eps).float()
    assert ours.dtype == torch.float32 and ours.shape == grad.shape
    assert torch.allclose(ours, theirs, atol=0.05), (ours - theirs).abs().max()
    assert not torch.equal(ours, theirs)  # a different precision, not the same function by accident


def test_fp32_muon_steps_like_muon_and_leaves_torch_as_it_was() -> None:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(24, 8)) for _ in range(2)]
    before = torch_muon._zeropower_via_newtonschulz
    for cls in (torch.optim.Muon, Fp32Muon):
        params = [torch.nn.Parameter(w.detach().clone()) for w in weights]
        optimizer = cls(params, lr=0.02, adjust_lr_fn="match_rms_adamw")
        for p in params:
            p.grad = torch.ones_like(p) + p.detach()
        optimizer.step()
        if cls is torch.optim.Muon:
            reference = [p.detach().clone() for p in params]
    assert all(torch.allclose(p, r, atol=1e-3) and not torch.equal(p, w) for p, r, w in zip(params, reference, weights))
    assert torch_muon._zeropower_via_newtonschulz is before


def test_the_combined_state_round_trips_into_a_fresh_optimizer() -> None:
    torch.manual_seed(0)
    model = GPT(PRESETS["llama-nano"].model)
    optimizer = make_optimizer(model, muon_config(), torch.device("cpu"))
    x = torch.randint(0, 256, (2, 32))

    def step(opt) -> None:
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step(optimizer)
    saved = copy.deepcopy(optimizer.state_dict())  # torch hands out the live state tensors
    assert sorted(saved["state"]) == list(range(len(saved["state"])))  # one numbering across both optimizers
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    step(optimizer)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    fresh = make_optimizer(model, muon_config(), torch.device("cpu"))
    fresh.load_state_dict(saved)
    step(fresh)
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_an_adamw_checkpoint_does_not_load_into_muon() -> None:
    model = GPT(PRESETS["llama-nano"].model)
    adamw_state = make_optimizer(model, TrainConfig(data="d", out="o"), torch.device("cpu")).state_dict()
    with pytest.raises(FewshotError, match="another --optimizer"):
        make_optimizer(model, muon_config(), torch.device("cpu")).load_state_dict(adamw_state)


def test_muon_trains(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, max_steps=40, eval_every=20, batch_size=8, preset="llama-nano", optimizer="muon"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < first - 1.0, (first, last)
    assert resume_config(run).optimizer == "muon"  # saved with the run, so --resume keeps it


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "sgd"}, "--optimizer must be adamw or muon"),
    ({"optimizer": "muon", "strategy": "fsdp"}, "--strategy ddp"),
])
def test_bad_optimizer_options_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(FewshotError, match=message):
        TrainConfig(data="d", out="o", **changes)


def test_a_run_resumes_only_under_its_own_optimizer(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(data_dir, run, max_steps=2, optimizer="muon"))
    with pytest.raises(FewshotError, match="trained with --optimizer muon"):
        resume_config(run, optimizer="adamw")
    assert resume_config(run, optimizer="muon").optimizer == "muon"


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_recurrences_own_parameters_get_no_weight_decay_and_no_muon(optimizer: str) -> None:
    """An SSM's A, B, C, an SRU's gate vectors and RFA's sigma are (channels, ...) tensors, not
    weight matrices: decaying or orthogonalising them would fight the dynamics."""
    model = GPT(PRESETS["nano"].model.replace(attention="ssm,sru,rfa-gate,dense"))
    config = TrainConfig(data="-", out="-", optimizer=optimizer)
    built = make_optimizer(model, config, torch.device("cpu"))
    groups = built.param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    plain = {names[id(p)] for group in groups if group.get("weight_decay") == 0.0 for p in group["params"]}
    for name in ("blocks.0.mixer.log_a_real", "blocks.0.mixer.a_imag", "blocks.0.mixer.b", "blocks.0.mixer.c",
                 "blocks.1.mixer.v", "blocks.1.mixer.b", "blocks.2.mixer.log_sigma"):
        assert name in plain
    decayed = {names[id(p)] for group in groups if group.get("weight_decay", 0.0) > 0 for p in group["params"]}
    assert {"blocks.0.mixer.inp.weight", "blocks.1.mixer.w.weight", "blocks.3.mixer.qkv.weight"} <= decayed
