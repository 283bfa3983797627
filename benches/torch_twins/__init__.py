"""PyTorch twins of kiln's bundled model families (models/*.yaml), for benches/vs_torch.py.

Each entry builds a torch module from (vocab, training sequence length, the model's vars)
with the defaults of the kiln model file. `GENERATES` lists the families whose twins decode
with a cache or a recurrent state (the others have no generation row).
"""

from . import mixers, recurrent, transformers, wave

FAMILIES = {
    "transformer-modern": transformers.modern,
    "transformer-postln": transformers.postln,
    "transformer-memory": transformers.memory,
    "transformer-hard": transformers.hard,
    "transformer-adaptive": transformers.adaptive,
    "lstm": recurrent.lstm,
    "mamba": recurrent.mamba,
    "xlstm": recurrent.xlstm,
    "linear": mixers.linear,
    "retnet": mixers.retnet,
    "gfnet-causal": mixers.gfnet,
    "ets": mixers.ets,
    "wave": wave.wave,
}

GENERATES = {
    "transformer-modern", "transformer-postln", "transformer-memory", "transformer-hard",
    "transformer-adaptive", "lstm", "mamba", "xlstm", "retnet", "ets", "wave",
}
