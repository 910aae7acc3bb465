"""Score images with the upstream `image-reward` 1.5 package (reference side of the equivalence check).

Runs ONLY inside the throwaway venv that `image_reward_equivalence.py` creates: image-reward does not
import beside transformers 5 without a torchvision op-schema shim and four patches (the project's
environment notes, §3.1), which are applied here, to this process only.

It builds a random upstream model, re-initialises the MLP head (its own init makes every score the
same constant), saves the whole state dict as the checkpoint, and scores each (image, prompt) pair one
at a time with `ImageReward.score`, the way upstream users call it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# This venv does not have the project installed; ecad.files needs only the standard library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecad.files import atomic_write


def install_torchvision_shim() -> None:
    """Make the CUDA-only torchvision wheel importable beside CPU torch (its ops are not needed)."""
    try:
        import torchvision
    except RuntimeError:
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        import torch

        # Keep a reference: the definitions live as long as the Library object does.
        global _TORCHVISION_LIB
        _TORCHVISION_LIB = torch.library.Library("torchvision", "DEF")
        _TORCHVISION_LIB.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_LIB.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401


def import_patched_image_reward(vocab_file: Path):
    """Import ImageReward with the four transformers-5 patches; returns the ImageReward class."""
    import torch
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    # Patch 1: helpers that med.py imports from their transformers-4 location.
    def find_pruneable_heads_and_indices(*args, **kwargs):
        raise NotImplementedError("head pruning is not used for scoring")

    modeling_utils.apply_chunking_to_forward = pytorch_utils.apply_chunking_to_forward
    modeling_utils.prune_linear_layer = pytorch_utils.prune_linear_layer
    modeling_utils.find_pruneable_heads_and_indices = find_pruneable_heads_and_indices

    import ImageReward
    from ImageReward.models.BLIP import blip_pretrain, med
    from transformers import BertTokenizer

    # Patch 2: mask helpers removed from PreTrainedModel in transformers 5.
    def invert_attention_mask(self, mask):
        extended = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
        extended = extended.to(dtype=self.dtype)
        return (1.0 - extended) * torch.finfo(self.dtype).min

    def get_head_mask(self, head_mask, num_layers, *args, **kwargs):
        return [None] * num_layers

    med.BertModel.invert_attention_mask = invert_attention_mask
    med.BertModel.get_head_mask = get_head_mask

    # Patch 3: plain weight init, skipping v5's post_init bookkeeping.
    def init_weights(self):
        for module in self.modules():
            self._init_weights(module)

    med.BertPreTrainedModel.init_weights = init_weights

    # Patch 4: a tokenizer from a local vocab.txt instead of the hub's bert-base-uncased.
    def init_tokenizer():
        tokenizer = BertTokenizer(vocab=str(vocab_file))
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        tokenizer.enc_token_id = tokenizer.convert_tokens_to_ids("[ENC]")
        return tokenizer

    blip_pretrain.init_tokenizer = init_tokenizer
    return ImageReward.ImageReward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work-dir", type=Path, required=True, help="med_config.json, vocab.txt, cases.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work: Path = args.work_dir

    install_torchvision_shim()
    image_reward_class = import_patched_image_reward(work / "vocab.txt")

    import torch
    from PIL import Image

    torch.manual_seed(args.seed)
    model = image_reward_class(med_config=str(work / "med_config.json"), device="cpu").eval()
    # std 1/sqrt(fan_in) keeps scores O(1), so an absolute 1e-4 tolerance is meaningful in fp32.
    with torch.no_grad():
        for layer in model.mlp.layers:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
                torch.nn.init.normal_(layer.bias, std=0.1)
    with atomic_write(work / "ImageReward.pt") as handle:
        torch.save(model.state_dict(), handle)

    cases = json.loads((work / "cases.json").read_text())
    scores = []
    with torch.no_grad():
        for case in cases:
            with Image.open(work / case["image"]) as image:
                image.load()
                scores.append(model.score(case["prompt"], image))

    payload = json.dumps({"scores": scores}).encode()
    with atomic_write(work / "upstream_scores.json") as handle:
        handle.write(payload)


if __name__ == "__main__":
    main()
