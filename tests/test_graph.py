"""One graph: every micro model (one per encoding and model family) compiles with ``fullgraph=True`` in eval and in
training, and one dynamic graph serves many input sizes.

Dynamo runs with the ``eager`` backend here (it traces the graph dynamo would hand inductor, without inductor's
code generation), so the checks take seconds; ``tests/test_compile.py`` covers inductor's numerics.
"""

from __future__ import annotations

import pytest
import torch

import cpvt
from cpvt.models.registry import list_models

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

MICRO = list_models("*micro*")
# The default suite traces one micro ViT per encoding (and the PEG's combinations); the rest are slow tests.
DEFAULT = {*list_models("deit_micro*"), "cpvt_micro", "cpvt_micro_repcpe", "cpvt_micro_ape"}
PYRAMIDS = {"twins_pcpvt_micro", "twins_svt_micro", "cvt_micro"}  # see the test below


class CountingBackend:
    """A dynamo backend that counts the graphs it is handed and runs them as traced."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_every_encoding_has_a_micro_model_here():
    from cpvt.models.registry import model_args
    from cpvt.pos import list_encodings, parse_spec

    used = {enc for name in DEFAULT for enc in parse_spec(model_args(name).get("pos", "none"))}
    missing = sorted(set(list_encodings()) - used)
    assert not missing, f"encodings with no micro model in the graph checks: {missing}"


@pytest.mark.parametrize("name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in MICRO])
def test_one_graph_in_training_and_one_dynamic_graph_in_eval(name):
    """Training compiles to one graph with no break. In eval the first size compiles a static graph and the
    second a dynamic one that the third reuses: no per-grid cache or branch specialises it."""
    torch._dynamo.reset()
    model = cpvt.create_model(name)
    backend = CountingBackend()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # a graph break is an error
    compiled(torch.randn(2, 3, 32, 32)).sum().backward()
    assert backend.graphs == 1
    model.eval()
    # A pyramid's strided convolutions (patch merging, sub-sampled keys, CvT's strided projections) guard on
    # each stage's grid parity, and Twins-SVT's windows on whether the padding to whole windows is empty:
    # sizes that agree on all of these (here powers of two) share a graph.
    sizes = (32, 64, 128) if name in PYRAMIDS else (32, 48, 64)
    with torch.no_grad():
        for s in sizes:
            x = torch.randn(2, 3, s, s)
            assert torch.allclose(compiled(x), model(x), atol=1e-4), s
    assert backend.graphs <= 3  # training's graph, then eval's static and dynamic graphs
