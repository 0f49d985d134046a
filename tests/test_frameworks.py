"""gradfused inside the training frameworks people use, as their users would (docs/training-frameworks.md):
the Hugging Face Trainer, accelerate and PyTorch Lightning. Tiny models built from configs, synthetic
data, nothing downloaded; each test skips, with the reason, where its framework is not installed
(requirements-dev.txt pins the versions CI runs)."""
import copy

import pytest
import torch

import gradfused as gf

STEPS = 32
VOCAB, SEQ = 128, 16


def token_batches(n, batch=4, seed=0):
    """`n` causal-LM samples (labels = inputs) that can be learnt: counting up from a random token."""
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, VOCAB, (n, 1), generator=gen) + torch.arange(SEQ)) % VOCAB
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def tiny_gpt2():
    transformers = pytest.importorskip("transformers", reason="the Trainer tests need transformers "
                                                              "(requirements-dev.txt)")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


# ---- transformers Trainer -------------------------------------------------------------------------------
def run_trainer(tmp_path, optim="adamw_torch", optimizer=None, optimizer_cls_and_kwargs=None, steps=STEPS,
                resume=None, save_steps=None, **args):
    """Trains the tiny GPT-2 with Trainer's decay/no-decay groups, a warmup schedule and max_grad_norm;
    returns (the loss of every step, the model)."""
    import transformers

    model = tiny_gpt2()
    losses = []

    class RecordingTrainer(transformers.Trainer):
        def training_step(self, *a, **kw):
            loss = super().training_step(*a, **kw)
            losses.append(loss.item())
            return loss

    options = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, max_steps=steps,
                   learning_rate=3e-3, weight_decay=0.1, warmup_steps=5, max_grad_norm=0.5, optim=optim,
                   logging_steps=1, report_to=[], seed=0, data_seed=0, disable_tqdm=True,
                   save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
    trainer = RecordingTrainer(model=model, args=transformers.TrainingArguments(**{**options, **args}),
                               train_dataset=token_batches(4 * steps),
                               optimizers=(optimizer(model) if optimizer else None, None),
                               optimizer_cls_and_kwargs=optimizer_cls_and_kwargs)
    trainer.train(resume_from_checkpoint=resume)
    return losses, trainer


def trainer_groups(model, weight_decay=0.1):
    """The groups Trainer makes: no decay for biases and LayerNorm weights."""
    import transformers

    decay = set(transformers.Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


ADAMW = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-8)


def test_trainer_trains_as_with_torchs_adamw(tmp_path):
    """gradfused.AdamW passed to Trainer as an optimizer, or as a class for Trainer to build, gives the
    losses of optim="adamw_torch" to 1e-5; with 8-bit states to 1e-2."""
    theirs, _ = run_trainer(tmp_path / "torch")
    built, _ = run_trainer(tmp_path / "built", optimizer=lambda m: gf.AdamW(trainer_groups(m), **ADAMW))
    by_class, trainer = run_trainer(tmp_path / "class", optimizer_cls_and_kwargs=(gf.AdamW, ADAMW))
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer,
                      gf.AdamW)
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.0]
    eight_bit, _ = run_trainer(tmp_path / "8bit", optimizer_cls_and_kwargs=(gf.AdamW, {**ADAMW, "state_bits": 8}))
    assert len(theirs) == STEPS and theirs[-1] < theirs[0] - 0.3  # it trains
    torch.testing.assert_close(built, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(by_class, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(eight_bit, theirs, rtol=0, atol=1e-2)


@pytest.mark.parametrize("state_bits", [32, 8])
def test_trainer_resumes_a_checkpoint_bit_for_bit(tmp_path, state_bits):
    make = (gf.AdamW, {**ADAMW, "state_bits": state_bits})
    whole, _ = run_trainer(tmp_path / "whole", optimizer_cls_and_kwargs=make)
    first, _ = run_trainer(tmp_path / "halves", optimizer_cls_and_kwargs=make, save_steps=STEPS // 2,
                           max_steps=STEPS)
    second, _ = run_trainer(tmp_path / "halves", optimizer_cls_and_kwargs=make,
                            resume=str(tmp_path / "halves" / f"checkpoint-{STEPS // 2}"))
    assert first == whole and second == whole[STEPS // 2:]


def test_trainer_bf16_on_the_cpu(tmp_path):
    losses, trainer = run_trainer(tmp_path, optimizer_cls_and_kwargs=(gf.AdamW, ADAMW), bf16=True, steps=12)
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


# ---- accelerate -----------------------------------------------------------------------------------------
def accelerate_run(make_opt, steps, save_to=None, load_from=None, plain=False, **accelerator_options):
    """A plain accelerate loop (prepare, backward, clip_grad_norm_, step), or the same loop without
    accelerate where `plain`; the losses and the final weights."""
    accelerate = pytest.importorskip("accelerate", reason="the accelerate tests need accelerate "
                                                          "(requirements-dev.txt)")
    # a fresh accelerate: its process-wide state outlives an Accelerator (the Trainer tests above make one)
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))
    opt = make_opt(model.parameters())
    x = torch.randn(8 * steps, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.roll(1, dims=1)), batch_size=8)
    if not plain:
        # mixed_precision named: transformers' TrainingArguments leaves ACCELERATE_MIXED_PRECISION in the
        # environment, which an Accelerator would otherwise follow
        accelerator = accelerate.Accelerator(cpu=True, **{"mixed_precision": "no", **accelerator_options})
        model, opt, loader = accelerator.prepare(model, opt, loader)
    if load_from:
        accelerator.load_state(load_from)
    losses = []
    for k, (x, y) in enumerate(loader):
        if load_from and k < steps // 2:
            continue  # the first half was trained before the checkpoint
        loss = torch.nn.functional.mse_loss(model(x), y)
        if plain:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if save_to and k + 1 == steps // 2:
            accelerator.save_state(save_to)
    return losses, [p.detach().clone() for p in model.parameters()]


