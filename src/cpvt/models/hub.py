"""Models and runs saved in the Hugging Face Hub layout: ``config.json`` + ``model.safetensors``.

    >>> import cpvt
    >>> cpvt.save_pretrained("runs/c10-cpvt", "hub/c10-cpvt")             # a run: its best weights and classes
    >>> model = cpvt.create_model("cpvt_ti", pretrained="hub/c10-cpvt")   # or an "owner/name" Hub id

The folder is what ``huggingface_hub.upload_folder`` (or ``huggingface-cli upload``) publishes as it stands,
laid out as timm's ``save_for_hf`` lays out its own (``architecture``, ``model_args``, ``pretrained_cfg``,
``label_names`` in ``config.json``). The file format lives with the other checkpoint formats in
:mod:`cpvt.checkpoint` (:func:`~cpvt.checkpoint.save_hub_folder`); reading it back is the ordinary
``pretrained=`` path of :func:`~cpvt.models.create_model`, so the stored options are the defaults under the
caller's overrides, a folder saved from another model is refused, and ``load_run``, ``cpvt eval`` and
``cpvt predict`` take the folder as they take a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint, resolve_checkpoint, save_hub_folder
from .features import FeatureGetter
from .registry import model_from_checkpoint


def save_pretrained(model_or_run: nn.Module | str | Path | Checkpoint, folder: str | Path,
                    classes: Sequence[str] | None = None) -> Path:
    """Save a model, or a trained run, as a Hugging Face Hub layout folder; returns the folder.

    ``model_or_run``: a model from :func:`~cpvt.models.create_model` (its ``model_args`` record its options,
    ``task`` and ``fixed_grid`` included), or a run folder / cpvt checkpoint (its model rebuilt and checked
    as :func:`~cpvt.models.model_from_checkpoint` does, its class names kept). ``classes``: the class names,
    one per output class (default: the run's; none for a bare model).
    A ``features_only`` model is refused: its pruned weights would not rebuild from ``model_args``.
    """
    if not isinstance(model_or_run, nn.Module):
        ckpt = model_or_run if isinstance(model_or_run, Checkpoint) else load_checkpoint(resolve_checkpoint(model_or_run))
        model = model_from_checkpoint(ckpt)
        if classes is None and ckpt.classes:
            classes = ckpt.classes
    else:
        model = getattr(model_or_run, "_orig_mod", model_or_run)  # torch.compile's wrapper: the model it holds
    if isinstance(model, FeatureGetter):
        raise ValueError(f"cannot save a features_only {model.model_name} to {folder}: save the full model "
                         "(create_model(name, features_only=True, pretrained=FOLDER) rebuilds features from it)")
    return save_hub_folder(folder, model, classes)
