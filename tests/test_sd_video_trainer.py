"""SDVideoTrainer on a tiny model: the loss on a fixed batch goes down, checkpoints are diffusers
folders that SDVideo loads (and re-exports to ONNX), and training resumes from them."""
from __future__ import annotations

from functools import partial

import pytest
import torch



@pytest.fixture()
def dataset(tmp_path):
    import numpy as np
    from PIL import Image

    from ezvtb.sd_video.trainer import MiniTestSet

    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, caption in enumerate(("a cat", "old man")):
        frames = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
        frames[0].save(folder / f"{i:04d}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        (folder / f"{i:04d}.gif.txt").write_text(caption)
    (folder / "no_caption.gif").write_bytes((folder / "0000.gif").read_bytes())
    return MiniTestSet(folder)


@pytest.mark.slow  # exports the tiny graphs (tens of seconds on 2 cores)
def test_training_lowers_the_loss_and_checkpoints_reload_and_resume(tiny_modelscope_folder, dataset, tmp_path,
                                                                    monkeypatch):
    from torch.utils.data import DataLoader

    from ezvtb.sd_video import SDVideo
    from ezvtb.sd_video.trainer import SDVideoTrainer, collate_fn

    monkeypatch.setenv("EZVTB_HOME", str(tmp_path / "home"))
    assert len(dataset) == 2 and dataset[1]["text"] == "old man" and len(dataset[0]["frames"]) == 3
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=0,
                        collate_fn=partial(collate_fn, num_frames=4, image_size=(32, 32), dtype=torch.float32))
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 4, 3, 32, 32) and batch["text"] == ["a cat", "old man"]
    assert torch.equal(batch["pixel_values"][:, 3], batch["pixel_values"][:, 2])  # short video: last frame repeated

    model = SDVideo(tiny_modelscope_folder, backend="torch")
    out = tmp_path / "out"
    trainer = SDVideoTrainer(model, [batch], out, lr=1e-3, gradient_checkpointing=True,
                             gradient_accumulation_steps=2)

    def fixed_loss():
        torch.manual_seed(0)  # the same dropout masks (train mode) each time
        with torch.no_grad():
            return trainer.loss(batch, torch.Generator().manual_seed(123)).item()

    before = fixed_loss()
    trainer.mixed_precision = "bf16"  # the mixed-precision forward: same loss within bf16 rounding
    bf16 = fixed_loss()
    trainer.mixed_precision = "no"
    print(f"fixed-batch loss fp32 {before:.5f}, bf16 autocast {bf16:.5f}")
    assert abs(bf16 - before) <= 0.05 * before
    losses = trainer.train(save_every=4, log_every=1, max_steps=4)
    after = fixed_loss()
    print(f"eps-MSE on the fixed batch: {before:.4f} -> {after:.4f} after 4 steps (x2 accumulation); "
          f"per-step {[round(x, 4) for x in losses]}")
    assert len(losses) == 4 and trainer.step == 4
    assert after < 0.9 * before

    ckpt = out / "checkpoint-4"
    assert (out / "latest.txt").read_text().strip() == "checkpoint-4"
    assert {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "training_state.pt"} <= {
        p.name for p in ckpt.iterdir()}
    trained = {k: v.detach().clone() for k, v in trainer.unet.state_dict().items()}

    reloaded = SDVideo(ckpt, backend="cpu")  # re-exports the trained UNet
    assert all(torch.equal(trained[k], v) for k, v in reloaded.components.unet.state_dict().items())
    video = reloaded("a cat", timesteps=1, image_size=(32, 32), num_frames=2, seed=0)
    assert video.shape == (1, 3, 2, 32, 32) and torch.isfinite(video).all()

    resumed = SDVideoTrainer(SDVideo(tiny_modelscope_folder, backend="torch"), [batch], out, lr=1e-3,
                             resume_from="latest")
    assert resumed.step == 4 and resumed.losses == pytest.approx(losses)
    assert all(torch.equal(trained[k], v) for k, v in resumed.unet.state_dict().items())
    s0, s1 = trainer.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert s0.keys() == s1.keys() and all(torch.equal(s0[k]["exp_avg"], s1[k]["exp_avg"]) for k in s0)
    resumed.train(save_every=100, log_every=1, max_steps=1)
    assert resumed.step == 5 and (out / "checkpoint-5").is_dir()


