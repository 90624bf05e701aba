"""Checkpoints: safetensors + JSON, bit-exact round trips, atomic folders, the retention limit."""

from __future__ import annotations

import json

import bitsandbytes as bnb
import torch

from imagic_lora.checkpoint import CheckpointStore, load_checkpoint, save_checkpoint


def train(optimizer, params, steps):
    for _ in range(steps):
        loss = sum((p ** 2).sum() for p in params)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_8bit_adam_state_and_generator_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(96, 64))]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-2)
    train(optimizer, params, 3)
    generator = torch.Generator().manual_seed(3)
    torch.randn(7, generator=generator)
    save_checkpoint(tmp_path / "ck", {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                      "params": [p.detach() for p in params], "step": 3, "betas": (0.9, 0.99)})
    state = load_checkpoint(tmp_path / "ck")
    assert state["step"] == 3 and state["betas"] == (0.9, 0.99)
    params2 = [torch.nn.Parameter(t.clone()) for t in state["params"]]
    optimizer2 = bnb.optim.AdamW8bit(params2, lr=1e-2)
    optimizer2.load_state_dict(state["optimizer"])
    generator2 = torch.Generator()
    generator2.set_state(state["generator"])
    train(optimizer, params, 4)
    train(optimizer2, params2, 4)
    assert all(torch.equal(a, b) for a, b in zip(params, params2))
    assert torch.equal(torch.randn(5, generator=generator), torch.randn(5, generator=generator2))
    # Only safetensors and JSON on disk.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["state.json", "tensors.safetensors"]
    json.loads((tmp_path / "ck" / "state.json").read_text())


def test_a_tensor_shared_between_entries_is_stored_once(tmp_path):
    shared = torch.arange(6.0)
    save_checkpoint(tmp_path / "ck", {"a": {0: shared, 1: shared}, "b": shared[:3]})
    state = load_checkpoint(tmp_path / "ck")
    assert state["a"][0] is state["a"][1] and torch.equal(state["a"][0], shared)
    assert torch.equal(state["b"], shared[:3]) and list(state["a"]) == [0, 1]  # int keys stay ints


def test_store_keeps_the_newest_b_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path, limit=2)
    store.save("phase-A", {"x": torch.zeros(1)})
    for step in (10, 20, 30):
        store.save(f"B-step-{step:06d}", {"step": step})
    assert store.b_steps() == [20, 30] and store.latest_b() == "B-step-000030" and store.has("phase-A")
    (tmp_path / "B-step-000040").mkdir()  # a folder without state.json (a kill mid-save) is ignored
    assert store.latest_b() == "B-step-000030"
    assert store.load("B-step-000030") == {"step": 30}
