"""An inference copy's modules called directly (model/direct.py): the same forward code, no nn.Module call or
attribute machinery, the registries intact, and a module with hooks refused rather than silently skipped."""

import copy as copying

import pytest
import torch
import torch.nn as nn

from conftest import tiny_gpt
from gpt2kit.model.direct import call_directly
from gpt2kit.model.gpt import GPT, Block
from gpt2kit.model.kernels import inference_copy


def _tiny():
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64)


def test_the_inference_copy_calls_its_modules_directly_and_computes_the_same():
    model = _tiny()
    copy = inference_copy(model, 1, "auto")
    for module in copy.modules():
        assert type(module).__call__ is type(module).forward, type(module)
        for name, sub in module._modules.items():
            assert module.__dict__[name] is sub  # found without nn.Module.__getattr__
        for name, p in module._parameters.items():
            assert p is None or module.__dict__[name] is p
    block = copy.transformer.h[0]
    assert isinstance(block, Block) and type(block).__name__ == "Block" and isinstance(copy, GPT)
    assert type(model.transformer.h[0]) is Block  # the model itself is left as it was
    assert [n for n, _ in copy.named_modules()] == [n for n, _ in model.named_modules()]  # the registries as they were
    idx = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(copy(idx)[0], model(idx)[0], atol=1e-4, rtol=1e-4)


def test_assigning_a_module_or_parameter_replaces_the_direct_entry_too():
    copy = call_directly(_tiny())
    block = copy.transformer.h[0]
    new_ln = nn.LayerNorm(64)
    block.ln_1 = new_ln
    assert block.ln_1 is new_ln and block._modules["ln_1"] is new_ln
    weight = nn.Parameter(torch.ones(64))
    block.ln_2.weight = weight
    assert block.ln_2.weight is weight and block.ln_2._parameters["weight"] is weight


def test_a_module_with_hooks_is_refused_and_a_direct_copy_deep_copies_and_is_idempotent():
    model = _tiny()
    handle = model.transformer.h[1].mlp.register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="^MLP has hooks: call_directly would skip them.$"):
        call_directly(model)
    handle.remove()
    copy = call_directly(call_directly(model))
    assert type(type(copy.transformer.h[0]).__mro__[1]) is type and type(copy.transformer.h[0]).__mro__[1] is Block
    again = copying.deepcopy(copy)
    assert type(again.transformer.h[0]) is type(copy.transformer.h[0])
    idx = torch.randint(0, 50257, (1, 5), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again(idx)[0], copy(idx)[0])