def test_trainer_rejects_bad_options(tiny_modelscope_folder, tmp_path):
    from ezvtb.sd_video import SDVideo
    from ezvtb.sd_video.trainer import MiniTestSet, SDVideoTrainer, collate_fn

    model = SDVideo(tiny_modelscope_folder, backend="torch")
    with pytest.raises(ValueError, match="mixed_precision"):
        SDVideoTrainer(model, [], tmp_path, mixed_precision="fp8")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        SDVideoTrainer(model, [], tmp_path, gradient_accumulation_steps=0)
    with pytest.raises(FileNotFoundError, match="latest"):
        SDVideoTrainer(model, [], tmp_path, resume_from="latest")
    with pytest.raises(ValueError, match="num_frames"):
        collate_fn([], num_frames=0)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="no <name>.gif"):
        MiniTestSet(tmp_path / "d")


def _fixed_batch() -> dict:
    g = torch.Generator().manual_seed(7)
    return {"pixel_values": torch.rand((1, 2, 3, 16, 16), generator=g) * 2 - 1, "text": ["a cat"]}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_modelscope_folder, tmp_path):
    """One forward+backward with block checkpointing on vs off, in train mode (dropout active)."""
    from ezvtb.sd_video import SDVideo
    from ezvtb.sd_video.trainer import SDVideoTrainer, checkpoint_unet_blocks

    trainer = SDVideoTrainer(SDVideo(tiny_modelscope_folder, backend="torch"), [], tmp_path, device="cpu")
    unet, batch = trainer.unet, _fixed_batch()
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    calls = [0]
    for b in blocks:  # the first resnet of each block: runs again when the block is recomputed
        b.resnets[0].register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def loss_and_grads():
        unet.zero_grad(set_to_none=True)
        calls[0] = 0
        torch.manual_seed(0)  # the dropout masks
        loss = trainer.loss(batch, torch.Generator().manual_seed(123))
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in unet.named_parameters()}, calls[0]

    assert unet.training
    loss_off, grads_off, calls_off = loss_and_grads()
    assert checkpoint_unet_blocks(unet) == len(blocks)
    loss_on, grads_on, calls_on = loss_and_grads()
    assert (calls_off, calls_on) == (len(blocks), 2 * len(blocks))  # checkpointing recomputes every block
    err = max((grads_on[k] - grads_off[k]).abs().max().item() for k in grads_off)
    scale = max(g.abs().max().item() for g in grads_off.values())
    print(f"checkpointing on vs off: loss {loss_on:.6f} vs {loss_off:.6f}, {len(grads_off)} gradients, "
          f"max abs difference {err:.2e} (largest gradient {scale:.2e}), block runs {calls_on} vs {calls_off}")
    assert grads_on.keys() == grads_off.keys() and scale > 0
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert err <= 1e-6
    with torch.no_grad():  # the wrapper runs the blocks once outside autograd
        calls[0] = 0
        trainer.loss(batch, torch.Generator().manual_seed(123))
    assert calls[0] == len(blocks)


def test_trainer_applies_modelscope_resnet_dropout_only_in_train_mode(tiny_modelscope_folder, tmp_path):
    """diffusers builds UNet3D's ResnetBlock2Ds with dropout 0.0; training uses ModelScope's 0.1, eval does not."""
    from diffusers.models.resnet import ResnetBlock2D

    from ezvtb.sd_video import SDVideo
    from ezvtb.sd_video.trainer import SDVideoTrainer

    model = SDVideo(tiny_modelscope_folder, backend="torch")
    unet = model.components.unet
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(m.dropout.p == 0.0 for m in resnets) and model.components.unet_dropout == 0.1
    x = torch.randn((1, 4, 2, 4, 4), generator=torch.Generator().manual_seed(1))
    ctx = torch.randn((1, 3, unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(2))

    @torch.no_grad()
    def run(resnet_p: float) -> torch.Tensor:
        for m in resnets:
            m.dropout.p = resnet_p
        torch.manual_seed(0)  # the dropout masks
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample

    with pytest.raises(ValueError, match="dropout"):
        SDVideoTrainer(model, [], tmp_path, device="cpu", dropout=1.5)
    assert all(m.dropout.p == 0.0 for m in resnets)  # the bad value changed nothing
    trainer = SDVideoTrainer(model, [], tmp_path, device="cpu")
    assert trainer.dropout == 0.1 and all(m.dropout.p == 0.1 for m in resnets) and unet.training
    # train mode: the resnet dropout alone changes the output (the temporal convs keep diffusers' 0.1 in both)
    train_diff = (run(0.1) - run(0.0)).abs().max().item()
    unet.eval()  # eval (sampling, export): the 0.1 has no effect at all
    eval_diff = (run(0.1) - run(0.0)).abs().max().item()
    print(f"resnet dropout 0.1 vs 0.0: train-mode output max abs difference {train_diff:.3f}, eval {eval_diff}")
    assert train_diff > 1e-3 and eval_diff == 0.0
    assert SDVideoTrainer(model, [], tmp_path, device="cpu", dropout=0.0).dropout == 0.0
    assert all(m.dropout.p == 0.0 for m in resnets)
