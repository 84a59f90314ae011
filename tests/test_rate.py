"""The fine-tuning rate found per data set (train/rate.py): each candidate rate probes briefly from the
start and the lowest validation loss wins, a higher rate only when it is clearly better."""

import pytest
import torch
from torch import nn

from imgtune.train.loop import Objective
from imgtune.train.rate import Probe, choose_rate, probe_batches


def _problem(seed: int):
    """Three well-separated classes in 8 dimensions: (train batches, val batches)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(600) % 3
    x = centres[y] + torch.randn(600, 8, generator=g)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 480, 32)]
    return batches, [(x[480:], y[480:])]


def _choose(model, batches, val, candidates):
    start = {k: v.clone() for k, v in model.state_dict().items()}
    probe = Probe(model, model, start, lambda lr: torch.optim.AdamW(model.parameters(), lr=lr),
                  Objective("accuracy"), True, torch.device("cpu"))
    choice = choose_rate(probe, iter(batches), lambda: iter(val), candidates, len(batches))
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items()), "the start is given back"
    return choice


def test_a_rate_that_diverges_is_not_chosen_and_the_table_shows_why():
    torch.manual_seed(0)
    batches, val = _problem(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    # a good start: the model trained a little at a sane rate, as the head hands over a fitted model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for x, y in batches * 3:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    choice = _choose(model, batches, val, (3.0, 1e-3, 1e-4))
    rates = [r["rate"] for r in choice.table]
    assert rates == [1e-4, 1e-3, 3.0]  # probed from the lowest up
    diverged = choice.table[2]["val_loss"]
    assert diverged > 3 * choice.start_val_loss and choice.rate != 3.0
    assert choice.steps == min(len(batches), probe_batches(len(batches)))
    assert "Fine-tune rate:" in choice.describe() and "3: " in choice.describe()


def test_a_higher_rate_is_chosen_where_it_learns_clearly_faster():
    torch.manual_seed(1)
    batches, val = _problem(1)
    model = nn.Sequential(nn.Linear(8, 3))  # from scratch: the slow rate barely moves it
    choice = _choose(model, batches, val, (1e-4, 1e-1))
    assert choice.rate == 1e-1
    assert choice.table[1]["val_loss"] < choice.table[0]["val_loss"] < choice.start_val_loss + 1e-6


def test_a_recipe_with_candidate_rates_records_the_search_and_trains_at_the_rate_found(tmp_path):
    import dataclasses
    import json

    from conftest import write_class_folders

    from imgtune import ImageClassifier
    from imgtune.config import DEFAULT

    recipe = dataclasses.replace(DEFAULT, finetune=dataclasses.replace(DEFAULT.finetune, lr_candidates=(1e-4, 1e-3),
                                                                        augment="light"))
    data = write_class_folders(tmp_path / "photos", 10, seed=3)
    ImageClassifier(recipe=recipe, image_size=32, epochs=1, cache_dir=str(tmp_path / "cache"), quiet=True,
                    device="cpu").fit(data, out=tmp_path / "run")
    ft = json.loads((tmp_path / "run" / "config.json").read_text())["finetune"]
    search = ft["rate_search"]
    assert [c["rate"] for c in search["candidates"]] == [1e-4, 1e-3]
    restart = ft.get("restarted", {}).get("lr_scale", 1.0)  # the guard still watches the rate found
    assert search["rate"] in (1e-4, 1e-3) and ft["lr"] == pytest.approx(search["rate"] * restart)
    assert search["probe_batches"] >= 1
