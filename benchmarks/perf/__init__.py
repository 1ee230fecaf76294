"""Speed benchmarks: CPU micro-benchmarks against straightforward references (CI), GPU benchmarks under
--run-gpu, and the one-command GPU check `python -m benchmarks.perf.gpu_check` (docs/performance.md)."""
