"""The one training loop shared by train_vit2.py, train_swin.py and train3D.py.

Data: random crops of the training sequence (dataset3D). Loss: losses.combined_loss. AdamW with
linear warm-up then cosine decay per step, gradient clipping, bf16 autocast on CUDA. Every
`val_every` epochs: whole-volume prediction of some validation frames and their SEG. Checkpoints
`last.pt` (every epoch) and `best.pt` (best validation SEG), written atomically with everything a
resume needs. At the end: the marker threshold tuned on training frames, the whole validation sequence
predicted and tracked into a CTC result folder, and SEG / DET / TRA printed.

Run under `torchrun --nproc_per_node=N` for DistributedDataParallel (NCCL on GPU, gloo on CPU);
rank 0 alone validates, logs and saves.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import figures
from dataset import Sequence
from dataset.fileio import MARK, atomic_path, check_output, mark, write_json
from dataset3D import AugmentConfig, CropDataset, load_volumes
from distributed import Distributed
from errors import OutputError, UserError
from inference import TRAINING_FRAMES_GRID
from losses import PARTS, LossWeights, combined_loss
from metrics import seg_score
from models import build_model
from plan import fingerprint, make_plan
from predict import DEFAULT_OVERLAP, TUNE_OBJECTIVES, Predictor, post_record_path, save_post_record
from utils import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state


@dataclass
class TrainConfig:
    """Everything a run depends on. The defaults are the tuned recipe shared by all models; a train script
    sets only what differs for its model, and command-line flags override both. Values left None are
    taken from the data plan (`plan.make_plan`: working spacing, crop, window, ViT patch, size limits,
    tracking gates, fitted to the training data's fingerprint); a value given here or by a flag wins."""
    model: str = "vit_unet"                  # vit_unet, swinunetr or unet
    model_args: dict = field(default_factory=dict)  # overrides of models.build_model's defaults
    crop_size: tuple | None = None           # training crop (Z, Y, X) or (Y, X); None: the data plan's (plan.py)
    window: tuple | None = None              # sliding window at prediction; None: the data plan's
    spacing: tuple | None = None             # working spacing (Z, Y, X) µm, resampled to; None: the data plan's
    batch_size: int = 2                      # crops per step (per process under torchrun)
    epochs: int = 20                         # passes of steps_per_epoch steps
    steps_per_epoch: int = 50                # optimiser steps per epoch
    lr: float = 1e-3                         # peak learning rate of AdamW
    weight_decay: float = 1e-4               # AdamW weight decay
    warmup_epochs: float = 1.0               # linear warm-up, then cosine decay to 0
    grad_clip: float = 1.0                   # max gradient norm
    loss: LossWeights = field(default_factory=LossWeights)         # weights of the loss terms
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # augmentation strengths
    fg_fraction: float = 0.67                # share of crops centred on a nucleus
    core_fraction: float = 0.35              # marker target: voxels at least this fraction of the way to the centre
    val_every: int = 5                       # validate every this many epochs (and after the last)
    val_frames: int = 2                      # validation frames scored per validation (evenly spaced)
    tune_frames: int = 3                     # training frames the marker threshold is tuned on at the end (0: none);
                                             # fg stays 0.5: tuned on frames it was trained on, it transfers badly (README)
    tune_objective: str = "SEG"              # ... for "SEG", or "OP_CTB" (then tune_frames consecutive frames, tracked)
    overlap: float = DEFAULT_OVERLAP         # sliding-window overlap for validation and final prediction (0.5: README)
    num_workers: int = -1                    # data-loader workers; -1: as many as the CPU count allows (max 8)
    device: str = "auto"                     # auto, cpu or cuda
    amp: bool = True                         # bf16 autocast on CUDA (ignored on CPU)
    seed: int = 0                            # seeds the model, the crops and the augmentation
    data: str | None = None                  # CTC data set root or OME-Zarr image; None: the synthetic set under data/synth
    train_seq: str = "01"                    # training sequence
    val_seq: str = "02"                      # validation sequence
    labels: str | None = None                # OME-Zarr data: its label image (NAME in labels/ or PATH); None: the first
    val_data: str | None = None              # validation data set root or OME-Zarr image; None: `data`
    voxel_size: tuple | None = None          # (x, y[, z]) µm; None: the TIFFs' metadata, else SIM+'s (with a warning)
    out: str | None = None                   # run folder; None: runs/<model>-<time>
    max_bad_steps: int = 5                   # this many non-finite losses in a row stop the run
    final_predict: bool = True               # predict, track and score the validation sequence at the end


#: TrainConfig fields that main.py's training flags set (flag --batch-size is field batch_size, ...).
FLAGS = ("data", "train_seq", "val_seq", "labels", "val_data", "epochs", "steps_per_epoch", "batch_size", "lr", "crop_size", "device", "out",
         "seed", "voxel_size", "augment")

#: --augment NAME: the augmentation recipes the command line can pick (a train script can set any AugmentConfig).
AUGMENT_RECIPES = {"default": AugmentConfig, "strong": AugmentConfig.strong}


def given_flags(args) -> dict:
    """{TrainConfig field: value} of the flags given on the command line (argparse Namespace from main.py)."""
    return {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}


def apply_overrides(cfg: TrainConfig, args) -> TrainConfig:
    """Command-line flags replace the script's values where given (--augment NAME: that AUGMENT_RECIPES recipe)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in given_flags(args).items()}
    if "augment" in values:
        values["augment"] = AUGMENT_RECIPES[values["augment"]]()
    return replace(cfg, **values)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from ~0 to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# --------------------------------------------------------------------------- set-up
def default_data(ddp: Distributed) -> Path:
    from dataset.synthetic import DEFAULT_ROOT, ensure_default_dataset
    if ddp.main:
        ensure_default_dataset(DEFAULT_ROOT)
    ddp.barrier()
    return DEFAULT_ROOT


def check_crop(model, crop) -> None:
    divisor = tuple(model.size_divisor)
    if len(divisor) != len(crop) or any(c % d for c, d in zip(crop, divisor)):
        examples = ", ".join("x".join(str(d * k) for d in divisor) for k in (1, 2, 4))
        raise UserError(f"crop size {tuple(crop)} does not fit model {model.name!r}: each side must be a multiple of "
                        f"{divisor} (e.g. {examples})")


def num_workers(cfg: TrainConfig) -> int:
    if cfg.num_workers >= 0:
        return cfg.num_workers
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------- the Trainer
def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False, flags: dict | None = None) -> dict:
    """Train, validate, save; returns the final scores (rank 0) or {} (other ranks)."""
    return Trainer(cfg, resume, overwrite, flags).fit()


class Trainer:
    """One training run in named steps, as nnU-Net's `run_training`: set-up, restore, one epoch, validation,
    checkpoints, final report. `fit` strings them together; each step reads and writes only `self`.

    Args:
        cfg: the run's configuration (a train script's CONFIG with the command-line flags applied).
        resume: a checkpoint to continue from, or "last" for `<cfg.out>/last.pt`; None starts afresh.
        overwrite: start afresh in an existing run folder of this tool: it is moved aside to
            `<out>.previous-<time>` and removed once the new run has written its first checkpoint.
        flags: {TrainConfig field: value} set on the command line (already applied to cfg).
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None, overwrite: bool = False, flags: dict | None = None):
        self.cfg, self.resume, self.overwrite = cfg, resume, overwrite
        self.flags = dict(flags or {})  # the values the command line set (the plan records them as "flag")
        self.previous: Path | None = None
        self.ddp = Distributed(cfg.device)
        self.device = self.ddp.device
        self.amp = cfg.amp and self.device.type == "cuda"
        self.start_epoch, self.history, self.best = 1, [], -1.0
        self.run_id = uuid.uuid4().hex

    def fit(self) -> dict:
        try:
            state = self.setup()
            if state is not None:
                self.restore(state)
            self.announce()
            for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                row = self.train_epoch(epoch)
                self.end_epoch(epoch, row)
            if not self.ddp.main or not self.cfg.final_predict:
                return {}
            return self.final_report()
        finally:
            self.ddp.close()

    # ------------------------------------------------------------------ set-up
    def setup(self) -> dict | None:
        """Data, model, loader, optimiser and schedule; returns the checkpoint state to restore, if resuming."""
        cfg, ddp = self.cfg, self.ddp
        if cfg.tune_objective not in TUNE_OBJECTIVES:
            raise UserError(f"TrainConfig.tune_objective {cfg.tune_objective!r}: expected one of {', '.join(TUNE_OBJECTIVES)}")
        state = None
        if self.resume:
            path = Path(self.resume) if self.resume != "last" else None
            if path is None:
                if not cfg.out:
                    raise UserError("--resume without a checkpoint needs --out RUN_DIR (it resumes RUN_DIR/last.pt)")
                path = Path(cfg.out) / "last.pt"
            state = load_checkpoint(path)
            self.ckpt_path = path
            if state.get("model_name") != cfg.model:
                raise UserError(f"{path}: checkpoint of model {state.get('model_name')!r}, not {cfg.model!r}")
            if not cfg.out:
                cfg = self.cfg = replace(cfg, out=str(path.parent))
        self.out = Path(cfg.out or f"runs/{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        seed_everything(cfg.seed + ddp.rank)

        root = Path(cfg.data) if cfg.data else default_data(ddp)
        fp, self.train_seq, self.val_seq = self.open_data(root)
        if not self.train_seq.has_gt:
            raise UserError(f"{self.train_seq.gt_dir}: training sequence {cfg.train_seq} has no ground truth")
        if self.val_seq.ndim != self.train_seq.ndim:
            raise UserError(f"{self.val_seq.image_dir} holds {self.val_seq.ndim}D images, {self.train_seq.image_dir} "
                            f"{self.train_seq.ndim}D")
        if state is None:
            self.check_run_folder()
        self.plan, cfg = self.make_plan(fp)
        self.cfg = cfg

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = build_model(cfg.model, **cfg.model_args).to(self.device)
        check_crop(self.model, cfg.crop_size)
        if self.val_seq.ndim != len(cfg.crop_size):
            raise UserError(f"crop size {cfg.crop_size} is {len(cfg.crop_size)}D but {self.val_seq.image_dir} holds "
                            f"{self.val_seq.ndim}D images")

        working = self.plan.working_shape(self.train_seq.shape)
        self.volumes = load_volumes(self.train_seq, core_fraction=cfg.core_fraction, progress=ddp.main,
                                    shape=working, spacing=self.plan.spacing)
        self.data = CropDataset(self.volumes, cfg.crop_size, cfg.steps_per_epoch * cfg.batch_size * ddp.world,
                                cfg.augment, cfg.fg_fraction, cfg.seed)
        sampler = DistributedSampler(self.data, ddp.world, ddp.rank, shuffle=False) if ddp.world > 1 else None
        self.loader = DataLoader(self.data, cfg.batch_size, sampler=sampler, num_workers=num_workers(cfg),
                                 drop_last=True, pin_memory=self.device.type == "cuda")

        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * cfg.steps_per_epoch
        warmup = max(1, int(cfg.warmup_epochs * cfg.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, warmup, total))
        self.net = DistributedDataParallel(self.model) if ddp.world > 1 else self.model
        return state

    def open_data(self, root: Path) -> tuple:
        """(fingerprint, training sequence, validation sequence) of a CTC data set root (`--train-seq`,
        `--val-seq`, of `--val-data` where given), or of an OME-Zarr image with a label image (`--labels`; one
        movie, validated on itself unless `--val-data` names another)."""
        from dataset.omezarr import is_omezarr, open_sequence
        cfg = self.cfg
        val_root = Path(cfg.val_data) if cfg.val_data else root
        if not is_omezarr(root):
            if cfg.labels and not is_omezarr(val_root):
                raise UserError(f"--labels {cfg.labels}: names the label image of an OME-Zarr --data; {root} is a CTC "
                                f"folder (its SEG ground truth is {root}/{cfg.train_seq}_GT/SEG)")
            fp = fingerprint(root, cfg.train_seq, voxel_size=cfg.voxel_size)
            train = Sequence(root, cfg.train_seq, fp.voxel_size)
        else:
            misplaced = ["train_seq"] + ([] if cfg.val_data and not is_omezarr(val_root) else ["val_seq"])
            for flag in (f for f in misplaced if f in self.flags):
                raise UserError(f"--{flag.replace('_', '-')}: an OME-Zarr image ({root}) is one sequence; "
                                f"validate on another with --val-data")
            train = open_sequence(root, voxel_size=cfg.voxel_size, labels=cfg.labels, need_labels=True)
            fp = fingerprint(root, train, voxel_size=cfg.voxel_size)
            if val_root == root:
                if self.ddp.main:
                    print(f"note: validating on the training image {root} (give --val-data for a held-out movie)")
                return fp, train, train
        labels = cfg.labels if cfg.labels and is_omezarr(val_root) and not Path(cfg.labels).is_dir() else None
        val = open_sequence(val_root, cfg.val_seq, fp.voxel_size, labels=labels, need_labels=is_omezarr(val_root))
        return fp, train, val

    def make_plan(self, fp) -> tuple:
        """The data plan of the training set for this model, and the configuration with the plan's values
        filled in where the script and the flags left them open (None); explicit values win."""
        cfg = self.cfg
        args = {"spatial_dims": fp.ndim, **cfg.model_args}
        vit = cfg.model == "vit_unet"
        cheap = None
        if vit and "patch_size" not in args:
            divisor = (1,) * fp.ndim  # the plan chooses the patch, and crops that are multiples of it
        else:
            probe = build_model(cfg.model, **args)  # before the seeded build: no effect on weights
            divisor, cheap = probe.size_divisor, getattr(probe, "pad_multiple", None)
        given = {"crop_size": cfg.crop_size, "window": cfg.window, "spacing": cfg.spacing,
                 "patch_size": args.get("patch_size") if vit else None}
        data_plan = make_plan(fp, divisor, {k: v for k, v in given.items() if k not in self.flags},
                              flags={k: v for k, v in self.flags.items() if k in given}, plan_patch=vit,
                              cheap_multiple=cheap)
        if vit:
            args.setdefault("patch_size", tuple(data_plan.patch_size))
            args.setdefault("img_size", tuple(data_plan.crop_size))
        if self.ddp.main:
            print(data_plan.describe())
        return data_plan, replace(cfg, crop_size=tuple(data_plan.crop_size), window=tuple(data_plan.window),
                                  spacing=tuple(data_plan.spacing), voxel_size=tuple(fp.voxel_size), model_args=args)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: weights, optimiser, schedule, history and random states."""
        saved, built = json.loads(json.dumps(state["model_config"])), json.loads(json.dumps(self.model.config))
        if saved != built:
            diff = {k: (saved.get(k), built.get(k)) for k in sorted(set(saved) | set(built)) if saved.get(k) != built.get(k)}
            raise UserError(f"{self.ckpt_path}: the checkpoint's {self.cfg.model} differs from the configured one "
                            f"(checkpoint vs now: {diff}); resume with the run's own settings")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.history, self.best = state["epoch"] + 1, state["history"], state["best_seg"]
        self.run_id = state.get("run_id", self.run_id)
        set_rng_state(state["rng"])
        if self.ddp.main:
            print(f"resumed {self.out} at epoch {self.start_epoch} (best validation SEG so far {self.best:.4f})")

    def check_run_folder(self) -> None:
        """Never replace a trained model silently, never write into the data: refuse a run folder that is,
        holds or lies inside the training or validation data, and one that already holds something unless
        `overwrite` (then only a run folder of this tool, which `announce` moves aside)."""
        seqs = (self.train_seq, self.val_seq)
        inputs = [d for seq in seqs for d in (seq.image_dir, seq.gt_dir)]
        try:
            check_output(self.out, self.overwrite, "run", inputs, is_run_folder, what="run folder")
        except OutputError as err:
            if self.out.is_dir() and not self.overwrite and is_run_folder(self.out):
                raise OutputError(f"{self.out}: already holds a training run; use --resume to continue it, "
                                  f"--overwrite to start over, or another --out") from err
            raise

    def announce(self) -> None:
        """Create the run folder (moving a run it replaces aside), write config.json and say what is about
        to be trained (rank 0)."""
        if not self.ddp.main:
            return
        if self.start_epoch == 1 and self.out.is_dir() and any(self.out.iterdir()):  # --overwrite, checked in setup
            self.previous = self.out.with_name(f"{self.out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.out, self.previous)
            print(f"moved the previous run {self.out} to {self.previous}; it is removed after the first checkpoint")
        self.out.mkdir(parents=True, exist_ok=True)
        mark(self.out, "run")
        write_json(self.out / "config.json", config_dict(self.cfg))
        write_json(self.out / "plan.json", self.plan.to_json())
        world = f" x{self.ddp.world}" if self.ddp.world > 1 else ""
        print(f"training {self.cfg.model} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters) "
              f"on {self.device}{world}, {len(self.volumes)} training volumes, run folder {self.out}")

    # ------------------------------------------------------------------ one epoch
    def train_epoch(self, epoch: int) -> dict:
        """One epoch of optimiser steps; returns the epoch's log row (mean loss and parts, lr, crops/s)."""
        cfg, ddp, device = self.cfg, self.ddp, self.device
        self.data.set_epoch(epoch)
        self.net.train()
        sums, steps, bad, start = torch.zeros(len(PARTS) + 1, device=device), 0, 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not ddp.main, leave=False, dynamic_ncols=True)
        for image, classes, marker in bar:
            image, classes, marker = (x.to(device, non_blocking=True) for x in (image, classes, marker))
            with torch.autocast(device.type, dtype=torch.bfloat16) if self.amp else contextlib.nullcontext():
                seg_logits, marker_logits = self.net(image)
            loss, parts = combined_loss(seg_logits, marker_logits, classes, marker, cfg.loss)
            if not self.all_finite(loss):
                bad += 1
                self.optimizer.zero_grad(set_to_none=True)
                if bad >= cfg.max_bad_steps:
                    raise UserError(f"training diverged: {bad} non-finite losses in a row at epoch {epoch} "
                                    f"(try a lower --lr than {cfg.lr}); the last good checkpoint is kept")
                continue
            bad = 0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            sums += torch.cat([loss.detach()[None], parts])
            steps += 1
            if steps % 10 == 0 or steps == 1:
                bar.set_postfix(loss=f"{sums[0].item() / steps:.4f}")
        seconds = time.perf_counter() - start
        means = (sums / max(steps, 1)).tolist()
        return {"epoch": epoch, "loss": means[0], **dict(zip(PARTS, means[1:])), "lr": self.scheduler.get_last_lr()[0],
                "crops_per_s": steps * cfg.batch_size * ddp.world / seconds, "seconds": seconds}

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: all ranks skip a step together, or DDP's all-reduce would hang."""
        finite = torch.isfinite(loss)
        if self.ddp.world > 1:
            finite = finite.float()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def end_epoch(self, epoch: int, row: dict) -> None:
        """Validate when due, save last.pt (and best.pt when validation SEG improved), log (rank 0)."""
        cfg = self.cfg
        if self.ddp.main:
            if (epoch % cfg.val_every == 0 or epoch == cfg.epochs) and self.val_seq.has_gt:
                row["val_seg"] = self.validate(epoch)
            self.history.append(row)
            improved = row.get("val_seg", -1.0) > self.best
            self.best = max(self.best, row.get("val_seg", -1.0))
            ckpt = self.checkpoint_state(epoch)
            save_checkpoint(self.out / "last.pt", ckpt)
            if improved:
                save_checkpoint(self.out / "best.pt", ckpt)
            if self.previous is not None:
                shutil.rmtree(self.previous, ignore_errors=True)
                self.previous = None
            write_history(self.out, self.history)
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        self.ddp.barrier()

    # ------------------------------------------------------------------ validation
    def predictor(self) -> Predictor:
        """The Predictor of the model being trained, with the run's window, overlap and voxel size."""
        return Predictor(self.model, self.cfg.window, self.cfg.overlap, device=self.device, amp=self.amp,
                         voxel_size=self.cfg.voxel_size, plan=self.plan)

    def validate(self, epoch: int) -> float:
        """SEG, pooled over all reference objects as the CTC does, of `val_frames` evenly spaced frames of
        the validation sequence (whole volumes, default thresholds)."""
        seq, predictor = self.val_seq, self.predictor()
        frames = evenly_spaced(seq.seg_frames, self.cfg.val_frames)
        total, count, panel = 0.0, 0, None
        for t in frames:
            image, gt = seq.image(t), seq.seg(t)
            labels = predictor.instances(image)
            jaccard, n = seg_score(labels, gt)
            total, count = total + jaccard, count + n
            if panel is None:
                panel = (image, gt, labels)
        figures.save_prediction_panel(self.out / "figures" / "validation.png", *panel, title=f"epoch {epoch}, frame {frames[0]}")
        return total / count if count else 0.0

    def checkpoint_state(self, epoch: int) -> dict:
        """Everything a resume and a Predictor need; refuses to save weights that are not finite."""
        model = self.model
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise UserError(f"epoch {epoch}: model weights are not finite; not saving (try a lower --lr)")
        return {"model_name": self.cfg.model, "model_config": model.config, "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "epoch": epoch,
                "history": self.history, "best_seg": self.best, "rng": rng_state(), "train_config": config_dict(self.cfg),
                "crop_size": list(self.cfg.crop_size), "window": list(self.cfg.window),
                "voxel_size": list(self.cfg.voxel_size), "plan": self.plan.to_json(),
                "run_id": self.run_id, "id": f"{self.run_id}-epoch{epoch}"}

    # ------------------------------------------------------------------ final report
    def final_report(self) -> dict:
        """Best model → marker threshold tuned on training frames (kept as best.postprocessing.json; none with
        tune_frames 0) → validation sequence predicted, tracked and scored into <seq>_RES and scores.json."""
        from metrics import format_table
        from utils import check_accuracy
        cfg, out, val_seq = self.cfg, self.out, self.val_seq
        best_path = out / "best.pt" if (out / "best.pt").exists() else out / "last.pt"
        predictor = Predictor.from_checkpoint(best_path, self.device, amp=self.amp)
        if cfg.tune_frames > 0:
            self.tune(predictor, best_path)
        res_dir = out / f"{val_seq.seq}_RES"
        predictor.predict_sequence(val_seq, res_dir, overwrite=True)
        scores = {"checkpoint": str(best_path), "post": asdict(predictor.post)}
        if val_seq.has_gt:
            if isinstance(val_seq, Sequence):
                scores.update(check_accuracy(res_dir, val_seq.gt_dir))
            else:  # an OME-Zarr label image: SEG only (it holds no lineage to score tracking against)
                scores["SEG"] = result_seg(res_dir, val_seq)
            print(f"\n{cfg.model} on {val_seq.image_dir} ({res_dir}):\n{format_table(scores)}")
        write_json(out / "scores.json", scores)
        return scores

    def tune(self, predictor: Predictor, best_path: Path) -> None:
        """Tune the predictor's marker threshold on `tune_frames` training frames (inference.TRAINING_FRAMES_GRID:
        the network has fit these frames, so a foreground threshold tuned there would not suit new data) and keep
        the thresholds as best.postprocessing.json."""
        cfg = self.cfg
        if cfg.tune_objective == "OP_CTB":  # a consecutive run from the middle of the sequence
            frames = sorted(self.train_seq.tra_files)
            start = max(0, (len(frames) - cfg.tune_frames) // 2)
            tune_frames = frames[start:start + cfg.tune_frames]
        else:
            tune_frames = evenly_spaced(self.train_seq.seg_files, cfg.tune_frames)
        post, seg = predictor.tune(self.train_seq, tune_frames, grid=TRAINING_FRAMES_GRID, objective=cfg.tune_objective)
        save_post_record(post_record_path(best_path), post, seg, predictor.checkpoint_id,
                         {"data": str(self.train_seq.image_dir), "frames": tune_frames, "objective": cfg.tune_objective})


RUN_FILES = ("last.pt", "best.pt", "config.json", "plan.json", "history.csv", "scores.json", "figures",
             "best.postprocessing.json")


def is_run_folder(folder: Path) -> bool:
    """The content rule of a run folder written before markers existed: config.json and a checkpoint,
    and nothing but what a run writes."""
    names = {p.name for p in Path(folder).iterdir()} - {MARK}
    return ("config.json" in names and bool(names & {"last.pt", "best.pt"})
            and all(n in RUN_FILES or n.endswith("_RES") or n.startswith(".") for n in names))


def result_seg(res_dir: Path, seq) -> float:
    """SEG of the result folder `res_dir` against the SEG ground truth of `seq`, pooled over its labelled frames."""
    from dataset import read_labels
    from dataset.ctc import frame_name
    total, count = 0.0, 0
    for t in seq.seg_frames:
        jaccard, n = seg_score(read_labels(res_dir / frame_name("mask", t, seq.frames[-1] + 1), seq.ndim), seq.seg(t))
        total, count = total + jaccard, count + n
    return total / count if count else 0.0


def evenly_spaced(items, n: int):
    items = list(items)
    if n >= len(items):
        return items
    return [items[int(round(i))] for i in np.linspace(0, len(items) - 1, n)]


# --------------------------------------------------------------------------- records
def config_dict(cfg: TrainConfig) -> dict:
    """The configuration as plain JSON-able values (tuples as lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def write_history(out: Path, history: list[dict]) -> None:
    """history.csv (one row per epoch) and the curves as PNG."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(history)
    figures.save_training_curves(out / "figures" / "curves.png", history)


def train_from_cli(default: TrainConfig, args) -> int:
    """Entry of each train script: its defaults, overridden by the flags main.py parsed."""
    train(apply_overrides(default, args), resume=args.resume, overwrite=getattr(args, "overwrite", False),
          flags=given_flags(args))
    return 0

