"""Parameter roles: module types, names, ties, fallbacks and overrides."""
import re

import pytest
import torch
from torch import nn

from steepest.roles import classify


class TiedLM(nn.Module):
    def __init__(self, tie=True):
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.wpe = nn.Embedding(5, 8)
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
        self.lm_head = nn.Linear(8, 20, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight


def test_tied_head_appears_once_as_head():
    roles = classify(TiedLM())
    assert roles == {
        "wte.weight": "head", "wpe.weight": "embedding",
        "block.0.weight": "vector", "block.0.bias": "vector",
        "block.1.weight": "hidden", "block.1.bias": "vector",
        "block.3.weight": "hidden", "block.3.bias": "vector",
    }


def test_untied_head_by_name():
    roles = classify(TiedLM(tie=False))
    assert roles["wte.weight"] == "embedding" and roles["lm_head.weight"] == "head"
    assert roles["block.3.weight"] == "hidden"


def test_last_linear_is_head_without_a_named_one():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 10))
    roles = classify(model)
    assert roles == {"0.weight": "conv", "0.bias": "vector", "2.weight": "hidden", "2.bias": "vector",
                     "4.weight": "head", "4.bias": "vector"}


def test_two_named_heads_are_ambiguous_and_the_message_says_how_to_override():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Module()
            self.a.head = nn.Linear(4, 4)
            self.b = nn.Module()
            self.b.head = nn.Linear(4, 4)

    with pytest.raises(ValueError, match=re.escape(
            "Ambiguous output head: modules 'a.head', 'b.head' all look like heads; pass "
            "roles={'b.head.weight': 'hidden'} (or 'head' for the one that is) to say which is the head")):
        classify(TwoHeads())
    roles = classify(TwoHeads(), roles={"b.head.weight": "hidden"})
    assert roles["a.head.weight"] == "head" and roles["b.head.weight"] == "hidden"


def test_expert_stack_is_ambiguous():
    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.Parameter(torch.zeros(4, 8, 8))

    with pytest.raises(ValueError, match=re.escape("pass roles={'experts': 'conv'} to treat it as a matrix")):
        classify(MoE())
    assert classify(MoE(), roles={"experts": "conv"}) == {"experts": "conv"}


def test_bare_parameters_named_like_embeddings():
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_emb = nn.Parameter(torch.zeros(16, 8))
            self.mix = nn.Parameter(torch.zeros(8, 8))
            self.attn = nn.MultiheadAttention(8, 2)

    roles = classify(Bare())
    assert roles["pos_emb"] == "embedding" and roles["mix"] == "hidden"
    assert roles["attn.in_proj_weight"] == "hidden" and roles["attn.out_proj.weight"] == "hidden"


def test_override_validation():
    with pytest.raises(ValueError, match=re.escape("roles= names unknown parameters: nope")):
        classify(TiedLM(), roles={"nope": "hidden"})
    with pytest.raises(ValueError, match=re.escape(
            "Unknown role 'weird' for parameter 'wpe.weight'; expected one of: embedding, head, hidden, conv, vector")):
        classify(TiedLM(), roles={"wpe.weight": "weird"})


def test_override_by_alias_of_a_tied_tensor():
    roles = classify(TiedLM(), roles={"lm_head.weight": "embedding"})
    assert roles["wte.weight"] == "embedding" and "lm_head.weight" not in roles


class _Mixer(nn.Module):
    steepest_roles = {"mix": "vector"}

    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.zeros(8, 4))
        self.proj = nn.Parameter(torch.zeros(4, 4))


def test_a_module_can_declare_the_roles_of_its_parameters():
    model = nn.Sequential(nn.Linear(4, 4), _Mixer(), nn.Linear(4, 2))
    labels = classify(model)
    assert labels["1.mix"] == "vector"          # declared by the module
    assert labels["1.proj"] == "hidden"         # undeclared: the usual rules
    assert classify(model, {"1.mix": "hidden"})["1.mix"] == "hidden"  # roles= still wins


def test_an_unknown_declared_role_is_an_error():
    class Bad(_Mixer):
        steepest_roles = {"mix": "gain"}

    with pytest.raises(ValueError, match="Unknown role 'gain' declared for parameter '0.mix'"):
        classify(nn.Sequential(Bad()))


def test_a_frozen_copy_registered_last_does_not_take_the_head_label():
    class WithTeacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            self.teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).requires_grad_(False)

    labels = classify(WithTeacher())
    assert labels["student.2.weight"] == "head" and labels["student.0.weight"] == "hidden"
    assert labels["teacher.2.weight"] == "hidden"  # frozen: for_model leaves it out anyway
    frozen = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4)).requires_grad_(False)
    assert classify(frozen)["1.weight"] == "head"  # nothing trainable: the last Linear as before