ACCELERATE_OPTIMIZERS = {"AdamW": lambda p: gf.AdamW(p, lr=1e-2),
                         "AdamW 8-bit states": lambda p: gf.AdamW(p, lr=1e-2, state_bits=8),
                         "Align(AdEMA)": lambda p: gf.GradientAlignment(gf.AdEMA(p, lr=1e-2, t_alpha_beta3=10))}


@pytest.mark.parametrize("name", ACCELERATE_OPTIMIZERS)
def test_accelerate_save_and_load_state_round_trip_bit_for_bit(tmp_path, name):
    losses, weights = accelerate_run(ACCELERATE_OPTIMIZERS[name], 20, save_to=tmp_path / "ckpt")
    resumed_losses, resumed_weights = accelerate_run(ACCELERATE_OPTIMIZERS[name], 20, load_from=tmp_path / "ckpt")
    assert resumed_losses == losses[10:]
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed_weights))


@pytest.mark.parametrize("name", ACCELERATE_OPTIMIZERS)
def test_accelerate_steps_as_a_plain_loop(name):
    """Under accelerate's prepare() and clip_grad_norm_, the same numbers as the bare optimizer in a plain
    loop, bit for bit (the bare optimizer's agreement with torch.optim is test_torch_conformance.py's)."""
    ours, weights = accelerate_run(ACCELERATE_OPTIMIZERS[name], 20)
    plain, plain_weights = accelerate_run(ACCELERATE_OPTIMIZERS[name], 20, plain=True)
    assert ours == plain and all(torch.equal(a, b) for a, b in zip(weights, plain_weights))


def test_accelerate_bf16_mixed_precision_trains():
    losses, _ = accelerate_run(lambda p: gf.AdamW(p, lr=1e-2), 20, mixed_precision="bf16")
    assert losses[-1] < 0.8 * losses[0]


# ---- Lightning ------------------------------------------------------------------------------------------
def lightning_run(tmp_path, optimizer_cls, max_steps, ckpt_path=None, save_every=None):
    L = pytest.importorskip("lightning", reason="the Lightning tests need lightning (requirements-dev.txt)")

    class Regression(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
            self.losses = []

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x).float(), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            opt = optimizer_cls(self.parameters(), lr=1e-2, weight_decay=0.01)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}

    gen = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(40, 32, generator=gen), torch.randn(40, 1, generator=gen))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 5 steps an epoch, in order
    module = Regression()
    saving = [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1)]
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, precision="bf16-mixed",
                        gradient_clip_val=0.5, logger=False, enable_checkpointing=bool(save_every),
                        callbacks=saving if save_every else None, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module


def test_lightning_bf16_mixed_with_gradient_clipping_trains_as_torchs_adamw(tmp_path):
    """Lightning refuses clipping under AMP for an optimizer that unscales internally; gradfused's default
    (fused=None) leaves unscaling to GradScaler as torch's does (NOTE: [GradScaler: who unscales])."""
    theirs = lightning_run(tmp_path, torch.optim.AdamW, 15)
    ours = lightning_run(tmp_path, gf.AdamW, 15)
    assert len(ours.losses) == 15 and ours.losses[-1] < ours.losses[0]
    torch.testing.assert_close(ours.losses, theirs.losses, rtol=0, atol=1e-5)
    torch.testing.assert_close(list(ours.parameters()), list(theirs.parameters()))


def test_lightning_resumes_a_checkpoint_as_the_uninterrupted_run(tmp_path):
    whole = lightning_run(tmp_path, gf.AdamW, 20, save_every=10)  # 10 steps: two whole epochs
    resumed = lightning_run(tmp_path / "resumed", gf.AdamW, 20, ckpt_path=tmp_path / "epoch=1-step=10.ckpt")
    assert resumed.losses == whole.losses[10:]
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))


def test_lightning_refuses_clipping_with_fused_true_as_for_torch(tmp_path):
    """fused=True is torch's in-kernel unscaling: Lightning refuses clipping under AMP for it, for torch's
    fused AdamW and for ours alike."""
    for cls in (torch.optim.AdamW, gf.AdamW):
        with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
            lightning_run(tmp_path, lambda params, **kw: cls(params, fused=True, **kw), 2)
