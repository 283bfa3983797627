"""Self-checks of the twins (no kiln needed): every twin is causal (changing a later token
leaves earlier logits unchanged), and the twins that decode with a state give the logits of
the full forward pass when fed one token at a time.

    /tmp/torchenv/bin/python benches/torch_twins/check.py
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torch_twins import FAMILIES, GENERATES  # noqa: E402


def main():
    torch.manual_seed(0)
    vocab, seq, bad = 5, 70, 0
    for name, build in FAMILIES.items():
        model = build(vocab, seq, {"max_len": seq} if name == "linear" else {}).eval()
        x = torch.randint(0, vocab, (2, seq))
        with torch.no_grad():
            full = model(x)
            y = x.clone()
            y[:, 40:] = (y[:, 40:] + 1) % vocab
            causal = torch.allclose(full[:, :40], model(y)[:, :40], atol=1e-5)
            step_err = float("nan")
            if name in GENERATES:
                states = model.init_state(2, "cpu")
                steps = torch.cat([model(x[:, t:t + 1], states) for t in range(seq)], 1)
                step_err = (steps - full).abs().max().item()
        ok = causal and (name not in GENERATES or step_err < 1e-4)
        bad += not ok
        print(f"{name:<22} causal={causal} stepwise max |diff|={step_err:.2e} {'ok' if ok else 'FAIL'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
