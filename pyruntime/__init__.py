"""pyruntime: run Llama-family decoder-only LLMs from Python on compiled CPU/CUDA kernels.

    import pyruntime
    llm = pyruntime.LLM("smollm2-135m-instruct")
    print(llm.chat([{"role": "user", "content": "What is the capital of France?"}]).text)
"""

from pyruntime.cpu import cpu_features, set_cpu_isa
from pyruntime.errors import ModelLoadError
from pyruntime.generate import LLM, Completion, Stats, TokenLogprob

__all__ = ["LLM", "Completion", "Stats", "TokenLogprob", "ModelLoadError", "cpu_features", "set_cpu_isa"]
__version__ = "0.1.0"
