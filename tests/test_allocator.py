"""cpvt.train.allocator: the malloc setting is made on glibc, can be turned off, and changes no number."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import hashlib, sys, torch
from cpvt.train.allocator import keep_freed_memory
made = keep_freed_memory()
import cpvt
torch.manual_seed(0)
m = cpvt.create_model("cpvt_micro", img_size=32, depth=2, embed_dim=32, num_heads=2)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x = torch.randn(64, 3, 32, 32)
for _ in range(3):
    loss = m(x).logsumexp(-1).mean(); opt.zero_grad(); loss.backward(); opt.step()
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest()
print(made, h)
"""


def run(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CPVT_MALLOC"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**base, **env}, capture_output=True, text=True, check=True)
    made, digest = out.stdout.split()
    return made == "True", digest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_the_setting_is_made_and_changes_no_bit():
    made, tuned = run()
    off, default = run(CPVT_MALLOC="default")
    user, _ = run(MALLOC_TRIM_THRESHOLD_="1000000")  # the user's own malloc setting wins
    assert made and not off and not user
    assert tuned == default  # same weights after three training steps, bit for bit
